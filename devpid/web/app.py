"""The HTTP application: the server object holding dependencies, its Klein app, and the root
resource that normalises every request before routing.

Route handlers live in one module per concern (users, indexes, simple, files, upload, ...);
each registers module-level functions on ``app`` taking ``(server, request, ...)``. The root
resource percent-decodes the path (pip asks for ``%2Bf``), strips an outside-URL mount point,
adds devpi's global headers and then hands the request to Klein.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import server as twserver
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

import devpid
from devpid import auth
from devpid.domain import keys
from devpid.metrics import RequestCounters
from devpid.proxies import DEFAULT_TRUSTED, TrustedProxies, local_origin
from devpid.readacl import KnownCredentials, credential_header
from devpid.store.base import (
    BlobStore,
    OutOfSpace,
    Store,
    Unavailable,
    WriteFailed,
    disk_full_as_out_of_space,
)
from devpid.web.bodies import DEFAULT_BODY_TIMEOUT, BodyDeadline, refuse_oversized
from devpid.web.errors import JSON_TYPE, HTTPError, render_error, submit_error, unauthorized

if TYPE_CHECKING:
    from devpid.events import EventService
    from devpid.links import PageTokens
    from devpid.memo import CommitClearedDict
    from devpid.mirror.cache import MirrorCache
    from devpid.mirror.service import Mirror
    from devpid.replica import NonceGuard, PrimaryFeed, ReplicaFollower, WriteProxy
    from devpid.web.html.readme import DescriptionCache
    from devpid.web.html.search import Search
    from devpid.web.simple import PageCache

    # A handler of GET or POST /USER/INDEX that answers (not None) or passes.
    IndexHook = Callable[[Any, Any, str, str], Awaitable[Any]]

log = Logger()
app = Klein()

DEFAULT_MAX_UPLOAD = 1024 * 1024 * 1024


@dataclass
class Settings:
    """Run-time settings from the command line (see devpid.tap.Options)."""

    serverdir: Path
    host: str = "localhost"
    port: int = 3141
    outside_url: str | None = None
    request_timeout: float = 5.0
    mirror_min_rate: float = 1024.0  # bytes/s below which a mirror file download is aborted
    offline_mode: bool = False
    mirror_cache_expiry: int = 1800
    max_upload_size: int = DEFAULT_MAX_UPLOAD
    primary_url: str | None = None
    role: str = "standalone"
    log_format: str = "text"
    workers: int = 1
    bcrypt_rounds: int = auth.DEFAULT_BCRYPT_ROUNDS
    gc_interval: float = 86400.0  # seconds between blob gc sweeps (0: never)
    mirror_max_bytes: int = 0  # bound on all mirror caches together (0: none)
    gc_grace: float = 3600.0  # unreferenced blobs younger than this are kept
    event_retry_horizon: float = 6 * 3600.0  # seconds a failing hook retries one serial
    mirror_max_page_size: int = 64 * 1024 * 1024  # bigger upstream project pages are refused
    header_timeout: float = 10.0  # seconds a request head may take to arrive
    idle_timeout: float = 60.0  # seconds a keep-alive connection may wait for a request
    max_connections: int = 4096  # open client connections per process (see connections.py)
    # Security (README "Security"): see devpid/netpolicy.py and devpid/auth.py.
    allow_private_addresses: bool = False  # mirrors/webhooks may connect to loopback etc.
    public_emails: bool = False  # devpi's way: every visitor sees every user's email
    mirror_file_hosts: list[str] = field(default_factory=list)  # extra hosts for mirror files
    mirror_admins: list[str] = field(default_factory=lambda: ["root"])  # may set mirror_url
    restrict_modify: list[str] | None = None  # who may create users and indexes (None: all)
    # who may see /+status and /+metrics besides root (devpid.readacl.require_status)
    status_acl: list[str] = field(default_factory=lambda: [":ANONYMOUS:"])
    max_login_failures: int = 10  # per user and minute before password checks get 429
    body_timeout: float = 60.0  # seconds (plus size / 64 KiB/s) a request body may take
    # Peers whose Host, X-Outside-Url and X-Real-IP are believed (see devpid/proxies.py).
    trusted_proxies: list[str] = field(default_factory=lambda: list(DEFAULT_TRUSTED))


class DevpidServer:
    """Everything a request handler needs: store, blobs, secret, settings, clock, pools, and
    the parts of this process's service graph, typed. ``devpid.node.build_node`` is the one
    place that constructs it and sets the parts; a part this process does not run is None.
    """

    app = app
    # Always built (by devpid.node.build_node, which also starts and stops what they own):
    mirror: Mirror
    page_tokens: PageTokens  # serials that decide whether a cached page is still valid
    page_cache: PageCache
    description_cache: DescriptionCache
    web_search: Search
    stored_paths: CommitClearedDict[str, tuple[str, str]]  # URL path -> (sha256, file name)
    public_stages: CommitClearedDict[str, bool]  # stage -> whether anyone may read it
    readable_stages: CommitClearedDict[tuple[str, str], bool]  # (user, stage) -> may read
    replica_feed: PrimaryFeed
    replica_nonces: NonceGuard
    index_get_hooks: tuple[IndexHook, ...]  # GET /USER/INDEX as the simple project list
    index_post_hooks: tuple[IndexHook, ...]  # POST /USER/INDEX: JSON push, then uploads

    def __init__(
        self,
        settings: Settings,
        store: Store,
        blobs: BlobStore,
        secret: bytes,
        reactor: Any,
        cpu_pool: ThreadPool,
    ) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.reactor = reactor
        self.cpu_pool = cpu_pool
        self.tokens = auth.TokenSigner(secret, clock=reactor)
        self.verified = auth.VerifiedPasswords(secret)
        from devpid.passwords import PasswordChecker

        # bcrypt in its own bounded pool (started by the process's service tree)
        self.passwords = PasswordChecker(reactor, self.verified, settings.max_login_failures)
        self.known_credentials = KnownCredentials(store, secret)
        self.secret = secret
        self.trusted_proxies = TrustedProxies(settings.trusted_proxies)
        self.started = time.time()
        self.request_counters = RequestCounters()
        # Parts only some processes run (see devpid.node): None where this one does not.
        self.mirror_cache: MirrorCache | None = None  # main process only
        self.replica: ReplicaFollower | None = None  # a replica's main process
        self.write_proxy: WriteProxy | None = None  # a replica, or a --workers worker
        self.events: EventService | None = None  # main process only
        self.primary_uuid: str | None = None  # a replica: the primary it follows
        # What /+status reports, in order; assembled by devpid.node.build_node.
        self.status_providers: list[Callable[[], dict[str, Any]]] = []

    # -- helpers for handlers --------------------------------------------------------------
    def in_thread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """Run blocking work (bcrypt, hashing, archive reading) off the reactor thread."""
        return deferToThreadPool(self.reactor, self.cpu_pool, f, *args, **kw)

    def outside_url(self, request: Any) -> str:
        """Base URL for absolute links: X-Outside-Url, else --outside-url, else Host; the
        headers only from a trusted proxy, else the local address (devpid/proxies.py)."""
        trusted = self.trusted_proxies.trusts(request)
        forwarded = header(request, b"x-outside-url") if trusted else None
        if forwarded:
            return forwarded.rstrip("/")
        if self.settings.outside_url:
            return self.settings.outside_url.rstrip("/")
        fallback = f"{self.settings.host}:{self.settings.port}"
        if not trusted:
            return local_origin(request, fallback)
        host = header(request, b"host") or fallback
        scheme = "https" if request.isSecure() else "http"
        return f"{scheme}://{host}"

    def user_record(self, name: str) -> dict[str, Any] | None:
        value = self.store.get(keys.user(name))
        return value if isinstance(value, dict) else None

    def index_config(self, stage: str) -> dict[str, Any] | None:
        value = self.store.get(keys.index_of_stage(stage))
        return value if isinstance(value, dict) else None

    async def identify(self, request: Any) -> str | None:
        """The authenticated user name, or None (anonymous). Cached on the request.

        Credentials come from devpi-client's ``X-Devpi-Auth`` or HTTP Basic (pip, twine);
        the secret is a login token or the password itself. Bad credentials are refused
        with 401 rather than silently treated as anonymous, so a typo is noticed.
        """
        cached = getattr(request, "devpid_identity", False)
        if cached is not False:
            return cached if isinstance(cached, str) else None
        user = await self._identify(request)
        request.devpid_identity = user
        if user is not None and request.method in (b"GET", b"HEAD"):
            raw = credential_header(request)
            if raw is not None:  # the fast paths may trust these for a while (readacl.py)
                token = getattr(request, "devpid_token", None)
                until = token.get("expires") if token else getattr(
                    request, "devpid_secret_expires", None)
                self.known_credentials.remember(raw, user, token, until)
        return user

    async def _identify(self, request: Any) -> str | None:
        raw = header(request, b"x-devpi-auth")
        if raw is None:
            authorization = header(request, b"authorization") or ""
            if not authorization.lower().startswith("basic "):
                return None
            raw = authorization[6:].strip()
        try:
            decoded = base64.b64decode(raw, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized("malformed credentials") from None
        name, sep, secret = decoded.partition(":")
        if not sep:
            raise unauthorized("malformed credentials")
        record = self.user_record(name)
        pwhash = record.get("pwhash") if record else None
        if not pwhash:
            self.passwords.failures += 1
            raise unauthorized(f"user {name!r} could not be authenticated")
        from devpid import tokens

        if tokens.looks_like_token(secret):  # a scoped API token (devpid/tokens.py)
            scoped = tokens.verify(self.store, name, secret, pwhash)
            if scoped is None:
                self.passwords.failures += 1
                raise unauthorized("API token expired, revoked or invalid")
            from devpid.readacl import stage_of

            segments = getattr(request, "devpid_segments", None) or list(request.postpath)
            tokens.check_scope(scoped, request.method, segments, stage_of(segments))
            request.devpid_token = scoped
            return name
        if self.tokens.looks_like_token(secret):
            if self.tokens.verify(secret, name, pwhash):
                request.devpid_secret_expires = self.tokens.expires(secret)
                return name
            raise HTTPError(
                401,
                "authentication token expired or invalid, please log in again",
                headers={"WWW-Authenticate": 'Basic realm="pypi"', "Location": "/+login"},
            )
        if await self.check_password(name, secret, pwhash, request):
            return name
        raise unauthorized(f"user {name!r} could not be authenticated")

    async def check_password(
        self, name: str, password: str, pwhash: str, request: Any = None
    ) -> bool:
        """bcrypt off the reactor and off the worker pool, rate-limited (devpid/passwords.py)."""
        from devpid.passwords import Throttled

        address = client_address(request, self.trusted_proxies) if request else None
        try:
            return await self.passwords.check(name, password, pwhash, address)
        except Throttled as e:
            raise HTTPError(e.code, e.message, headers={"Retry-After": "60"}) from None

    async def hash_password(self, password: str) -> str:
        from devpid.passwords import Throttled

        try:
            return await self.passwords.hash(password, self.settings.bcrypt_rounds)
        except Throttled as e:
            raise HTTPError(e.code, e.message, headers={"Retry-After": "60"}) from None

    async def require_user(self, request: Any) -> str:
        """The authenticated user; anonymous callers get 403, as devpi's JSON API answers
        any missing permission (devpi-client expects it). Bad credentials stay 401."""
        user = await self.identify(request)
        if user is None:
            raise HTTPError(403, "authentication required")
        return user

    def resource(self) -> Resource:
        return RootResource(self)


# -- response helpers ------------------------------------------------------------------------
def client_address(request: Any, trusted: TrustedProxies) -> str | None:
    """The client's address; behind a trusted proxy (``--trusted-proxy``, default loopback:
    the generated nginx) the address it names in ``X-Real-IP``."""
    peer = getattr(request.getClientAddress(), "host", None)
    if trusted.trusts(request):
        forwarded = header(request, b"x-real-ip")
        if forwarded:
            return forwarded.strip()[:64]
    return peer if isinstance(peer, str) else None


def header(request: Any, name: bytes) -> str | None:
    """A request header as text (latin-1, as HTTP defines it), or None."""
    value = request.requestHeaders.getRawHeaders(name)
    return None if not value else value[0].decode("latin-1")


def json_response(
    request: Any,
    *,
    result: Any = None,
    type: str | None = None,
    message: str | None = None,
    code: int = 200,
) -> bytes:
    """devpi's envelope: ``{"result", "type", "message"}`` with the exact JSON content type."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", JSON_TYPE)
    body: dict[str, Any] = {}
    if result is not None or type is not None:
        body["result"] = result
        body["type"] = type
    if message:
        body["message"] = message
    try:
        return json.dumps(body, indent=2, allow_nan=False).encode() + b"\n"
    except ValueError:  # NaN/Infinity stored before input was strict: show them as null
        return json.dumps(_finite(body), indent=2, allow_nan=False).encode() + b"\n"


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# User-supplied JSON (configs, custom_data, login, push, yank) is stored and rendered back,
# often to anonymous readers: bound its size and nesting so that neither parsing nor the
# pages that embed it grow without limit (and deep nesting never hits Python's recursion
# limit).
MAX_JSON_BODY = 1024 * 1024
MAX_JSON_DEPTH = 20


