"""HTTP layer. Importing this package registers every route module on the Klein app."""

# Order matters for the POST hooks of /USER/INDEX: uploads (multipart) before push (JSON).
from devpid.web import (  # noqa: F401  (routes)
    files,
    indexes,
    projects,
    simple,
    upload,
    users,
)
from devpid.web.app import DevpidServer, Settings, make_site

# isort: split
from devpid import replica  # noqa: F401  (replication routes: /+changelog, /+blob)

__all__ = ["DevpidServer", "Settings", "make_site"]
