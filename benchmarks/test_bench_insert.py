"""Per-call cost of ``insert`` and ``insert_batch`` beside baselines, per item.

Every benchmark is ``ROUNDS`` rounds (plus warm-up rounds) of one loop
compiled from the same source (see ``_bench.make_loop``); a round makes
``CALLS`` calls of ``insert``-like methods with one reused item, or
``BATCH_CALLS`` calls with one reused ``BATCH_LEN``-item list, and the
figures are the round times divided by the items of a round.  Baselines and
subjects of one table are measured next to each other (tests run in the
order of ``CASES``).  When the build has ``max_queued_batches``, the
``insert`` and ``insert_batch`` tables have a buffer with
``max_queued_batches=0`` (one sealed batch at a time) beside the default.
"""

from __future__ import annotations

import collections
import queue
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _bench import (
    BATCH_CALLS,
    BATCH_LEN,
    CALLS,
    COMPILED,
    QUEUE_SUBJECTS,
    ROUNDS,
    STYLES,
    SUBJECT,
    SUBJECT_LABEL,
    TIMEOUT,
    FlushCounter,
    Results,
    new_buffer,
    otel_batch_processor,
    queue_label,
    run_loop_rounds,
    shut,
)

from databuffer import telemetry
from databuffer._cli.bench import HandOff
from databuffer._support import PyBuffer

pytestmark = pytest.mark.timeout(TIMEOUT)

ITEM = ("tick", 1)  # one small object, reused: the figure is the call, not an allocation
PARTITIONS = (1, 4)
MAX_SIZE = 1000

# "databuffer-mqb0": max_queued_batches=0 beside the default ("databuffer"), when the build has the option.
INSERT_SUBJECTS = [
    "deque.append",
    "SimpleQueue.put",
    "otel.emit",
    "pure-core",
    *QUEUE_SUBJECTS,
    "telemetry",
]
CASES = [
    pytest.param(style, p, subject, id=f"{style}-p{p}-{subject}")
    for style in STYLES
    for p in PARTITIONS
    for subject in INSERT_SUBJECTS
    if not (subject == "pure-core" and not COMPILED)  # the subject itself is the pure core then
]


def insert_title(style: str, partitions: int) -> str:
    return f"insert, {partitions} partition(s), max_size={MAX_SIZE}, {STYLES[style]}"


def telemetry_title(style: str, partitions: int) -> str:
    return f"insert with one telemetry handler on insert/stop, {partitions} partition(s), {STYLES[style]}"


