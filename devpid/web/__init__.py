"""HTTP layer. Importing this package registers every route module on the Klein app."""

# Each module registers its routes (and /USER/INDEX POST hooks: multipart uploads, JSON push).
from devpid.web import (  # noqa: F401  (routes)
    files,
    html,
    indexes,
    projects,
    simple,
    tokens,
    toxresults,
    upload,
    users,
)
from devpid.web.app import DevpidServer, Settings, make_site

# isort: split
from devpid import replica  # noqa: F401  (replication routes: /+changelog, /+blob)

__all__ = ["DevpidServer", "Settings", "make_site"]
