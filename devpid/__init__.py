"""devpid: a private Python package index and caching PyPI mirror, as a Twisted daemon."""

__version__ = "0.1.0"