def cleared(container: Any) -> Callable[[], Any]:
    """A ``get_target`` that empties ``container`` before each round (outside the timing)."""

    def get_target() -> Any:
        container.clear()
        return container

    return get_target


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Buffers (or OTel processors) appended here are shut down at teardown."""
    made: list[Any] = []
    yield made
    for obj in made:
        shut(obj)


@pytest.fixture
def insert_handler() -> Iterator[list[int]]:
    """A telemetry handler on insert/stop that counts its calls; detached at teardown."""
    calls = [0]

    def handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        calls[0] += 1

    telemetry.attach("bench", ("data_buffer", "insert", "stop"), handler)
    yield calls
    telemetry.detach("bench")


@pytest.mark.parametrize(("style", "partitions", "subject"), CASES)
def test_insert(
    benchmark: Any,
    results: Results,
    closing: list[Any],
    request: pytest.FixtureRequest,
    style: str,
    partitions: int,
    subject: str,
) -> None:
    benchmark.group = insert_title(style, partitions)
    title = insert_title(style, partitions)
    if subject in ("deque.append", "SimpleQueue.put"):
        if subject == "deque.append":
            get_target, method = cleared(collections.deque()), "append"
        else:
            get_target, method = queue.SimpleQueue, "put"  # a fresh queue each round
        run_loop_rounds(benchmark, style=style, method=method, get_target=get_target, item=ITEM, calls=CALLS)
        results.add(benchmark, CALLS, (title, subject, "baseline"))
        return

    if subject == "otel.emit":
        otel, exporter = otel_batch_processor(batch_size=MAX_SIZE, queue_size=1 << 23)
        proc = otel.processor
        closing.append(proc)
        method = otel.emit.__name__  # "emit", or "on_end" on an SDK without BatchProcessor
        emitted = run_loop_rounds(
            benchmark, style=style, method=method, get_target=lambda: proc, item=otel.item, calls=CALLS
        )
        assert proc.force_flush()
        assert exporter.items == emitted, "the OTel queue dropped items: make it larger"
        results.add(benchmark, CALLS, (title, otel.label, "baseline"))
        return

    counter = FlushCounter()
    cls = PyBuffer if subject == "pure-core" else SUBJECT
    options = QUEUE_SUBJECTS["databuffer-mqb0"].options if subject == "databuffer-mqb0" else {}
    buf = new_buffer(cls, counter, partitions=partitions, max_size=MAX_SIZE, **options)
    closing.append(buf)
    handler_calls = request.getfixturevalue("insert_handler") if subject == "telemetry" else None
    inserted = run_loop_rounds(
        benchmark, style=style, method="insert", get_target=lambda: buf, item=ITEM, calls=CALLS
    )
    buf.sync_flush()
    assert counter.items == inserted
    assert sum(p["inserted"] for p in buf.info()) == inserted
    if subject == "pure-core":
        results.add(benchmark, CALLS, (title, "pure-Python core", "baseline"))
    elif subject == "databuffer-mqb0":
        results.add(benchmark, CALLS, (title, queue_label(subject), "subject"))
    elif subject == "databuffer":
        # The subject of the insert table, and the baseline of the telemetry table.
        results.add(
            benchmark,
            CALLS,
            (title, queue_label(subject), "subject"),
            (telemetry_title(style, partitions), f"{SUBJECT_LABEL}, no handler", "baseline"),
        )
    else:
        assert handler_calls is not None and handler_calls[0] == inserted
        results.add(
            benchmark, CALLS, (telemetry_title(style, partitions), f"{SUBJECT_LABEL} + handler", "subject")
        )


BATCH_CASES = [
    pytest.param(p, subject, id=f"p{p}-{subject}")
    for p in PARTITIONS
    for subject in ("list.extend", "pure-core", *QUEUE_SUBJECTS)
    if not (subject == "pure-core" and not COMPILED)
]


@pytest.mark.parametrize(("partitions", "subject"), BATCH_CASES)
def test_insert_batch(
    benchmark: Any, results: Results, closing: list[Any], partitions: int, subject: str
) -> None:
    title = (
        f"insert_batch of a {BATCH_LEN}-item list, {partitions} partition(s), max_size={MAX_SIZE}, "
        f"{BATCH_CALLS} calls per round, per item"
    )
    benchmark.group = title
    batch = [ITEM] * BATCH_LEN
    per_round = BATCH_CALLS * BATCH_LEN
    if subject == "list.extend":
        run_loop_rounds(
            benchmark, style="local", method="extend", get_target=cleared([]), item=batch, calls=BATCH_CALLS
        )
        results.add(benchmark, per_round, (title, "list.extend", "baseline"))
        return
    counter = FlushCounter()
    cls = PyBuffer if subject == "pure-core" else SUBJECT
    options = QUEUE_SUBJECTS[subject].options if subject in QUEUE_SUBJECTS else {}
    buf = new_buffer(cls, counter, partitions=partitions, max_size=MAX_SIZE, **options)
    closing.append(buf)
    calls = run_loop_rounds(
        benchmark, style="local", method="insert_batch", get_target=lambda: buf, item=batch, calls=BATCH_CALLS
    )
    buf.sync_flush()
    assert counter.items == calls * BATCH_LEN
    if subject == "pure-core":
        results.add(benchmark, per_round, (title, "pure-Python core", "baseline"))
    else:
        results.add(benchmark, per_round, (title, queue_label(subject), "subject"))


HANDOFF_TRIPS = 200  # round trips per round


HANDOFF_TITLE = (
    f"thread hand-off round trip, per item of a {MAX_SIZE}-item batch (a flush's least cost to a "
    "producer on a GIL build), beside deque.append"
)


@pytest.mark.parametrize("subject", ["deque.append", "hand-off"])
def test_hand_off(benchmark: Any, results: Results, subject: str) -> None:
    """How much of ``insert``'s amortized cost flushing must add under the GIL, at least.

    Each batch's flush runs on a flusher thread, which has to take the
    interpreter lock from the producer and hand it back: one round trip per
    ``MAX_SIZE`` items at the least.  Its cost divided by ``MAX_SIZE``, added to
    the ``insert`` call's cost, is a floor for the amortized figure.
    """
    benchmark.group = HANDOFF_TITLE
    if subject == "deque.append":
        run_loop_rounds(
            benchmark,
            style="local",
            method="append",
            get_target=cleared(collections.deque()),
            item=ITEM,
            calls=CALLS,
        )
        results.add(benchmark, CALLS, (HANDOFF_TITLE, "deque.append", "baseline"), kind="per-item")
        return
    hand_off = HandOff()
    try:
        run_loop_rounds(
            benchmark,
            style="local",
            method="trip",
            get_target=lambda: hand_off,
            item=None,
            calls=HANDOFF_TRIPS,
            rounds=max(10, ROUNDS // 20),
        )
    finally:
        hand_off.close()
    # Per item of a batch: one round trip per MAX_SIZE items.
    results.add(
        benchmark, HANDOFF_TRIPS * MAX_SIZE, (HANDOFF_TITLE, "1 hand-off round trip / batch", "subject")
    )
