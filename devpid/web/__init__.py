"""HTTP layer. Importing this package registers every route module on the Klein app."""

from devpid.web import indexes, users  # noqa: F401  (route registration)
from devpid.web.app import DevpidServer, Settings, make_site

__all__ = ["DevpidServer", "Settings", "make_site"]
