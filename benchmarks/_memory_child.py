"""Child process of test_bench_memory.py: the memory held by N buffered ``None``s.

Usage: ``python _memory_child.py SUBJECT MODE N``, SUBJECT one of
``compiled``, ``pure``, ``list-mul``, ``list-append``; MODE ``rss`` or
``tracemalloc``.  Prints one JSON object: ``bytes`` (after - before).

Each figure is taken in a fresh process so that memory freed by earlier
work cannot be reused and hide the growth.  Everything the measurement
needs (imports, classes, the handle_flush function) exists before the first
reading; the buffer itself is constructed after it, because the compiled
core allocates its ring at construction.  RSS is read without tracemalloc
running (its own bookkeeping would count), each reading right after glibc's
``malloc_trim(0)`` when available.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak RSS, which only grows here
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``: hand free heap pages back to the OS (no-op elsewhere).

    Called before both readings, so that memory freed earlier (imports)
    cannot be reused unseen and memory freed transiently is not counted.
    """
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def main() -> None:
    subject, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import databuffer
    from databuffer._support import PyBuffer

    if subject == "compiled" and not databuffer.USING_EXTENSION:
        print(json.dumps({"skip": "compiled core unavailable"}))
        return
    cls: Any = {"compiled": databuffer.Buffer, "pure": PyBuffer}.get(subject)
    flushed = [0]

    def count(batch: list[object], opts: object) -> None:
        flushed[0] += len(batch)

    reps = itertools.repeat
    if mode == "tracemalloc":
        tracemalloc.start()

        def measure() -> int:
            return tracemalloc.get_traced_memory()[0]

    else:
        trim = _malloc_trim()

        def measure() -> int:
            trim()
            return rss_bytes()

    gc.collect()
    before = measure()

    held: Any
    if cls is not None:
        # max_size above n: nothing is flushed by size; a large interval: nothing by time.
        buf = cls(handle_flush=count, partitions=1, max_size=n + 1, flush_interval=3600.0, flush_jitter=0.0)
        ins = buf.insert
        for _ in reps(None, n):
            ins(None)
        held = buf
    elif subject == "list-mul":
        held = [None] * n
    elif subject == "list-append":
        held = []
        app = held.append
        for _ in reps(None, n):
            app(None)
    else:
        raise SystemExit(f"unknown subject {subject!r}")
    gc.collect()
    after = measure()

    out = {"bytes": after - before, "items": n}
    if cls is not None:
        out["size"] = buf.size()
        buf.close()
        out["flushed"] = flushed[0]
    else:
        out["size"] = len(held)  # type: ignore[arg-type]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
