"""End to end: ``E2E_ITEMS`` items through a 4-partition buffer until every one is flushed.

One round = build a fresh buffer (outside the timing), then, timed: insert
every item (``insert`` loop, or ``insert_batch`` of ``E2E_CHUNK``-item
chunks) and ``sync_flush()``; then, outside the timing, ``close()`` and
assert that ``handle_flush`` (which only counts) got exactly every item.

Baselines, same loop shape and item count:

- ``deque.append`` / ``deque.extend`` floor: the items stored in a deque
  and nothing else (no batching, no flushing, no threads);
- the OpenTelemetry SDK ``BatchProcessor`` (``insert`` variant only, it has
  no batch emit): ``emit`` every item, then ``force_flush()``, into a counting
  exporter, with ``max_export_batch_size`` = the buffer's ``max_size``;
- the pure-Python core (``insert_batch`` variant only; its per-item
  ``insert`` is measured in test_bench_insert.py).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest
from _bench import (
    COMPILED,
    E2E_CHUNK,
    E2E_ITEMS,
    E2E_MAX_SIZES,
    E2E_ROUNDS,
    SUBJECT,
    SUBJECT_LABEL,
    TIMEOUT,
    FlushCounter,
    Results,
    make_loop,
    median,
    new_buffer,
    otel_batch_processor,
    reps,
    shut,
)

from databuffer._support import PyBuffer

pytestmark = pytest.mark.timeout(TIMEOUT)

ITEM = ("tick", 1)
PARTITIONS = 4

CASES = [
    pytest.param(style, max_size, subject, id=f"{style}-max{max_size}-{subject}")
    for max_size in E2E_MAX_SIZES
    for style in ("insert", "insert_batch")
    for subject in (
        ["floor", "otel", "databuffer"] if style == "insert" else ["floor", "pure-core", "databuffer"]
    )
    if not (subject == "pure-core" and not COMPILED)
]


@pytest.mark.parametrize(("style", "max_size", "subject"), CASES)
def test_end_to_end(benchmark: Any, results: Results, style: str, max_size: int, subject: str) -> None:
    arg: Any
    if style == "insert":
        calls, arg, items = E2E_ITEMS, ITEM, E2E_ITEMS
        how = "insert loop (one call per item)"
    else:
        calls = E2E_ITEMS // E2E_CHUNK
        arg, items = [ITEM] * E2E_CHUNK, calls * E2E_CHUNK
        how = f"insert_batch of {E2E_CHUNK}-item chunks"
    title = (
        f"end to end: {items:,} items, {PARTITIONS} partitions, max_size={max_size}, {how}, until all flushed"
    )
    benchmark.group = title
    method = {"insert": "append", "insert_batch": "extend"}[style] if subject == "floor" else style
    if subject == "otel":
        method = "emit"
    loop = make_loop("local", method)
    # Per round: the object, its flush call (timed), its check (untimed).
    state: dict[str, Any] = {}
    flushes: list[int] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        finish: Callable[[], Any]
        if subject == "floor":
            obj: Any = collections.deque()
            finish = lambda: None  # noqa: E731
        elif subject == "otel":
            obj, state["exporter"] = otel_batch_processor(batch_size=max_size, queue_size=items + 1)
            finish = obj.force_flush
        else:
            state["counter"] = FlushCounter()
            cls = PyBuffer if subject == "pure-core" else SUBJECT
            obj = new_buffer(cls, state["counter"], partitions=PARTITIONS, max_size=max_size)
            finish = obj.sync_flush
        state["obj"] = obj
        return (getattr(obj, method), arg, reps(calls), finish), {}

    def run(fn: Any, item: Any, rng: Any, finish: Callable[[], Any]) -> None:
        loop(fn, item, rng)
        finish()

    def teardown(*args: Any) -> None:
        obj = state.pop("obj")
        if subject == "floor":
            assert len(obj) == items
        elif subject == "otel":
            obj.shutdown()
            exporter = state.pop("exporter")
            assert exporter.items == items, "the OTel processor dropped items"
            flushes.append(exporter.calls)
        else:
            obj.close()
            counter = state.pop("counter")
            assert counter.items == items
            assert sum(p["flushed"] for p in obj.info()) == items
            flushes.append(counter.calls)

    try:
        benchmark.pedantic(
            run, setup=setup, teardown=teardown, rounds=E2E_ROUNDS, warmup_rounds=0, iterations=1
        )
    finally:
        shut(state.pop("obj", None))

    label = {
        "floor": f"deque.{method} floor (no flushing)",
        "otel": "OTel BatchProcessor emit+force_flush",
        "pure-core": "pure-Python core",
        "databuffer": SUBJECT_LABEL,
    }[subject]
    extra: dict[str, Any] = {"items": items, "max_size": max_size, "variant": how}
    meta = getattr(benchmark, "stats", None)
    if meta is not None:
        st = meta.stats
        if flushes:
            per_round = median([float(f) for f in flushes])
            extra["flushes_per_round"] = per_round
            extra["flushes_per_s_min_time"] = per_round / st.min
            extra["flushes_per_s_median_time"] = per_round / st.median
    results.add(
        benchmark,
        items,
        (title, label, "subject" if subject == "databuffer" else "baseline"),
        kind="throughput",
        extra=extra,
    )
