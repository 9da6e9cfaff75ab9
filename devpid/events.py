"""Events: run hooks on every committed serial, in order, resuming after restarts.

Each hook has its own cursor (the last serial it finished), persisted atomically in
``SERVERDIR/.event-serial``, so a slow or failing hook never delays another hook or any request.
A hook that raises is retried with exponential backoff (capped at ``BACKOFF_MAX``) for that
serial until the failures have lasted the retry horizon (``--event-retry-horizon``, hours by
default: a webhook receiver down for a maintenance window must not lose events). Only then is
the serial given up for that hook (one poisoned serial must not stop a hook forever): it is
recorded in the state file as failed, so it survives restarts, is listed in ``/+status`` and
``/+metrics``, and can be delivered again on request (``POST /+events/retry``, root only, or
``devpid events retry``). Cursors are written at most every ``SAVE_DELAY`` seconds (and on
stop), not once per serial and hook: an fsync per upload on the reactor thread cost more
than the upload.
Delivery is at-least-once across crashes: a kill repeats the serials finished since the last
write (at most ``SAVE_DELAY`` seconds' worth) after the restart.

Hooks are objects with ``async def on_serial(self, serial, changes)``, found through the
``devpid.hooks`` entry point group (each entry point names a factory called with the server,
or an object that already has ``on_serial``), plus the built-in webhook hook.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from treq.client import HTTPClient
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from devpid.domain import keys
from devpid.netpolicy import guarded_agent
from devpid.redact import redact_webhook
from devpid.store.base import Changes, Store

log = Logger()

STATE_FILE = ".event-serial"
MAX_ATTEMPTS = 5  # attempts of a requested retry of a failed serial
BACKOFF_START = 0.5
BACKOFF_MAX = 300.0
DEFAULT_HORIZON = 6 * 3600.0  # seconds of failures before a serial is given up
MAX_FAILED = 10000  # failed serials kept per hook (the oldest go first)
HOOK_TIMEOUT = 120.0  # a hook call taking longer counts as a failure
SAVE_DELAY = 0.5  # seconds between cursor writes while hooks make progress
ENTRY_POINT_GROUP = "devpid.hooks"
BIG_CHANGES = 256 * 1024  # changelog text above which it is decoded off the reactor
# Committed serials whose changes are kept in memory for hooks that lag behind; a hook
# further behind (one retrying a serial for hours) reads them back from the changelog.
# Kept small: a change can be a whole mirror page, and a long retry must not pile them up.
MAX_RECENT = 64


class Hook(Protocol):
    async def on_serial(self, serial: int, changes: Changes) -> None: ...


class EventService(service.Service):
    """Feeds every committed serial to every hook, each hook at its own pace."""

    def __init__(
        self,
        store: Store,
        serverdir: Path,
        clock: Any,
        hooks: dict[str, Any],
        horizon: float = DEFAULT_HORIZON,
    ) -> None:
        self.store = store
        self.clock = clock
        self.horizon = horizon
        self.statefile = serverdir / STATE_FILE
        self.runners = {name: _HookRunner(self, name, hook) for name, hook in hooks.items()}
        self.saves = 0
        self._wake_call: Any = None
        self._save_call: Any = None
        self._save_delay = SAVE_DELAY
        # Changes of serials committed in this process that a hook has still to see: a hook
        # gets them as committed instead of decoding them again (a 20 MB mirror page).
        self.recent: dict[int, Changes] = {}
        store.add_commit_listener(self._committed)

    # -- persisted cursors ----------------------------------------------------------------
    def _load(self) -> tuple[dict[str, int], dict[str, list[int]]]:
        """(cursor per hook, failed serials per hook) from the state file."""
        try:
            data = json.loads(self.statefile.read_text())
            if not isinstance(data, dict):
                data = {}
            hooks = data.get("hooks", {})
            failed = data.get("failed", {})
            cursors = {k: int(v) for k, v in hooks.items() if isinstance(v, int)}
            gave_up = {
                k: [int(n) for n in v if isinstance(n, int)]
                for k, v in (failed.items() if isinstance(failed, dict) else [])
                if isinstance(v, list)
            }
            return cursors, gave_up
        except FileNotFoundError:
            return {}, {}
        except (ValueError, OSError, AttributeError):
            log.failure("unreadable {file}; hooks restart at the current serial",
                        file=self.statefile)
            return {}, {}

    def save(self) -> None:
        """Write all cursors and failed serials atomically (temp file, fsync, rename)."""
        cursors = {name: r.done for name, r in self.runners.items()}
        data: dict[str, Any] = {
            "serial": min(cursors.values(), default=self.store.serial),
            "hooks": cursors,
        }
        failed = {name: list(r.failed) for name, r in self.runners.items() if r.failed}
        if failed:
            data["failed"] = failed
        tmp = self.statefile.with_name(self.statefile.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.statefile)
        self.saves += 1

    def save_soon(self) -> None:
        """Write the cursors within ``SAVE_DELAY`` seconds (one write for many serials)."""
        if self._save_call is None or not self._save_call.active():
            self._save_call = self.clock.callLater(self._save_delay, self._save_due)

    def _save_due(self) -> None:
        try:
            self.save()
        except Exception:
            self._save_delay = min(self._save_delay * 2, BACKOFF_MAX)  # a broken disk: log less
            log.failure("could not write {file}; retrying in {delay} s", file=self.statefile,
                        delay=self._save_delay)
            self.save_soon()
        else:
            self._save_delay = SAVE_DELAY

    @property
    def event_serial(self) -> int:
        """The serial every hook has finished (devpi's "event serial")."""
        return min((r.done for r in self.runners.values()), default=self.store.serial)

    def status(self) -> dict[str, Any]:
        return {
            "event-serial": self.event_serial,
            "event-retry-horizon": self.horizon,
            "event-hooks": {
                name: {
                    "serial": r.done,
                    "last-error": r.last_error,
                    "failed": list(r.failed),
                    "skipped": list(r.failed),  # the older name of "failed"
                    "retrying": list(r.retry_queue),
                }
                for name, r in self.runners.items()
            },
        }

    def retry(
        self, hook: str | None = None, serials: list[int] | None = None
    ) -> dict[str, list[int]]:
        """Queue failed serials (all, or those given) for delivery again; hook -> queued.

        A serial stays listed as failed until a retry delivers it; a retry that fails again
        (after ``MAX_ATTEMPTS`` quick attempts) leaves it there.
        """
        if hook is not None and hook not in self.runners:
            raise KeyError(hook)
        queued: dict[str, list[int]] = {}
        for name, runner in self.runners.items():
            if hook is not None and name != hook:
                continue
            wanted = None if serials is None else set(serials)
            queued_already = set(runner.retry_queue)
            chosen = [n for n in runner.failed if wanted is None or n in wanted]
            runner.retry_queue.extend(n for n in chosen if n not in queued_already)
            if chosen:
                queued[name] = chosen
            runner.wake()
        return queued

    # -- service ---------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        saved, failed = self._load()
        for name, runner in self.runners.items():
            # A hook seen for the first time starts at the current serial: enabling a
            # hook (or events) does not replay the whole history to it.
            runner.done = saved.get(name, self.store.serial)
            runner.failed = failed.get(name, [])
        self.save()
        for runner in self.runners.values():
            runner.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        stopped = defer.gatherResults([r.stop() for r in self.runners.values()])
        return stopped.addCallback(lambda _: self._save_pending())

    def _save_pending(self) -> None:
        """On stop, once no runner can advance any more: write what a timer was still to."""
        if self._save_call is None or not self._save_call.active():
            return
        self._save_call.cancel()
        try:
            self.save()
        except Exception:
            log.failure("could not write {file} on stop", file=self.statefile)

    def _committed(self, serial: int, changes: Changes) -> None:
        if self.runners and self.running:
            self.recent[serial] = changes
            while len(self.recent) > MAX_RECENT:
                del self.recent[min(self.recent)]
        # Never run hooks (or write the state file) inside the committing request's call.
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self.clock.callLater(0, self._wake_all)

    def forget_done(self) -> None:
        """Drop remembered changes every hook has handled."""
        done = self.event_serial
        for serial in [s for s in self.recent if s <= done]:
            del self.recent[serial]

    def _wake_all(self) -> None:
        for runner in self.runners.values():
            runner.wake()


class _HookRunner:
    """One hook's loop: never dies, processes serials strictly in order."""

    def __init__(self, events: EventService, name: str, hook: Any) -> None:
        self.events = events
        self.name = name
        self.hook = hook
        self.done = -1
        self.last_error: str | None = None
        self.failed: list[int] = []  # serials given up on (persisted)
        self.retry_queue: deque[int] = deque()  # failed serials to deliver again (on request)
        self._running = False
        self._loop: Deferred[None] | None = None
        self._wakeup: Deferred[None] | None = None

    def start(self) -> None:
        self._running = True
        self._loop = defer.ensureDeferred(self._run())

    def stop(self) -> Deferred[None]:
        self._running = False
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
        return defer.succeed(None)

    @property
    def skipped(self) -> list[int]:
        """The older name of ``failed``."""
        return self.failed

    def wake(self) -> None:
        d, self._wakeup = self._wakeup, None
        if d is not None:
            d.callback(None)

    def _sleep(self, seconds: float) -> Deferred[None]:
        clock = self.events.clock
        d: Deferred[None] = Deferred(lambda _d: timer.cancel())
        timer = clock.callLater(seconds, d.callback, None)
        return d

    async def _run(self) -> None:
        backoff = BACKOFF_START
        while self._running:
            try:
                store = self.events.store
                if self.retry_queue:
                    await self._retry_one(self.retry_queue[0])
                    continue
                if self.done >= store.serial:
                    self._wakeup = Deferred()
                    await self._wakeup
                    continue
                serial = self.done + 1
                changes = await self._changes(serial)
                if not await self._deliver(serial, changes, self.events.horizon):
                    self.failed = [*self.failed[-(MAX_FAILED - 1):], serial]
                self.done = serial
                self.events.forget_done()
                self.events.save_soon()
                backoff = BACKOFF_START
            except CancelledError:
                if not self._running:
                    return
            except Exception:
                # Not the hook (that is handled in _deliver): the store or the state file.
                log.failure("event loop of hook {hook} failed; retrying", hook=self.name)
                try:
                    await self._sleep(backoff)
                except CancelledError:
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _changes(self, serial: int) -> Changes:
        """One serial's changes; a big entry (a mirror page of 50,000 files) is decoded in a
        thread, not on the reactor."""
        changes = self.events.recent.get(serial)
        if changes is not None:
            return changes
        text = self.events.store.changelog_text(serial)
        if text is None:
            return {}
        clock = self.events.clock
        if len(text) <= BIG_CHANGES or not hasattr(clock, "getThreadPool"):
            return dict(json.loads(text))
        decoded = await deferToThreadPool(clock, clock.getThreadPool(), json.loads, text)
        return dict(decoded)

    async def _retry_one(self, serial: int) -> None:
        """Deliver a failed serial again, as asked; it stays failed if this fails too."""
        ok = await self._deliver(serial, await self._changes(serial), None)
        if self.retry_queue and self.retry_queue[0] == serial:
            self.retry_queue.popleft()
        if ok:
            self.failed = [n for n in self.failed if n != serial]
            log.info("hook {hook} delivered failed serial {serial} on retry",
                     hook=self.name, serial=serial)
        self.events.save_soon()

    async def _deliver(self, serial: int, changes: Changes, horizon: float | None) -> bool:
        """Call the hook until it succeeds (True) or gives up (False).

        It gives up once failures have lasted ``horizon`` seconds, or (``horizon`` None, a
        requested retry) after ``MAX_ATTEMPTS`` attempts. The first failure is logged with its
        traceback, the following ones as one line each.
        """
        clock = self.events.clock
        started = clock.seconds()
        backoff = BACKOFF_START
        attempt = 0
        while True:
            attempt += 1
            try:
                d = defer.ensureDeferred(self.hook.on_serial(serial, changes))
                d.addTimeout(HOOK_TIMEOUT, clock)
                await d
                self.last_error = None
                return True
            except CancelledError:
                if not self._running:
                    raise
                error = f"timed out after {HOOK_TIMEOUT:.0f}s"
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                if attempt == 1:
                    log.failure("hook {hook} failed on serial {serial}; retrying",
                                hook=self.name, serial=serial)
            self.last_error = f"serial {serial}: {error}"
            if horizon is None:
                out_of_time = attempt >= MAX_ATTEMPTS
            else:
                out_of_time = clock.seconds() - started + backoff > horizon
            if out_of_time:
                break
            if attempt > 1:
                log.warn("hook {hook} failed on serial {serial} (attempt {attempt}): {error}; "
                         "retrying in {delay:g} s", hook=self.name, serial=serial,
                         attempt=attempt, error=error, delay=backoff)
            await self._sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        log.error("hook {hook} gave up on serial {serial} after {n} attempts: {error}; "
                  "listed as failed (retry: devpid events retry)",
                  hook=self.name, serial=serial, n=attempt, error=error)
        return False


# -- the built-in webhook hook ------------------------------------------------------------------
class WebhookHook:
    """POSTs new release files of an index to the URLs in its config's ``webhooks``.

    One POST per (serial, index, URL), body ``{"event": "release-files", ...}``. Within a
    serial, URLs that already succeeded are not posted again when another URL fails and the
    serial is retried.
    """

    def __init__(self, server: Any, http: Any = None) -> None:
        self.server = server
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            self._pool = HTTPConnectionPool(server.reactor, persistent=True)
            # Same address rules as mirrors: a webhook URL is no way into the inside.
            agent = guarded_agent(server.reactor, self._pool,
                                  allow_private=server.settings.allow_private_addresses)
            http = HTTPClient(agent)
        self.http = http
        self._delivered: tuple[int, set[tuple[str, str]]] = (-1, set())

    def base_url(self) -> str:
        settings = self.server.settings
        if settings.outside_url:
            return str(settings.outside_url).rstrip("/")
        return f"http://{settings.host}:{settings.port}"

    def payloads(self, serial: int, changes: Changes) -> dict[str, dict[str, Any]]:
        """stage -> event body, for every stage whose files this serial added or changed."""
        base = self.base_url()
        out: dict[str, dict[str, Any]] = {}
        for key, value in sorted(changes.items()):
            if not keys.well_formed(key, ("file",)) or not isinstance(value, dict):
                continue
            _, stage, project, filename = keys.parse(key)
            event = out.setdefault(stage, {
                "event": "release-files",
                "serial": serial,
                "stage": stage,
                "index_url": f"{base}/{stage}/",
                "files": [],
            })
            path = value.get("path")
            event["files"].append({
                "project": project,
                "filename": value.get("filename", filename),
                "version": value.get("version"),
                "sha256": value.get("sha256"),
                "size": value.get("size"),
                "url": f"{base}/{path}" if isinstance(path, str) else None,
            })
        return out

    async def on_serial(self, serial: int, changes: Changes) -> None:
        if self._delivered[0] != serial:
            self._delivered = (serial, set())
        done = self._delivered[1]
        failures: list[str] = []
        for stage, body in self.payloads(serial, changes).items():
            config = self.server.store.get(keys.index_of_stage(stage))
            urls = config.get("webhooks") if isinstance(config, dict) else None
            for url in urls if isinstance(urls, list) else []:
                if not isinstance(url, str) or (stage, url) in done:
                    continue
                try:
                    response = await self.http.post(
                        url,
                        data=json.dumps(body).encode(),
                        headers={b"Content-Type": [b"application/json"],
                                 b"User-Agent": [b"devpid-webhook"]},
                        timeout=self.server.settings.request_timeout,
                    )
                    await response.content()
                    if not 200 <= response.code < 300:
                        raise RuntimeError(f"answered {response.code}")
                    done.add((stage, url))
                except Exception as e:
                    # /+status shows this: never the URL's path or query (the token)
                    failures.append(f"{redact_webhook(url)}: {type(e).__name__}: {e}")
        if failures:
            raise RuntimeError("webhook delivery failed: " + "; ".join(failures))


# -- REST: retry failed serials ------------------------------------------------------------
def _retry_request(body: Any) -> tuple[str | None, list[int] | None]:
    """(hook, serials) from ``{"hook": ..., "serials": [...]}`` (both optional)."""
    from devpid.web.errors import HTTPError

    if body is None:
        return None, None
    if not isinstance(body, dict):
        raise HTTPError(400, "expected a JSON object like {\"hook\": NAME, \"serials\": [N]}")
    hook, serials = body.get("hook"), body.get("serials")
    if hook is not None and not isinstance(hook, str):
        raise HTTPError(400, "'hook' must be a hook name")
    if serials is not None and not (
        isinstance(serials, list)
        and all(isinstance(n, int) and not isinstance(n, bool) for n in serials)
    ):
        raise HTTPError(400, "'serials' must be a list of serial numbers")
    return hook, serials


def _register_routes() -> None:
    from devpid.domain.permissions import is_root
    from devpid.web.app import DevpidServer, app, json_response, read_json
    from devpid.web.errors import HTTPError, forbidden

    @app.route("/+events/retry", methods=["POST"])
    async def retry_failed(server: DevpidServer, request: Any) -> bytes:
        """Deliver again serials hooks gave up on (root only); answers what was queued."""
        user = await server.require_user(request)
        if not is_root(user):
            raise forbidden("only root may retry event hooks")
        events = server.events
        if events is None:
            raise HTTPError(404, "this process runs no event hooks")
        request.content.seek(0)
        hook, serials = _retry_request(read_json(request) if request.content.read(1) else None)
        try:
            queued = events.retry(hook, serials)
        except KeyError:
            raise HTTPError(404, f"no event hook named {hook!r}") from None
        count = sum(len(v) for v in queued.values())
        return json_response(request, result={"queued": queued}, type="events-retry",
                             message=f"{count} failed serial(s) queued for delivery",
                             code=202 if count else 200)


_register_routes()


# -- wiring ---------------------------------------------------------------------------------
def discover_hooks(server: Any) -> dict[str, Any]:
    """Hooks from the ``devpid.hooks`` entry points (broken ones are logged, not fatal)."""
    hooks: dict[str, Any] = {}
    for ep in _entry_points():
        try:
            obj = ep.load()
            hook = obj if hasattr(obj, "on_serial") and not isinstance(obj, type) else obj(server)
            if not hasattr(hook, "on_serial"):
                raise TypeError(f"{ep.value} has no on_serial method")
            hooks[ep.name] = hook
            log.info("event hook {name} loaded from {value}", name=ep.name, value=ep.value)
        except Exception:
            log.failure("could not load event hook {name} ({value})", name=ep.name, value=ep.value)
    return hooks


def _entry_points() -> Iterable[Any]:
    return entry_points(group=ENTRY_POINT_GROUP)


def build(server: Any) -> EventService:
    """The event service; webhooks only where writes originate (not on replicas)."""
    hooks = discover_hooks(server)
    if server.settings.role != "replica":
        # Replicas see the same serials; posting there too would deliver every event twice.
        hooks.setdefault("webhooks", WebhookHook(server))
    return EventService(server.store, server.settings.serverdir, server.reactor, hooks,
                        horizon=server.settings.event_retry_horizon)


__all__ = ["EventService", "Hook", "WebhookHook", "build", "discover_hooks"]
