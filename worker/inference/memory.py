"""How the process's C allocator treats the memory registrations free.

glibc's malloc hands large freed blocks back to the kernel at once. The next tensor of that
size then takes a page fault on every 4 KiB page as it is first written, and a whole-brain
registration allocates and frees gigabytes this way: its fields on a 1-mm grid are 80 MB
each. On the 2-core CPU, a 1-mm OASIS pair with ``brain-3d``'s refinement on the scan's own
grid took 7.9–10.1 s a registration as glibc ships, and 7.1–7.5 s with the settings below
(four in a row each; docs/method.md, "Cost of one registration"), most of it in that step
(2.3–4.6 s against 1.8–2.3 s).

The setting is the process's, not a library's: only the programs that own their process
call ``keep_freed_memory`` (the ``riir`` command line and the Celery worker's pool
processes), never ``riir.register`` inside someone else's program. Its price is that the
process keeps its peak memory between registrations, for the next one to reuse. A host that
would rather have it back sets ``RIIR_KEEP_FREED_MEMORY=0`` (read here, where it applies).
Nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt(3) parameters and the values set. Blocks up to 32 MiB (glibc's upper limit for
# the threshold) come from the heap rather than from a mapping of their own; the heap's top
# is returned to the kernel only beyond 2 GiB free; and it grows 1 GiB at a time, so its
# growth is rare.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = (
    (M_MMAP_THRESHOLD, 32 * 2**20),
    (M_TRIM_THRESHOLD, 2**31 - 1),
    (M_TOP_PAD, 2**30),
)


ENVIRONMENT = "RIIR_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (``SETTINGS``), unless the
    environment says not to (``RIIR_KEEP_FREED_MEMORY`` 0, false or no). True where every
    setting took; False where it was declined or the C library is not glibc (musl, macOS):
    then nothing changes."""
    if os.environ.get(ENVIRONMENT, "1").strip().lower() in ("0", "false", "no"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # A list, not a generator: every setting is made even when one is refused.
    return all([mallopt(parameter, value) == 1 for parameter, value in SETTINGS])
