"""Give memory back to the system after big, short-lived work (a 50,000-file page).

Freed Python objects go back to the C allocator, which keeps most of them mapped: without a
trim, the process stays ~200 MB bigger after one huge mirror page for the rest of its life.
glibc's ``malloc_trim`` returns the free parts; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

_libc: Any = None
_tried = False


def trim() -> None:
    """Return free heap memory to the system (blocking for a few ms: call it in a thread)."""
    global _libc, _tried
    if not _tried:
        _tried = True
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else None
        except OSError:
            _libc = None
    if _libc is not None:
        _libc.malloc_trim(0)
