"""glibc malloc settings that let freed tensor memory be reused instead of handed back to the kernel.

SAM allocates and frees tens of megabytes per click (the decoder) and per embedding. By default glibc
serves each large block with fresh mmap pages and returns it on free, so every request pays for
faulting those pages in again: on a 2-core VM about a third of a click's time and a fifth of an
embedding's. With one arena and no mmap, freed blocks stay in the heap and the next request reuses
them. Free memory beyond `keep_mb` at the top of the heap still goes back to the kernel, so the largest
temporary blocks (a ViT-B embedding's global attention) are returned while the smaller ones are reused.
"""

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def reuse_freed_memory(keep_mb: int = 256) -> bool:
    """Tune this process's glibc malloc (call early, before threads start); False where it cannot.

    keep_mb: free memory at the top of the heap beyond this goes back to the kernel.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, keep_mb << 20))
    return all(mallopt(option, value) == 1 for option, value in settings)


def release_free_memory() -> bool:
    """Hand the free pages anywhere in the heap back to the kernel (glibc's malloc_trim); False where it cannot.

    With mmap off, long work that keeps small objects alive between large temporary blocks (segment
    everything's candidates between its decoder batches) leaves free holes below the top of the heap that
    no trim threshold reaches: resident memory crept up by ~1 MB per point. Called between batches, it
    costs a few milliseconds and keeps resident memory at what is live.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
