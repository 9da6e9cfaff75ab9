"""Events: run hooks on every committed serial, in order, resuming after restarts.

Each hook has its own cursor (the last serial it finished), persisted atomically in
``SERVERDIR/.event-serial``, so a slow or failing hook never delays another hook or any request.
A hook that raises is retried with exponential backoff up to ``MAX_ATTEMPTS`` times for that
serial, then the serial is logged and skipped for that hook (one poisoned serial must not stop
a hook forever). Cursors are written at most every ``SAVE_DELAY`` seconds (and on stop), not
once per serial and hook: an fsync per upload on the reactor thread cost more than the upload.
Delivery is at-least-once across crashes: a kill repeats the serials finished since the last
write (at most ``SAVE_DELAY`` seconds' worth) after the restart.

Hooks are objects with ``async def on_serial(self, serial, changes)``, found through the
``devpid.hooks`` entry point group (each entry point names a factory called with the server,
or an object that already has ``on_serial``), plus the built-in webhook hook.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from treq.client import HTTPClient
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from devpid.netpolicy import guarded_agent
from devpid.redact import redact_webhook
from devpid.store.base import Changes

log = Logger()

STATE_FILE = ".event-serial"
MAX_ATTEMPTS = 5
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
HOOK_TIMEOUT = 120.0  # a hook call taking longer counts as a failure
SAVE_DELAY = 0.5  # seconds between cursor writes while hooks make progress
ENTRY_POINT_GROUP = "devpid.hooks"


class Hook(Protocol):
    async def on_serial(self, serial: int, changes: Changes) -> None: ...


class EventService(service.Service):
    """Feeds every committed serial to every hook, each hook at its own pace."""

    def __init__(
        self,
        store: Any,
        serverdir: Path,
        clock: Any,
        hooks: dict[str, Any],
    ) -> None:
        self.store = store
        self.clock = clock
        self.statefile = serverdir / STATE_FILE
        self.runners = {name: _HookRunner(self, name, hook) for name, hook in hooks.items()}
        self.saves = 0
        self._wake_call: Any = None
        self._save_call: Any = None
        self._save_delay = SAVE_DELAY
        store.add_commit_listener(self._committed)

    # -- persisted cursors ----------------------------------------------------------------
    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.statefile.read_text())
            hooks = data.get("hooks", {}) if isinstance(data, dict) else {}
            return {k: int(v) for k, v in hooks.items() if isinstance(v, int)}
        except FileNotFoundError:
            return {}
        except (ValueError, OSError):
            log.failure("unreadable {file}; hooks restart at the current serial",
                        file=self.statefile)
            return {}

    def save(self) -> None:
        """Write all cursors atomically (temp file, fsync, rename)."""
        cursors = {name: r.done for name, r in self.runners.items()}
        data = {
            "serial": min(cursors.values(), default=self.store.serial),
            "hooks": cursors,
        }
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
            "event-hooks": {
                name: {"serial": r.done, "last-error": r.last_error, "skipped": r.skipped}
                for name, r in self.runners.items()
            },
        }

    # -- service ---------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        saved = self._load()
        for name, runner in self.runners.items():
            # A hook seen for the first time starts at the current serial: enabling a
            # hook (or events) does not replay the whole history to it.
            runner.done = saved.get(name, self.store.serial)
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
        # Never run hooks (or write the state file) inside the committing request's call.
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self.clock.callLater(0, self._wake_all)

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
        self.skipped: list[int] = []
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
                if self.done >= store.serial:
                    self._wakeup = Deferred()
                    await self._wakeup
                    continue
                serial = self.done + 1
                changes = store.changelog(serial)
                await self._deliver(serial, changes if changes is not None else {})
                self.done = serial
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

    async def _deliver(self, serial: int, changes: Changes) -> None:
        backoff = BACKOFF_START
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                d = defer.ensureDeferred(self.hook.on_serial(serial, changes))
                d.addTimeout(HOOK_TIMEOUT, self.events.clock)
                await d
                self.last_error = None
                return
            except CancelledError:
                if not self._running:
                    raise
                error = f"timed out after {HOOK_TIMEOUT:.0f}s"
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                log.failure("hook {hook} failed on serial {serial} (attempt {attempt}/{max})",
                            hook=self.name, serial=serial, attempt=attempt, max=MAX_ATTEMPTS)
            self.last_error = f"serial {serial}: {error}"
            if attempt < MAX_ATTEMPTS:
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        log.error("hook {hook} gave up on serial {serial} after {n} attempts; skipping it",
                  hook=self.name, serial=serial, n=MAX_ATTEMPTS)
        self.skipped = [*self.skipped[-99:], serial]


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
            parts = key.split("/")
            if parts[0] != "file" or len(parts) != 5 or not isinstance(value, dict):
                continue
            stage, project = f"{parts[1]}/{parts[2]}", parts[3]
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
                "filename": value.get("filename", parts[4]),
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
            config = self.server.store.get("index/" + stage)
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


def build(server: Any) -> list[service.Service]:
    """The event service; webhooks only where writes originate (not on replicas)."""
    hooks = discover_hooks(server)
    if server.settings.role != "replica":
        # Replicas see the same serials; posting there too would deliver every event twice.
        hooks.setdefault("webhooks", WebhookHook(server))
    events = EventService(server.store, server.settings.serverdir, server.reactor, hooks)
    server.components["events"] = events
    server.status_providers.append(events.status)
    return [events]


__all__ = ["EventService", "Hook", "WebhookHook", "build", "discover_hooks"]
