"""pytest plugin loaded into devpi-client's own test suite when it runs against devpid.

It skips, each with its reason, only the tests that need something the test machine does not
offer: the internet (a mirror of the public package index) or a build backend downloaded
into an isolated build environment. Everything else in the suite must pass.
"""

from __future__ import annotations

import pytest

NEEDS_INTERNET = "mirrors the public package index: tests here never reach the internet"
NEEDS_ISOLATED_BUILD = (
    "builds in an isolated environment, which downloads flit_core from the package registry"
)

#: Node id (relative to the sdist root) -> why it cannot run here.
SKIPPED: dict[str, str] = {
    "testing/test_test.py::TestFunctional::test_main_example": NEEDS_INTERNET,
    "testing/test_test.py::TestFunctional::test_specific_version": NEEDS_INTERNET,
    "testing/test_test.py::TestFunctional::test_pkgname_with_dashes": NEEDS_INTERNET,
    "testing/test_upload.py::TestUploadFunctional::test_wheel_pyproject_toml":
        NEEDS_ISOLATED_BUILD,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = SKIPPED.get(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"devpid: {reason}"))
