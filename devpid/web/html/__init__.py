"""The web view for people: server-rendered pages at the URLs clients use for JSON.

dispatch.py decides per request (browsers only), pages.py renders, search.py finds projects,
readme.py renders long descriptions, access.py is where read permissions are checked,
markup.py escapes. Importing this package registers the routes.
"""

from devpid.web.html import pages  # noqa: F401  (routes)
