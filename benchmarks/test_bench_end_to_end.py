"""End to end: ``E2E_ITEMS`` items through a buffer until every one is flushed.

One round = build a fresh subject (outside the timing), then, timed: insert
every item (``insert`` loop, or ``insert_batch`` of ``E2E_CHUNK``-item
chunks) and wait until all were handed over; then, outside the timing,
close what is open and assert that ``handle_flush`` (which only counts) got
exactly every item.

Two sets of cases:

- 4 partitions, ``max_size`` 1000 and 10000, timed until ``sync_flush()``
  returned.  Baselines, same loop shape and item count: the
  ``deque.append`` / ``deque.extend`` floor (the items stored in a deque and
  nothing else: no batching, no flushing, no threads); the OpenTelemetry
  SDK's batch processor (``insert`` variant only, it has no batch emit):
  ``emit`` every item, then ``force_flush()``, into a counting exporter,
  with ``max_export_batch_size`` = the buffer's ``max_size``; the
  pure-Python core (``insert_batch`` variant only; its per-item ``insert``
  is measured in test_bench_insert.py).
- the pipeline: one producer, 1 partition, ``max_size=1000``, timed until
  ``close()`` returned, for ``max_queued_batches=0`` and the default (the
  default alone when the build has no such option).  Baselines: the deque
  floor; ``SimpleQueueBatcher`` (``databuffer._cli.bench``: a
  ``queue.SimpleQueue``, ``put`` per item, and one consumer thread that
  groups the items into lists of 1000 and calls a counting no-op per
  list), until its ``close()`` returned (every item handed over); the OTel
  processor (``insert`` variant only) until ``shutdown()`` returned.
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
    QUEUE_SUBJECTS,
    SUBJECT,
    SUBJECT_LABEL,
    TIMEOUT,
    CountingExporter,
    FlushCounter,
    Results,
    make_loop,
    median,
    new_buffer,
    otel_batch_processor,
    queue_label,
    reps,
    shut,
)

from databuffer._cli.bench import SimpleQueueBatcher
from databuffer._support import PyBuffer

pytestmark = pytest.mark.timeout(TIMEOUT)

ITEM = ("tick", 1)
PARTITIONS = 4
PIPELINE_MAX_SIZE = 1000

# (style, partitions, max_size, until, subject); until: "sync_flush" or "close".
CASES = [
    pytest.param(style, PARTITIONS, max_size, "sync_flush", subject, id=f"{style}-max{max_size}-{subject}")
    for max_size in E2E_MAX_SIZES
    for style in ("insert", "insert_batch")
    for subject in (
        ["floor", "otel", "databuffer"] if style == "insert" else ["floor", "pure-core", "databuffer"]
    )
    if not (subject == "pure-core" and not COMPILED)
] + [
    pytest.param(style, 1, PIPELINE_MAX_SIZE, "close", subject, id=f"pipeline-{style}-{subject}")
    for style in ("insert", "insert_batch")
    for subject in (
        ["floor", "simplequeue", "otel", *QUEUE_SUBJECTS] if style == "insert" else ["floor", *QUEUE_SUBJECTS]
    )
]


def e2e_title(style: str, partitions: int, max_size: int, until: str, items: int) -> str:
    how = (
        "insert loop (one call per item)" if style == "insert" else f"insert_batch of {E2E_CHUNK}-item chunks"
    )
    if until == "close":
        return (
            f"end to end, pipeline: {items:,} items, one producer, {partitions} partition, "
            f"max_size={max_size}, {how}, until close() returned"
        )
    return (
        f"end to end: {items:,} items, {partitions} partitions, max_size={max_size}, {how}, until all flushed"
    )


@pytest.mark.parametrize(("style", "partitions", "max_size", "until", "subject"), CASES)
def test_end_to_end(
    benchmark: Any, results: Results, style: str, partitions: int, max_size: int, until: str, subject: str
) -> None:
    arg: Any
    if style == "insert":
        calls, arg, items = E2E_ITEMS, ITEM, E2E_ITEMS
    else:
        calls = E2E_ITEMS // E2E_CHUNK
        arg, items = [ITEM] * E2E_CHUNK, calls * E2E_CHUNK
    title = e2e_title(style, partitions, max_size, until, items)
    benchmark.group = title
    method = {"insert": "append", "insert_batch": "extend"}[style] if subject == "floor" else style
    if subject == "simplequeue":
        method = "put"
    # Per round: the object, its flush call (timed), its check (untimed).
    state: dict[str, Any] = {}
    flushes: list[int] = []
    otel_label = ""

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        nonlocal otel_label
        finish: Callable[[], Any]
        item = arg
        if subject == "floor":
            obj: Any = collections.deque()
            fn = getattr(obj, method)
            finish = lambda: None  # noqa: E731
        elif subject == "simplequeue":
            counter = state["counter"] = FlushCounter()
            obj = SimpleQueueBatcher(max_size, lambda batch: counter(batch, None))
            fn, finish = obj.put, obj.close
        elif subject == "otel":
            otel, state["exporter"] = otel_batch_processor(batch_size=max_size, queue_size=items + 1)
            otel_label = otel.label
            obj, fn, item = otel.processor, otel.emit, otel.item
            finish = obj.shutdown if until == "close" else obj.force_flush
        else:
            state["counter"] = FlushCounter()
            cls = PyBuffer if subject == "pure-core" else SUBJECT
            options = QUEUE_SUBJECTS[subject].options if subject in QUEUE_SUBJECTS else {}
            obj = new_buffer(cls, state["counter"], partitions=partitions, max_size=max_size, **options)
            fn = getattr(obj, method)
            finish = obj.close if until == "close" else obj.sync_flush
        state["obj"] = obj
        return (fn, item, reps(calls), finish), {}

    loop = make_loop("local", method)

    def run(fn: Any, item: Any, rng: Any, finish: Callable[[], Any]) -> None:
        loop(fn, item, rng)
        finish()

    def teardown(*args: Any) -> None:
        obj = state.pop("obj")
        if subject == "floor":
            assert len(obj) == items
        elif subject == "otel":
            obj.shutdown()
            exporter: CountingExporter = state.pop("exporter")
            assert exporter.items == items, "the OTel processor dropped items"
            flushes.append(exporter.calls)
        elif subject == "simplequeue":
            obj.close()
            counter = state.pop("counter")
            assert counter.items == items, "the SimpleQueue consumer lost items"
            flushes.append(counter.calls)
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
        "simplequeue": f"SimpleQueue + consumer thread (batches of {max_size})",
        "otel": f"{otel_label} + {'shutdown' if until == 'close' else 'force_flush'}()",
        "pure-core": "pure-Python core",
    }.get(subject) or (queue_label(subject) if until == "close" else SUBJECT_LABEL)
    extra: dict[str, Any] = {"items": items, "max_size": max_size, "partitions": partitions, "until": until}
    meta = getattr(benchmark, "stats", None)
    if meta is not None:
        st = meta.stats
        if flushes:
            per_round = median([float(f) for f in flushes])
            extra["flushes_per_round"] = per_round
            extra["flushes_per_s_min_time"] = per_round / st.min
            extra["flushes_per_s_median_time"] = per_round / st.median
    subject_role = subject == "databuffer" or subject in QUEUE_SUBJECTS
    results.add(
        benchmark,
        items,
        (title, label, "subject" if subject_role else "baseline"),
        kind="throughput",
        extra=extra,
    )
