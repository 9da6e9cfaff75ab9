"""pytest plugin loaded into devpi-client's own test suite when it runs against devpid.

It skips, each with its reason, only the tests that need something the test machine does not
offer (the internet: a mirror of the public package index; a build backend downloaded into
an isolated build environment) and the one that checks a behaviour devpid changed on purpose
for safety (ACLs naming users that do not exist). Everything else in the suite must pass.

It also frames the suite's fake upstream (``testing/simpypi.py``) like a real index: its
simple pages are bare ``<a>`` lines ended only by closing the connection, which devpid
refuses as possibly cut off or not a simple page at all (a mirror never replaces a page with
a truncated or foreign one). Wrapped in the usual page (PEP 629 version, "Links for" title,
``</html>``) and sent with a ``Content-Length``, they are provably whole simple pages with
the same links. File downloads are left as they are.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

NEEDS_INTERNET = "mirrors the public package index: tests here never reach the internet"
NEEDS_ISOLATED_BUILD = (
    "builds in an isolated environment, which downloads flit_core from the package registry"
)

ACL_NAMES_EXISTING_USERS = (
    "differs from devpi on purpose: an ACL may only name existing users (whoever registered "
    "the name 'foo' later would get its rights); acl += / -= is covered by our own tests"
)

#: Node id (relative to the sdist root) -> why it cannot run here.
SKIPPED: dict[str, str] = {
    "testing/test_test.py::TestFunctional::test_main_example": NEEDS_INTERNET,
    "testing/test_test.py::TestFunctional::test_specific_version": NEEDS_INTERNET,
    "testing/test_test.py::TestFunctional::test_pkgname_with_dashes": NEEDS_INTERNET,
    "testing/test_upload.py::TestUploadFunctional::test_wheel_pyproject_toml":
        NEEDS_ISOLATED_BUILD,
    "testing/test_functional.py::TestAddRemoveSettings::test_add_remove_index_list_setting":
        ACL_NAMES_EXISTING_USERS,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = SKIPPED.get(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"devpid: {reason}"))


def _frame_simple_pages(handler: Any) -> None:
    """Make the handler send a Content-Length with every ``/simple`` page."""
    original = handler.do_GET

    def do_GET(self: Any) -> None:
        if not self.path.startswith("/simple"):
            original(self)
            return
        real, self.wfile = self.wfile, io.BytesIO()
        try:
            original(self)
            if hasattr(self, "flush_headers"):
                self.flush_headers()
            head, sep, body = self.wfile.getvalue().partition(b"\r\n\r\n")
        finally:
            self.wfile = real
        if sep and head.split(b"\r\n", 1)[0].split()[1:2] == [b"200"]:
            body = (b'<!DOCTYPE html><html><head><meta name="pypi:repository-version" '
                    b'content="1.0"><title>Links for %s</title></head><body>\n%s\n'
                    b"</body></html>\n" % (self.path.encode(), body))
        if sep and b"content-length:" not in head.lower():
            head += b"\r\nContent-Length: %d" % len(body)
        self.wfile.write(head + sep + body)

    handler.do_GET = do_GET


def pytest_configure(config: pytest.Config) -> None:
    from testing import simpypi  # the suite's own package (cwd is the sdist)

    _frame_simple_pages(simpypi.SimPyPIRequestHandler)
