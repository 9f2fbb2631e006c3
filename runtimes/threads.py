"""How many threads the CPU kernels use: TVM's thread pool, set before each run.

TVM's pool belongs to the thread that calls into it (each Python thread gets its own, made on
its first parallel kernel) and is shared by every module run from that thread. Left alone it
takes TVM_NUM_THREADS, else half the hardware threads (it assumes two per core), which on a
machine with one thread per core leaves half the cores idle. Setting TVM_NUM_THREADS from a
library would change the whole process for its host program, so instead each run sets its
thread's pool ("runtime.config_threadpool") to its module's count when that differs from the
count last set there: two modules with different counts each run with their own (switching
costs one reconfiguration, tens of microseconds). The default is one thread per core this
process may run on (its affinity mask), or TVM_NUM_THREADS where the user set it.

The workers are pinned one per core of the mask (as TVM's own default pins them, but within
the mask). A pool is sized when made: one that TVM code run outside sbc made first, on the
same thread, keeps its size as a ceiling.
"""

from __future__ import annotations

import functools
import os
import threading

from sbc.errors import InputError

_ONE_CORE_PER_THREAD = -2  # TVM's AffinityMode kSpecifyOneCorePerThread: workers on the cpus given
_current = threading.local()  # .count: what this thread's pool was last set to


@functools.cache
def cores() -> list[int]:
    """The cpus this process may run on (its affinity mask; all of them where there is none),
    read once: TVM's pool, once made, narrows the calling thread's own mask."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def check_num_threads(num_threads, what: str = "num_threads") -> int | None:
    """num_threads as given to load/compile/--threads (`what` names it in errors): None (the
    default) or 1..cores. More threads than cores only contend for them, and TVM's pool has
    one worker per core."""
    if num_threads is None:
        return None
    available = len(cores())
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise InputError(f"{what} must be an integer from 1 to {available} (or None: one "
                         f"per core), got {num_threads!r}")
    if not 1 <= num_threads <= available:
        raise InputError(f"{what} must be from 1 to {available} (the cores this process "
                         f"may run on), got {num_threads}")
    return num_threads


def default_threads() -> int:
    """One per core in the affinity mask, or TVM_NUM_THREADS (within 1..cores) if set."""
    available = len(cores())
    try:
        preset = int(os.environ["TVM_NUM_THREADS"])
    except (KeyError, ValueError):
        return available
    return min(max(preset, 1), available)


def use_threads(num_threads: int | None) -> None:
    """Set the calling thread's TVM pool to `num_threads` (None: the default) unless it is
    already. The cpus list sets TVM's process-wide maximum (a pool made afterwards gets one
    worker per core); the count then says how many of them this thread's kernels use."""
    count = num_threads or default_threads()
    if getattr(_current, "count", None) == count:
        return
    import tvm
    configure = tvm.get_global_func("runtime.config_threadpool")
    configure(_ONE_CORE_PER_THREAD, count, [str(c) for c in cores()])
    _current.count = count
