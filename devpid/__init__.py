"""devpid: a private Python package index and caching PyPI mirror, as a Twisted daemon."""

__version__ = "0.1.0"

#: The devpi-server release whose observable API devpid implements (shared/spec/devpi-api.md).
#: ``/+status`` reports it as ``versioninfo["devpi-server"]``: devpi-client shows it and
#: clients gate features on it.
DEVPI_SERVER_COMPAT = "6.20.3"
