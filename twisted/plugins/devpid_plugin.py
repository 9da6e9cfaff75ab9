"""Registers ``twistd devpid``; the service itself is built by devpid.tap.makeService."""

from twisted.application.service import ServiceMaker

devpid = ServiceMaker(
    "devpid",
    "devpid.tap",
    "A private Python package index and caching PyPI mirror",
    "devpid",
)
