"""Memory the process no longer uses, handed back to the system between the parts of a long command."""

from __future__ import annotations

import ctypes
import gc


def release_freed_memory() -> None:
    """Collect the garbage and hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Each method's graphs and maps are freed after it, but glibc keeps the freed pages, and the next
    method's differently sized buffers fragment them further: without it ``localize``'s resident memory crept up
    from method to method (docs/localization.md, "How long it takes")."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
