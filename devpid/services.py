"""The optional long-running subsystems of one server process (mirror, replica, events)."""

from __future__ import annotations

from typing import Any

from twisted.application import service


def build(server: Any) -> list[service.Service]:
    """Services to run beside the HTTP site, in start order."""
    services: list[service.Service] = []
    # -- mirror indexes (devpid/mirror/service.py) --
    from devpid.mirror.service import Mirror, MirrorService

    mirror = Mirror(server)
    server.components["mirror"] = mirror
    server.status_providers.append(mirror.status)
    services.append(MirrorService(mirror))
    # -- replication and events (devpid/replica.py, devpid/events.py) --
    from devpid import events, replica

    services.extend(replica.build(server))
    services.extend(events.build(server))
    # -- end replication and events --
    return services
