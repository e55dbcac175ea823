"""Give freed image memory back to the system in a long-running server.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB), so after
the first decodes Pillow's 16 MiB blocks come from the heap, and a burst of large uploads leaves
gigabytes resident after the images are gone (measured: 2.9 GiB of 8 GiB kept). A fixed threshold
keeps every block of 1 MiB or more in its own mapping, returned to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter; setting it also stops the dynamic adjustment
MMAP_THRESHOLD = 1 << 20


def return_large_blocks() -> bool:
    """Set glibc's mmap threshold to 1 MiB for this process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not done:
        log.warning("iwan serve: could not set malloc's mmap threshold; freed image memory may stay resident")
    return done
