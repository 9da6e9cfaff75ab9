"""The optional long-running subsystems of one server process (mirror, replica, events)."""

from __future__ import annotations

from typing import Any

from twisted.application import service


def build(server: Any) -> list[service.Service]:
    """Services to run beside the HTTP site, in start order."""
    return []
