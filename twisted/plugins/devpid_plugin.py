"""Registers ``twistd devpid``; the service itself is built by devpid.tap.makeService."""

from typing import Any

from twisted.application.service import ServiceMaker


class _DevpidServiceMaker(ServiceMaker):
    @property
    def options(self) -> Any:
        """devpid.tap.TwistdOptions: a mistyped option gets a short error (not the table)."""
        from devpid.tap import TwistdOptions

        return TwistdOptions


devpid = _DevpidServiceMaker(
    "devpid",
    "devpid.tap",
    "A private Python package index and caching PyPI mirror",
    "devpid",
)
