"""How a long command keeps its memory down: few malloc arenas, and freed memory handed back between its parts."""

from __future__ import annotations

import ctypes
import gc

M_ARENA_MAX = -8  # glibc's mallopt parameter: the most malloc arenas the process's threads may spread over


def few_malloc_arenas(arenas: int = 2) -> bool:
    """Let the process's threads share ``arenas`` malloc arenas (glibc; nothing elsewhere). glibc gives each thread
    that allocates at once its own arena, up to 8 per core; TensorFlow's thread pools then leave freed memory in
    many of them, which ``malloc_trim`` cannot merge. Two arenas took 0.07 GiB off ``localize``'s peak on 2 cores
    (docs/localization.md). Must run before the threads start, so the command line calls it first. True where
    glibc took the setting."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):  # not glibc
        return False


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
