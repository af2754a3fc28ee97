"""Producer threads: total items per second with 1, 2 and 4 threads calling ``insert``.

One round: build the buffer and start the threads (untimed); each thread
makes its own item and bound method, then waits on a start barrier.  Timed:
from the main thread passing the barrier until every thread has inserted
its ``THREAD_ITEMS`` items and ``sync_flush()`` has returned.  Then,
untimed, ``close()`` and assert that ``handle_flush`` (which only counts)
got exactly every item.

Variants: 1, 2 and 4 threads on 4 partitions, and 1 and 2 threads on 2
partitions (the free-threaded target is 2 threads >= 1.6x 1 thread), each
with the default ``dispatch="round_robin"`` (every thread writes to every
partition) and with ``dispatch="thread"`` (each thread has a home
partition); and once more with ``dispatch="thread"`` and a ``max_size`` that
holds all of a thread's items, so that nothing is flushed until the final
``sync_flush``: how far the insert path alone scales.  The
floor is the same threads each appending to a deque of its own, same loop:
how much parallelism the interpreter and the machine give at all (on a GIL
build, none).

On a free-threaded interpreter (see docs/free-threaded.md) the same file runs as is; the
summary says whether the GIL was enabled.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import pytest
from _bench import (
    SUBJECT,
    SUBJECT_LABEL,
    THREAD_ITEMS,
    THREAD_MAX_SIZE,
    THREAD_ROUNDS,
    TIMEOUT,
    FlushCounter,
    Results,
    make_loop,
    new_buffer,
    reps,
)

pytestmark = pytest.mark.timeout(TIMEOUT)

# impl -> (dispatch, max_size); "unflushed": no batch is due until the final
# sync_flush (a thread's items all fit in its home partition), which shows
# how the insert path alone scales, without the flushers' share of the CPU.
IMPLS: dict[str, tuple[str, int] | None] = {
    "floor": None,
    "databuffer": ("round_robin", THREAD_MAX_SIZE),
    "databuffer-thread": ("thread", THREAD_MAX_SIZE),
    "databuffer-thread-unflushed": ("thread", THREAD_ITEMS),
}
CASES = [
    pytest.param(p, t, impl, id=f"p{p}-t{t}-{impl}")
    for p, counts in ((4, (1, 2, 4)), (2, (1, 2)))
    for t in counts
    for impl in IMPLS
]


@pytest.mark.parametrize(("partitions", "threads", "impl"), CASES)
def test_threads(benchmark: Any, results: Results, partitions: int, threads: int, impl: str) -> None:
    title = (
        f"threads: {partitions} partitions, max_size={THREAD_MAX_SIZE}, each thread inserts "
        f"{THREAD_ITEMS:,} items with insert (bound method in a local)"
    )
    benchmark.group = title
    total = threads * THREAD_ITEMS
    state: dict[str, Any] = {}
    method = "append" if impl == "floor" else "insert"
    dispatch, max_size = IMPLS[impl] or ("", 0)

    def producer(index: int, barrier: threading.Barrier, errors: list[BaseException]) -> None:
        try:
            # Made in this thread, so that on a free-threaded build the item,
            # the bound method and the floor's deque are owned by it.
            item = tuple(["tick", index])
            target = collections.deque() if impl == "floor" else state["buf"]
            if impl == "floor":
                state["deques"].append(target)
            fn = getattr(target, method)
            loop = make_loop("local", method)
            barrier.wait()
            loop(fn, item, reps(THREAD_ITEMS))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            barrier.abort()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        if impl != "floor":
            state["counter"] = FlushCounter()
            state["buf"] = new_buffer(
                SUBJECT,
                state["counter"],
                partitions=partitions,
                max_size=max_size,
                insert_timeout=60.0,
                dispatch=dispatch,
            )
        state["deques"] = []
        barrier = threading.Barrier(threads + 1, timeout=120)
        errors: list[BaseException] = []
        workers = [
            threading.Thread(
                target=producer, args=(i, barrier, errors), daemon=True, name=f"bench-producer-{i}"
            )
            for i in range(threads)
        ]
        for w in workers:
            w.start()
        state["errors"] = errors
        return (barrier, workers), {}

    def run(barrier: threading.Barrier, workers: list[threading.Thread]) -> None:
        barrier.wait()
        for w in workers:
            w.join()
        if impl != "floor":
            state["buf"].sync_flush()

    def teardown(*args: Any) -> None:
        assert not state["errors"], state["errors"]
        if impl == "floor":
            assert sum(len(d) for d in state.pop("deques")) == total
            return
        buf = state.pop("buf")
        buf.close()
        counter = state.pop("counter")
        assert counter.items == total
        assert sum(p["flushed"] for p in buf.info()) == total

    try:
        benchmark.pedantic(
            run, setup=setup, teardown=teardown, rounds=THREAD_ROUNDS, warmup_rounds=0, iterations=1
        )
    finally:
        buf = state.pop("buf", None)
        if buf is not None:
            buf.close(timeout=60)
    if impl == "floor":
        label = "deque.append floor (own deque per thread)"
    else:
        label = f'{SUBJECT_LABEL}, dispatch="{dispatch}"'
        if max_size != THREAD_MAX_SIZE:
            label += ", no flush until the end"

    results.add(
        benchmark,
        total,
        (title, label, "baseline" if impl == "floor" else "subject"),
        kind="threads",
        extra={"impl": impl, "threads": threads, "partitions": partitions, "items": total},
    )
