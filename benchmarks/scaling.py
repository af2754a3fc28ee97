"""Producer-thread scaling, as ratios of medians over interleaved rounds.

    python benchmarks/scaling.py [--rounds 8] [--items 1000000] [--partitions 2]

The pytest suite's threads figure (``test_bench_threads.py``) runs each case's
rounds back to back; on a shared machine whose speed drifts over seconds,
that can put the 1-thread and the 2-thread rounds of one case in different
weather.  This script interleaves them: every round runs each variant with 1
thread and then with 2 (one producer per partition), and the figure is the
median 2-thread items/s over the median 1-thread items/s, next to the
spread of the per-round ratios.

Variants:

* ``floor``: each thread appends to a deque of its own (the parallelism the
  interpreter and the machine give at all);
* ``unflushed``: ``dispatch="thread"``, ``max_size`` = the items of a thread,
  so nothing is flushed until the final ``sync_flush``: the insert path;
* ``thread``: ``dispatch="thread"``, ``max_size=1000``;
* ``round_robin``: the default dispatch, ``max_size=1000``;
* ``bare-flusher``: like ``thread``, but each flusher thread runs a bare
  loop instead of the layer's: wait for a wake, take a batch, call
  ``handle_flush``, count it.  No ``FlushOpts`` (``opts`` is ``None``), no
  timeout, telemetry or error handling.  A diagnostic, built on private
  methods: how far scaling goes when a batch costs only the wake-up, the
  take and the call, i.e. what the layer's per-batch Python costs.

Every buffer run checks that its ``handle_flush`` got exactly every item.
Meant for the free-threaded build; with the GIL the ratios stay near 1.

Each variant also prints what bounds it on this machine's cores: the CPU
time of the whole process (producers and flusher threads) per item, with 1
producer and with N.  With N producers and their flushers sharing the
machine's CPUs, items/s can reach at most ``cores / cpu_per_item``; the
``ceiling`` column gives that as a ratio to the 1-producer median (the
scaling figure if every core were busy all the time), and ``cpu/item Nx``
how much more CPU an item costs with N producers than with 1 (contention:
shared counters, refcounts, cache lines, wake-ups).  On 2 cores, flushers
that cost a fraction ``f`` of the producers' CPU cap the figure at about
``2 / (1 + f)`` of a producer whose flusher runs on the other core.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import statistics
import sys
import threading
import time
from typing import Any

from databuffer import Buffer

VARIANTS = ("floor", "unflushed", "thread", "round_robin", "bare-flusher")


class _Count:
    """A ``handle_flush`` that counts items (flushers of several partitions call it)."""

    def __init__(self) -> None:
        self.items = 0
        self._lock = threading.Lock()

    def __call__(self, batch: list[Any], opts: Any) -> None:
        with self._lock:
            self.items += len(batch)


class _BareFlusher(Buffer):
    """``Buffer`` whose flusher threads skip the layer's per-batch work (diagnostic)."""

    def _flusher_main(self, part: Any, timed_out: Any) -> None:
        p = part.index
        take, finish, wait_wake, flush = self._take, self._finish, self._wait_wake, self._flush_fn
        while True:
            while (taken := take(p, part.flush_upto)) is not None:
                if part.waiters:
                    with part.room:
                        part.room.notify_all()
                flush(taken[0], None)
                finish(p, len(taken[0]), True)
                if self._sync_count:
                    with self._progress:
                        self._progress.notify_all()
            if self._stopping:
                return
            wait_wake(p)


def run(variant: str, threads: int, items: int, partitions: int) -> tuple[float, float]:
    """Items per second of ``threads`` producers inserting ``items`` each, and CPU seconds per item."""
    count = _Count()
    buf = None
    if variant != "floor":
        cls = _BareFlusher if variant == "bare-flusher" else Buffer
        buf = cls(
            handle_flush=count,
            partitions=partitions,
            max_size=items if variant == "unflushed" else 1000,
            dispatch="round_robin" if variant == "round_robin" else "thread",
            flush_interval=3600.0,
            insert_timeout=60.0,
        )
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def producer(index: int) -> None:
        try:
            # Made in this thread: on a free-threaded build, owned by it.
            fn = collections.deque().append if buf is None else buf.insert
            item = tuple(["tick", index])
            barrier.wait()
            for _ in itertools.repeat(None, items):
                fn(item)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    cpu_start = time.process_time()
    for w in workers:
        w.join()
    if buf is not None:
        buf.sync_flush()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    if buf is not None:
        buf.close()
        if count.items != threads * items:
            raise AssertionError(f"{variant}: {count.items} items flushed, {threads * items} inserted")
    if errors:
        raise errors[0]
    return threads * items / elapsed, cpu / (threads * items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    parser.add_argument("--items", type=int, default=1_000_000, help="items per thread (default 1,000,000)")
    parser.add_argument("--partitions", type=int, default=2, help="partitions = producer threads (default 2)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.items < 1 or args.partitions < 1:
        parser.error("--rounds, --items and --partitions must be >= 1")
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(
        f"Python {sys.version.split()[0]}, GIL {'enabled' if gil else 'disabled'}; "
        f"{args.rounds} rounds, {args.items:,} items per thread, 1 and {args.partitions} threads "
        f"on {args.partitions} partitions"
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rates: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    cpus: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):
        for variant in VARIANTS:
            for threads in (1, args.partitions):
                rate, cpu = run(variant, threads, args.items, args.partitions)
                rates[variant, threads].append(rate)
                cpus[variant, threads].append(cpu)
    n = args.partitions
    print(
        f"{'variant':<13}{'1 thread':>11}{f'{n} threads':>11}{'ratio':>7}{'ceiling':>9}"
        f"{'cpu ns/item':>14}{f'cpu {n}x':>8}   per-round ratios"
    )
    for variant in VARIANTS:
        one, many = statistics.median(rates[variant, 1]), statistics.median(rates[variant, n])
        cpu_one, cpu_many = statistics.median(cpus[variant, 1]), statistics.median(cpus[variant, n])
        ceiling = min(n, cores) / cpu_many / one
        ratios = sorted(b / a for a, b in zip(rates[variant, 1], rates[variant, n], strict=True))
        print(
            f"{variant:<13}{one / 1e6:>8.1f}M/s{many / 1e6:>8.1f}M/s{many / one:>6.2f}x{ceiling:>8.2f}x"
            f"{cpu_one * 1e9:>7.1f}{cpu_many * 1e9:>7.1f}{cpu_many / cpu_one:>7.2f}x   "
            + " ".join(f"{r:.2f}" for r in ratios)
        )
    print(
        f"ceiling: {min(n, cores)} cores / (CPU per item with {n} threads), over the 1-thread median, "
        "i.e. the ratio if every core were busy all the time;"
    )
    print(
        f"cpu ns/item: process CPU (producers and flushers) per item with 1 and {n} threads; "
        f"cpu {n}x: their ratio"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
