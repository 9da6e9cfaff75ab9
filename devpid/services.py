"""The optional long-running subsystems of one server process (mirror, replica, events)."""

from __future__ import annotations

from typing import Any

from twisted.application import service


def build(server: Any, *, worker: bool = False) -> list[service.Service]:
    """Services to run beside the HTTP site, in start order.

    A ``worker`` process (see workers.py) serves reads only: no event hooks and no blob gc
    (they run once, in the main process) and no replica follower.
    """
    services: list[service.Service] = []
    from devpid.mirror.service import Mirror, MirrorService

    mirror = Mirror(server)
    server.components["mirror"] = mirror
    server.status_providers.append(mirror.status)
    services.append(MirrorService(mirror))

    from devpid import events, replica

    services.extend(replica.build(server))
    if not worker:
        from pathlib import Path

        from devpid import blobgc
        from devpid.mirror import cache
        from devpid.store import DB_NAME

        services.extend(cache.build(server, Path(server.settings.serverdir) / DB_NAME))

        services.extend(events.build(server))
        services.extend(blobgc.build(server))
    return services
