"""Kept so older imports work: the key layout lives in :mod:`devpid.domain.keys`."""

from devpid.domain.keys import *  # noqa: F403