def read_json(request: Any) -> Any:
    """The request body as JSON, or a 400 if it is not JSON or exceeds the bounds."""
    request.content.seek(0)
    raw = request.content.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise HTTPError(400, f"Bad request: JSON body larger than {MAX_JSON_BODY} bytes")
    try:
        value = json.loads(raw or b"null", parse_constant=reject_constant)
    except RecursionError:
        value = None
        depth_ok = False
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "Bad request: could not decode json") from None
    else:
        depth_ok = json_depth_within(value, MAX_JSON_DEPTH)
    if not depth_ok:
        raise HTTPError(400, f"Bad request: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259): refuse them rather than store them."""
    raise ValueError(f"{name} is not valid JSON")


def json_depth_within(value: Any, limit: int) -> bool:
    """Whether ``value``'s containers nest at most ``limit`` deep (iterative, early exit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return True


def query_flag(request: Any, name: bytes) -> bool:
    """Whether the query string has ``name`` in any form: ``?force``, ``?force=``, ``?force=1``.

    ``request.args`` cannot tell: twisted's parser drops items without ``=``.
    """
    query = request.uri.partition(b"?")[2]
    return any(item.split(b"=", 1)[0] == name for item in query.replace(b";", b"&").split(b"&"))


def utc_timestamp() -> str:
    """RFC 3339 with microseconds and Z, as PEP 700's upload-time wants it."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def log_when() -> list[int]:
    """The time for a file's ``log`` entry, as devpi writes it."""
    return list(time.gmtime()[:6])


def overwrite_log(existing: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The log a replaced file starts from, as devpi keeps it: the old file's own entries
    go, one ``overwrite`` entry counts how often the file was replaced (devpi-client reads
    it)."""
    if existing is None:
        return []
    count = max((e.get("count", 0) for e in existing.get("log", [])
                 if e.get("what") == "overwrite"), default=0)
    return [{"what": "overwrite", "who": None, "when": log_when(), "count": count + 1}]


def set_serial(request: Any, serial: int | None) -> None:
    """Report the serial a write committed (otherwise the serial at response time is sent)."""
    if serial is not None:
        request.setHeader(b"X-Devpi-Serial", str(serial).encode())
        request.devpid_serial_set = True


@app.handle_errors(HTTPError)  # type: ignore[arg-type]
def _http_error(server: Any, request: Any, failure: Failure) -> bytes:
    return render_error(request, failure.value)


@app.handle_errors(NotFound)  # type: ignore[arg-type]
def _not_found(server: Any, request: Any, failure: Failure) -> bytes:
    return render_error(request, HTTPError(404, "Not Found"))


@app.handle_errors(MethodNotAllowed)  # type: ignore[arg-type]
def _not_allowed(server: Any, request: Any, failure: Failure) -> bytes:
    method = request.method.decode("ascii", "replace")
    return render_error(request, HTTPError(405, f"method {method} not allowed here"))


@app.handle_errors(WriteFailed)  # type: ignore[arg-type]
def _write_failed(server: Any, request: Any, failure: Failure) -> bytes:
    """Storage failed, not the request: its real error, 507 for a full disk (else 503)."""
    return render_error(request, report_write_failure(request, failure))


def report_write_failure(request: Any, failure: Failure) -> HTTPError:
    """Log a failed write once (a full disk as one line, anything else with its traceback)
    and give the answer for it."""
    if isinstance(failure.value, (OutOfSpace, Unavailable)):  # an operator's: one line
        log.error("{method} {uri}: {message}", method=request.method.decode("latin-1"),
                  uri=request.uri.decode("latin-1"), message=str(failure.value))
    elif failure.value.code == 409:  # another node's concurrent change: the client retries
        log.info("{method} {uri}: {message}", method=request.method.decode("latin-1"),
                 uri=request.uri.decode("latin-1"), message=str(failure.value))
    else:
        log.failure("a write failed for {method} {uri}", failure,
                    method=request.method, uri=request.uri)
    return write_failed_error(failure.value)


def write_failed_error(error: WriteFailed) -> HTTPError:
    """The answer to a failed write, saying that nothing was stored and a retry may work."""
    if isinstance(error, OutOfSpace):
        return HTTPError(error.code, f"{error}; nothing was stored, retry once space is freed",
                         headers={"Retry-After": "60"})
    return HTTPError(error.code, f"{error}; nothing was stored", headers={"Retry-After": "10"})


@app.handle_errors  # type: ignore[call-overload]
def _unexpected(server: Any, request: Any, failure: Failure) -> bytes:
    log.failure("unhandled error for {method} {uri}", failure,
                method=request.method, uri=request.uri)
    return render_error(request, HTTPError(500, "internal server error (logged)"))


# -- the request object and root resource ---------------------------------------------------
class _Discard:
    """Stands in for the body buffer of a request that is over the upload limit."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *a: Any) -> int:
        return 0

    def read(self, *a: Any) -> bytes:
        return b""

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


class DevpidRequest(twserver.Request):
    """Request with a body size limit enforced while the body arrives."""

    body_too_large = False
    max_body = DEFAULT_MAX_UPLOAD
    devpid_body: BodyDeadline | None = None
    devpid_answered = False  # an error went out before the body (devpid/web/bodies.py)
    devpid_serial_set = False
    body_error: OutOfSpace | None = None  # the body could not be buffered: the disk is full

    def process(self) -> None:
        self.devpid_started = time.monotonic()
        channel = self.channel
        if channel is not None and not getattr(channel, "devpid_nodelay", False):
            # Responses are written whole: don't let Nagle hold back their last segment.
            channel.devpid_nodelay = True  # type: ignore[attr-defined]
            set_nodelay = getattr(channel.transport, "setTcpNoDelay", None)
            if set_nodelay is not None:
                set_nodelay(True)
        super().process()

    def write(self, data: bytes) -> None:
        # A read that waited (a mirror fetch, a replica catching up) may have seen newer
        # serials than the one current when it started: report the one it answered at.
        if not self.startedWriting and not self.devpid_serial_set:
            store = getattr(getattr(self.channel, "site", None), "devpid_store", None)
            if store is not None:
                self.setHeader(b"X-Devpi-Serial", str(store.serial).encode())
        super().write(data)

    def gotLength(self, length: int | None) -> None:
        site = getattr(self.channel, "site", None)
        limit = getattr(site, "max_body", self.max_body)
        if refuse_oversized(self, length, limit):  # 413 now, no "100 Continue"
            self.body_too_large = True
            self.content = _Discard()  # type: ignore[assignment]
            return
        if length != 0:  # a body follows: it must not trickle
            timeout = getattr(site, "body_timeout", DEFAULT_BODY_TIMEOUT)
            self.devpid_body = BodyDeadline(self, length, timeout)
        try:
            with disk_full_as_out_of_space("buffering the request body"):
                super().gotLength(length)
        except OutOfSpace as e:
            self._body_failed(e)

    def _body_failed(self, error: OutOfSpace) -> None:
        """Drop the body at once (its temp file goes with it); render() answers 507."""
        self.body_error = error
        content = self.content
        self.content = _Discard()  # type: ignore[assignment]
        if content is not None:
            with contextlib.suppress(OSError):
                content.close()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.devpid_body is not None:
            self.devpid_body.done()
        if self.devpid_answered:  # refused while the body arrived; the connection closes
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        if self.devpid_body is not None:
            self.devpid_body.done()
        super().connectionLost(reason)

    def handleContentChunk(self, data: bytes) -> None:
        if self.devpid_body is not None:
            self.devpid_body.got(len(data))
        if self.body_too_large or self.body_error is not None:
            return
        try:
            with disk_full_as_out_of_space("buffering the request body"):
                super().handleContentChunk(data)
        except OutOfSpace as e:
            self._body_failed(e)
            return
        limit = getattr(getattr(self.channel, "site", None), "max_body", self.max_body)
        content = self.content
        if content is not None and content.tell() > limit:
            self.body_too_large = True
            content.close()
            self.content = _Discard()


class RootResource(Resource):
    """Decodes the path, applies global headers, then dispatches to the Klein app."""

    isLeaf = True

    def __init__(self, server: DevpidServer) -> None:
        super().__init__()
        self.devpid = server
        self.klein = server.app.resource()
        from devpid.web.fastpath import try_cached_page, try_file_check, try_stored_file

        self.fast_paths = (try_file_check, try_cached_page, try_stored_file)
        from devpid.web.html.dispatch import browser_route

        self.browser_route = browser_route  # the web view for people (devpid/web/html)
        self.shared_store = server.settings.workers > 1
        self.server_version = f"devpid {devpid.__version__}".encode()
        mount = urlsplit(server.settings.outside_url or "").path.rstrip("/")
        self.mount = [s.encode() for s in mount.split("/") if s]

    def prepare(self, request: Any, segments: list[bytes]) -> list[bytes] | HTTPError:
        """devpi's global headers, then the path: mount point stripped, segments decoded."""
        server = self.devpid
        request.setHeader(b"X-Devpi-Api-Version", b"2")
        request.setHeader(b"X-Devpi-Server-Version", self.server_version)
        uuid = server.store.uuid.encode()
        primary = (server.primary_uuid or server.store.uuid).encode()
        request.setHeader(b"X-Devpi-Uuid", uuid)
        request.setHeader(b"X-Devpi-Primary-Uuid", primary)
        request.setHeader(b"X-Devpi-Master-Uuid", primary)
        if self.shared_store:  # other processes write this database too (--workers)
            server.store.poll_external()
        request.setHeader(b"X-Devpi-Serial", str(server.store.serial).encode())
        if self.mount and segments[: len(self.mount)] == self.mount:
            segments = segments[len(self.mount) :]
        decoded: list[bytes] = []
        for seg in segments:
            try:
                text = unquote(seg.decode("utf-8"), errors="strict")
            except UnicodeDecodeError:
                return HTTPError(400, "URL is not valid UTF-8")
            if "/" in text or "\x00" in text:
                return HTTPError(400, "invalid character in URL path")
            decoded.append(text.encode("utf-8"))
        return decoded

    def render(self, request: Any) -> Any:
        server = self.devpid
        if not request.uri.startswith(b"/"):
            # absolute-form (a proxy's request) or "*": no route; werkzeug would fail on it
            return render_error(request, HTTPError(400, "request target must be a path"))
        decoded = self.prepare(request, list(request.postpath))
        if isinstance(decoded, HTTPError):
            return render_error(request, decoded)
        request.postpath = decoded
        if request.body_too_large if hasattr(request, "body_too_large") else False:
            limit = server.settings.max_upload_size
            return render_error(
                request,
                HTTPError(413, f"request body exceeds the upload limit of {limit} bytes"),
            )
        if getattr(request, "body_error", None) is not None:
            error = report_write_failure(request, Failure(request.body_error))
            if request.method == b"POST":  # an upload form: twine reads the status line
                error = submit_error(error)
            return render_error(request, error)
        # -- replication (devpid/replica.py): a replica forwards writes to its primary --
        proxy = server.write_proxy
        if proxy is not None and proxy.wants(request):
            return proxy.render(request)
        # -- end replication hook --
        from devpid.readacl import gate

        return gate(server, request, decoded, lambda: self.route(request, decoded))

    def route(self, request: Any, decoded: list[bytes]) -> Any:
        """Fast paths, the web view, then Klein (after devpid.readacl's read check)."""
        server = self.devpid
        for fast_path in self.fast_paths:
            try:
                fast = fast_path(server, request, decoded)
            except Exception:
                if request.startedWriting:
                    raise
                # e.g. an unreadable blob: the full route explains it (a JSON error)
                log.failure("fast path failed for {uri}", uri=request.uri)
                request.unregisterProducer()
                break
            if fast is not None:
                return fast
        refused = self.browser_route(server, request, decoded)
        if refused is not None:
            return render_error(request, refused)
        return self.klein.render(request)


class DevpidSite(twserver.Site):
    """A Site whose access log is one cheap line per request (see devpid.accesslog)."""

    access: Any = None
    audit: Any = None  # an AuditLog (devpid.audit): every write request
    counters: RequestCounters | None = None
    devpid_connections: Any = None  # a ConnectionLimit (devpid.web.connections)
    devpid_fast: Any = None  # a FastAnswer (devpid.web.fastchannel)
    devpid_header_timeout: float | None = None

    def buildProtocol(self, addr: Any) -> Any:
        """A channel, or a 503 answer when every connection slot is busy."""
        limit = self.devpid_connections
        if limit is not None and not limit.make_room():
            from devpid.web.connections import Refused

            refused = Refused()
            refused.factory = self
            return refused
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        started = getattr(request, "devpid_started", None)
        duration = (time.monotonic() - started) * 1000 if started else 0.0
        if self.counters is not None:
            self.counters.count(request.code, request.sentLength, duration)
        if self.audit is not None:
            self.audit.record(request)
        if self.access is None:
            return
        address = request.getClientAddress()
        self.access.record(
            getattr(address, "host", "-"),
            request.method.decode("latin-1"),
            request.uri.decode("latin-1"),
            request.code,
            request.sentLength,
            duration,
        )


def make_site(server: DevpidServer) -> DevpidSite:
    """The HTTP site of this process. Raises the process's open-file limit to fit
    ``--max-connections`` (see devpid.web.connections)."""
    # Uploads are parsed by our streaming parser, not read into memory by twisted.web.
    from devpid.web.connections import ConnectionLimit, raise_fd_limit
    from devpid.web.fastchannel import FastAnswer, FastHTTPChannel

    root = server.resource()
    settings = server.settings
    site = DevpidSite(root, parsePOSTFormSubmission=False, timeout=settings.idle_timeout)
    site.devpid_header_timeout = settings.header_timeout
    limit = ConnectionLimit(raise_fd_limit(settings.max_connections))
    site.devpid_connections = limit
    site.protocol = FastHTTPChannel  # type: ignore[assignment]
    if isinstance(root, RootResource):
        fast = FastAnswer(server, root.fast_paths, root.prepare)
        site.devpid_fast = fast
    site.requestFactory = DevpidRequest
    site.max_body = server.settings.max_upload_size  # type: ignore[attr-defined]
    site.body_timeout = server.settings.body_timeout  # type: ignore[attr-defined]
    site.devpid_store = server.store  # type: ignore[attr-defined]
    site.displayTracebacks = False
    from devpid.accesslog import AccessLog

    site.access = AccessLog(server.reactor, server.settings.log_format)
    site.counters = server.request_counters
    from devpid.audit import AuditLog

    site.audit = AuditLog(server.settings.serverdir, server.trusted_proxies, server.reactor)
    return site
