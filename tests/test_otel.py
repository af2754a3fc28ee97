"""The OpenTelemetry bridge, databuffer.contrib.otel, against the SDK's in-memory reader.

Every test builds its own MeterProvider (never the global one, except in a
subprocess) and names its buffers uniquely: other tests' buffers may still be
running, and their events reach every handler.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from conftest import run_python, wait_for
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    Sum,
)

import databuffer
from databuffer import FlushTimeout, _core_py, telemetry
from databuffer._front import engine_of
from databuffer.contrib import otel

INSERTED = "databuffer.items.inserted"
FLUSHED = "databuffer.items.flushed"
FAILED = "databuffer.items.failed"
DROPPED = "databuffer.items.dropped"
RETRIES = "databuffer.flush.retries"
BATCH_SIZE = "databuffer.batch.size"
DURATION = "databuffer.flush.duration"
BUFFERED = "databuffer.items.buffered"
SYNC_METRICS = (INSERTED, FLUSHED, FAILED, DROPPED, RETRIES, BATCH_SIZE, DURATION)

Attrs = frozenset[tuple[str, object]]


def key(buffer: str, partition: int, trigger: str | None = None, error: str | None = None) -> Attrs:
    """The attributes of a data point, as a hashable set."""
    attributes: dict[str, object] = {"databuffer.buffer": buffer, "databuffer.partition": partition}
    if trigger is not None:
        attributes["databuffer.trigger"] = trigger
    if error is not None:
        attributes["error.type"] = error
    return frozenset(attributes.items())


class Collected:
    """One collection of the reader: the metrics, and their points per attribute set."""

    def __init__(self, reader: InMemoryMetricReader, buffers: tuple[str, ...]) -> None:
        self.metrics: dict[str, Metric] = {}
        data = reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                assert scope_metrics.scope.name == "databuffer"
                assert scope_metrics.scope.version == databuffer.__version__
                for metric in scope_metrics.metrics:
                    assert metric.name not in self.metrics
                    self.metrics[metric.name] = metric
        self.buffers = buffers

    def points(self, name: str) -> dict[Attrs, Any]:
        """The data points of a metric for this test's buffers, by attributes."""
        metric = self.metrics.get(name)
        if metric is None:
            return {}
        out: dict[Attrs, Any] = {}
        for point in metric.data.data_points:
            attributes = dict(point.attributes or {})
            if attributes.get("databuffer.buffer") not in self.buffers:
                continue
            attrs = frozenset(attributes.items())
            assert attrs not in out
            out[attrs] = point
        return out

    def values(self, name: str) -> dict[Attrs, int | float]:
        """A counter's or gauge's values, by attributes."""
        return {attrs: point.value for attrs, point in self.points(name).items()}

    def histogram(self, name: str) -> dict[Attrs, tuple[int, float]]:
        """A histogram's (count, sum), by attributes."""
        out = {}
        for attrs, point in self.points(name).items():
            assert isinstance(point, HistogramDataPoint)
            out[attrs] = (point.count, point.sum)
        return out

    def sync_state(self) -> dict[str, dict[Attrs, Any]]:
        """Everything the counters and histograms hold, to compare over time."""
        return {
            name: {
                attrs: (p.count, p.sum, p.min, p.max) if isinstance(p, HistogramDataPoint) else p.value
                for attrs, p in self.points(name).items()
            }
            for name in SYNC_METRICS
        }


class Metrics:
    """A MeterProvider of its own with an in-memory reader."""

    def __init__(self, *buffers: str) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.buffers = buffers

    def collect(self) -> Collected:
        return Collected(self.reader, self.buffers)


class FlushEvents:
    """A telemetry handler recording the flush stop/exception events of some buffers."""

    def __init__(self, *buffers: str) -> None:
        self.buffers = buffers
        self.lock = threading.Lock()
        self.seen: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = []
        telemetry.attach_many(
            f"test-otel-flush-events-{id(self)}",
            [telemetry.FLUSH_STOP, telemetry.FLUSH_EXCEPTION],
            self,
        )

    def __call__(
        self, event: tuple[str, ...], measurements: Mapping[str, Any], metadata: Mapping[str, Any], _: Any
    ) -> None:
        if metadata["buffer"] in self.buffers:
            with self.lock:
                self.seen.append((event, dict(measurements), dict(metadata)))

    def durations(self) -> dict[Attrs, list[float]]:
        """Durations in seconds, in the order they were emitted, per attribute set."""
        out: dict[Attrs, list[float]] = {}
        with self.lock:
            for event, measurements, md in self.seen:
                error = type(md["reason"]).__qualname__ if event == telemetry.FLUSH_EXCEPTION else None
                attrs = key(md["buffer"], md["partition"], md["trigger"], error)
                out.setdefault(attrs, []).append(measurements["duration"] / 1_000_000_000)
        return out


def expected_durations(events: FlushEvents) -> dict[Attrs, tuple[int, float, float, float]]:
    """(count, sum, min, max) of each duration histogram point, as the SDK adds them up."""
    out = {}
    for attrs, seconds in events.durations().items():
        total = 0.0
        for value in seconds:  # in the same order as the SDK, which adds them one by one
            total += value
        out[attrs] = (len(seconds), total, min(seconds), max(seconds))
    return out


def durations_of(collected: Collected) -> dict[Attrs, tuple[int, float, float, float]]:
    return {attrs: (p.count, p.sum, p.min, p.max) for attrs, p in collected.points(DURATION).items()}


@pytest.fixture
def instrument() -> Iterator[Any]:
    """otel.instrument, uninstrumenting at teardown; checks that the handlers were never detached."""
    made: list[otel.Instrumentation] = []

    def make(*args: Any, **kwargs: Any) -> otel.Instrumentation:
        inst = otel.instrument(*args, **kwargs)
        made.append(inst)
        return inst

    yield make
    attached = {handler["id"] for handler in telemetry.list_handlers()}
    still_active = [inst for inst in made if inst.active]
    for inst in made:
        inst.uninstrument()
    # A handler that raised would have been detached (and logged) by telemetry.
    assert all(inst.handler_id in attached for inst in still_active)


def otel_handlers(inst: otel.Instrumentation) -> list[tuple[str, ...]]:
    return sorted(h["event"] for h in telemetry.list_handlers() if h["id"] == inst.handler_id)


# -- the metrics ---------------------------------------------------------------


def test_flush_and_insert_metrics(make_buffer, instrument, core_name):
    name = f"otel-flush-{core_name}"
    metrics = Metrics(name)
    events = FlushEvents(name)
    inst = instrument(metrics.provider)
    assert otel_handlers(inst) == sorted(
        [
            telemetry.INSERT_STOP,
            telemetry.INSERT_DROP,
            telemetry.FLUSH_STOP,
            telemetry.FLUSH_EXCEPTION,
            telemetry.FLUSH_RETRY,
        ]
    )
    flushed: list[list[int]] = []
    buf = make_buffer(
        handle_flush=lambda batch, opts: flushed.append(list(batch)),
        name=name,
        partitions=2,
        max_size=3,
        flush_interval=3600,
        flush_jitter=0,
    )
    buf.insert_batch([1, 2, 3])  # partition 0: a batch of 3 by size
    buf.insert(4)  # partition 1
    buf.insert_batch([5, 6, 7, 8])  # partition 0: a batch of 3 by size, 8 stays
    buf.sync_flush()  # [8] and [4], manual
    assert sorted(flushed) == [[1, 2, 3], [4], [5, 6, 7], [8]]

    got = metrics.collect()
    assert got.values(INSERTED) == {key(name, 0): 7, key(name, 1): 1}
    assert got.values(FLUSHED) == {
        key(name, 0, "size"): 6,
        key(name, 0, "manual"): 1,
        key(name, 1, "manual"): 1,
    }
    assert got.histogram(BATCH_SIZE) == {
        key(name, 0, "size"): (2, 6),
        key(name, 0, "manual"): (1, 1),
        key(name, 1, "manual"): (1, 1),
    }
    assert durations_of(got) == expected_durations(events)
    assert {attrs: count for attrs, (count, *_) in durations_of(got).items()} == {
        key(name, 0, "size"): 2,
        key(name, 0, "manual"): 1,
        key(name, 1, "manual"): 1,
    }
    assert got.points(FAILED) == {}
    assert got.points(RETRIES) == {}
    assert got.values(BUFFERED) == {key(name, 0): 0, key(name, 1): 0}

    # The close flush, with the trigger "close".
    buf.insert_batch([9, 10])  # partition 1 (a round-robin step per call)
    buf.close()
    got = metrics.collect()
    assert got.values(INSERTED) == {key(name, 0): 7, key(name, 1): 3}
    assert got.values(FLUSHED)[key(name, 1, "close")] == 2
    assert got.histogram(BATCH_SIZE)[key(name, 1, "close")] == (1, 2)
    assert durations_of(got) == expected_durations(events)
    assert got.points(BUFFERED) == {}  # closed buffers are not observed


def test_instruments_units_and_scope(make_buffer, instrument, core_name):
    name = f"otel-units-{core_name}"
    metrics = Metrics(name)
    instrument(metrics.provider)
    calls = 0

    def handle_flush(batch, opts):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first attempt fails")

    buf = make_buffer(handle_flush=handle_flush, name=name, max_retries=1, retry_backoff=0)
    buf.insert(1)
    buf.sync_flush()
    buf.insert(2)  # stays buffered, for the gauge
    with pytest.raises(ExceptionGroup):
        _fail_one(make_buffer, name)

    got = metrics.collect()
    kinds = {
        INSERTED: (Sum, "{item}"),
        FLUSHED: (Sum, "{item}"),
        FAILED: (Sum, "{item}"),
        RETRIES: (Sum, "{retry}"),
        BATCH_SIZE: (Histogram, "{item}"),
        DURATION: (Histogram, "s"),
        BUFFERED: (Gauge, "{item}"),
    }
    assert {m: (type(got.metrics[m].data), got.metrics[m].unit) for m in kinds} == kinds
    for m in (INSERTED, FLUSHED, FAILED, RETRIES):
        assert got.metrics[m].data.is_monotonic
        assert got.metrics[m].description
    # Seconds: buckets fit for seconds, not the SDK's default (milliseconds).
    bounds = next(iter(got.points(DURATION).values())).explicit_bounds
    assert bounds[0] == 0.005 and 1.0 in bounds and 60.0 in bounds


def _fail_one(make_buffer, name: str) -> None:
    """A buffer named ``name`` whose one flush fails; raises sync_flush's ExceptionGroup."""
    buf = make_buffer(handle_flush=lambda b, o: 1 / 0, handle_flush_error=lambda b, o, e: None, name=name)
    buf.insert(3)
    buf.sync_flush()


def test_failures_after_retries(make_buffer, instrument, core_name):
    name = f"otel-fail-{core_name}"
    metrics = Metrics(name)
    events = FlushEvents(name)
    instrument(metrics.provider)
    attempts: list[int] = []
    reported: list[tuple[list[int], BaseException]] = []

    def handle_flush(batch, opts):
        attempts.append(opts.attempt)
        raise ValueError("no")

    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=lambda batch, opts, error: reported.append((batch, error)),
        name=name,
        max_size=100,
        flush_interval=3600,
        max_retries=2,
        retry_backoff=0,
    )
    buf.insert_batch([1, 2, 3, 4])
    with pytest.raises(ExceptionGroup):
        buf.sync_flush()
    assert attempts == [1, 2, 3]
    assert [(batch, type(error)) for batch, error in reported] == [([1, 2, 3, 4], ValueError)]

    got = metrics.collect()
    failed = key(name, 0, "manual", "ValueError")
    assert got.values(RETRIES) == {failed: 2}
    assert got.values(FAILED) == {failed: 4}
    assert got.histogram(BATCH_SIZE) == {failed: (1, 4)}
    assert durations_of(got) == expected_durations(events)
    assert list(durations_of(got)) == [failed]
    assert got.points(FLUSHED) == {}
    assert got.values(INSERTED) == {key(name, 0): 4}


def test_retry_then_success(make_buffer, instrument, core_name):
    name = f"otel-retry-{core_name}"
    metrics = Metrics(name)
    events = FlushEvents(name)
    instrument(metrics.provider)

    def handle_flush(batch, opts):
        if opts.attempt == 1:
            raise KeyError("first attempt")
        return len(batch)

    buf = make_buffer(
        handle_flush=handle_flush,
        name=name,
        max_size=100,
        flush_interval=3600,
        max_retries=3,
        retry_backoff=0,
    )
    buf.insert_batch(range(5))
    assert buf.sync_flush() == [5]

    got = metrics.collect()
    assert got.values(RETRIES) == {key(name, 0, "manual", "KeyError"): 1}
    assert got.values(FLUSHED) == {key(name, 0, "manual"): 5}
    assert got.histogram(BATCH_SIZE) == {key(name, 0, "manual"): (1, 5)}
    assert durations_of(got) == expected_durations(events)
    assert got.points(FAILED) == {}


def test_flush_timeout_error_type(make_buffer, gates, instrument, core_name):
    name = f"otel-timeout-{core_name}"
    metrics = Metrics(name)
    events = FlushEvents(name)
    instrument(metrics.provider)
    gate = gates()
    reported: list[BaseException] = []
    buf = make_buffer(
        handle_flush=lambda batch, opts: gate.wait(30),
        handle_flush_error=lambda batch, opts, error: reported.append(error),
        name=name,
        max_size=100,
        flush_interval=3600,
        flush_timeout=0.2,
    )
    buf.insert_batch([1, 2, 3])
    with pytest.raises(ExceptionGroup) as info:
        buf.sync_flush(timeout=30)
    assert [type(error) for error in info.value.exceptions] == [FlushTimeout]
    assert [type(error) for error in reported] == [FlushTimeout]

    got = metrics.collect()
    timed_out = key(name, 0, "manual", "FlushTimeout")
    assert got.values(FAILED) == {timed_out: 3}
    assert got.histogram(BATCH_SIZE) == {timed_out: (1, 3)}
    assert durations_of(got) == expected_durations(events)
    ((count, total, _, _),) = durations_of(got).values()
    assert count == 1 and total >= 0.2  # it ran until flush_timeout
    assert got.points(FLUSHED) == {}


def test_empty_insert_batch_is_not_counted(make_buffer, instrument, core_name):
    name = f"otel-empty-{core_name}"
    metrics = Metrics(name)
    inst = instrument(metrics.provider)
    buf = make_buffer(handle_flush=lambda batch, opts: None, name=name, partitions=2, flush_interval=3600)
    buf.insert_batch([])
    buf.insert_batch(iter(()))
    got = metrics.collect()
    assert got.points(INSERTED) == {}
    buf.insert("x")
    got = metrics.collect()
    assert sum(got.values(INSERTED).values()) == 1
    assert set(got.values(INSERTED)) <= {key(name, 0), key(name, 1)}
    assert telemetry.INSERT_STOP in otel_handlers(inst)  # not detached for raising


def test_drops_are_counted_with_the_policy(make_buffer, gates, instrument, core_name):
    name = f"otel-drops-{core_name}"
    metrics = Metrics(name)
    instrument(metrics.provider)
    release, entered = gates(), threading.Event()

    def handle_flush(batch, opts):
        entered.set()
        release.wait(30)

    buf = make_buffer(
        handle_flush=handle_flush,
        name=name,
        max_size=2,
        max_queued_batches=0,
        flush_interval=3600,
        on_full="drop_oldest",
    )
    buf.insert_batch([1, 2])  # with the flusher
    assert entered.wait(10)
    buf.insert_batch([3, 4])  # the ring is full
    buf.insert_batch([5, 6, 7])  # drops 3, 4 and 5
    got = metrics.collect()
    dropped = frozenset(
        {"databuffer.buffer": name, "databuffer.partition": 0, "databuffer.on_full": "drop_oldest"}.items()
    )
    assert got.values(DROPPED) == {dropped: 3}
    assert got.metrics[DROPPED].unit == "{item}" and got.metrics[DROPPED].data.is_monotonic
    release.set()
    buf.close()
    assert buf.stats()["dropped"] == 3


# -- the gauge -----------------------------------------------------------------


def test_gauge_per_partition(make_buffer, gates, instrument, core_name):
    x, y = f"otel-gauge-x-{core_name}", f"otel-gauge-y-{core_name}"
    metrics = Metrics(x, y)
    instrument(metrics.provider)
    bx = make_buffer(
        handle_flush=lambda batch, opts: None, name=x, partitions=3, max_size=100, flush_interval=3600
    )
    assert metrics.collect().values(BUFFERED) == {key(x, 0): 0, key(x, 1): 0, key(x, 2): 0}
    bx.insert_batch([1, 2, 3, 4])  # partition 0
    bx.insert_batch([5, 6])  # partition 1
    bx.insert_batch(range(7))  # partition 2
    bx.insert("a")  # partition 0
    assert metrics.collect().values(BUFFERED) == {key(x, 0): 5, key(x, 1): 2, key(x, 2): 7}

    # Items handed to the flusher are no longer buffered.
    gate = gates()
    by = make_buffer(
        handle_flush=lambda batch, opts: gate.wait(30), name=y, max_size=100, flush_interval=3600
    )
    by.insert_batch([1, 2, 3])
    assert metrics.collect().values(BUFFERED) == {
        key(x, 0): 5,
        key(x, 1): 2,
        key(x, 2): 7,
        key(y, 0): 3,
    }
    by.flush()
    wait_for(lambda: by.stats()["in_flight"] == 3)
    by.insert(4)
    assert metrics.collect().values(BUFFERED)[key(y, 0)] == 1

    # Buffers with the same name share attributes: their sizes add up.
    same = make_buffer(handle_flush=lambda batch, opts: None, name=x, max_size=100, flush_interval=3600)
    same.insert_batch([1, 2])
    assert metrics.collect().values(BUFFERED) == {
        key(x, 0): 7,
        key(x, 1): 2,
        key(x, 2): 7,
        key(y, 0): 1,
    }

    bx.sync_flush()
    assert metrics.collect().values(BUFFERED) == {key(x, 0): 2, key(x, 1): 0, key(x, 2): 0, key(y, 0): 1}
    bx.close()
    same.close()
    assert metrics.collect().values(BUFFERED) == {key(y, 0): 1}
    gate.set()
    by.close(timeout=30)
    assert metrics.collect().points(BUFFERED) == {}


def test_gauge_with_buffers_closing_during_collection(
    make_buffer, instrument, core_name, caplog, monkeypatch
):
    ok, closing, broken = (f"otel-{kind}-{core_name}" for kind in ("ok", "closing", "broken"))
    metrics = Metrics(ok, closing, broken)
    instrument(metrics.provider)

    flushed: list[tuple[str, list[int]]] = []
    options = {
        "handle_flush": lambda batch, opts: flushed.append((opts.trigger, batch)),
        "flush_interval": 3600,
    }
    b_ok = make_buffer(name=ok, **options)
    b_closing = make_buffer(name=closing, **options)
    b_broken = make_buffer(name=broken, **options)
    b_ok.insert_batch([1, 2])
    b_closing.insert_batch([3, 4, 5])
    # The gauge reads each open buffer's partitions from its engine: one
    # closes while it is read, one fails to answer.
    closing_engine = engine_of(b_closing)
    read = closing_engine.info

    def close_then_read():
        b_closing.close()
        return read()

    def broken_info():
        raise RuntimeError("closing right now")

    monkeypatch.setattr(closing_engine, "info", close_then_read)
    monkeypatch.setattr(engine_of(b_broken), "info", broken_info)

    with caplog.at_level(logging.DEBUG):
        got = metrics.collect()
    # The buffer closed while it was read reports what it holds then: nothing.
    assert got.values(BUFFERED) == {key(ok, 0): 2, key(closing, 0): 0}
    assert flushed == [("close", [3, 4, 5])]
    assert got.values(FLUSHED) == {key(closing, 0, "close"): 3}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "info() of" in caplog.text  # the broken one was skipped, at DEBUG


# -- lifecycle -----------------------------------------------------------------


def test_uninstrument_stops_everything(make_buffer, instrument, core_name):
    name = f"otel-stop-{core_name}"
    metrics = Metrics(name)
    inst = instrument(metrics.provider)
    assert inst.active and "active" in repr(inst)
    calls = 0

    def handle_flush(batch, opts):
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ValueError("after uninstrument")

    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=lambda batch, opts, error: None,
        name=name,
        max_size=100,
        flush_interval=3600,
        max_retries=1,
        retry_backoff=0,
    )
    buf.insert_batch([1, 2])
    buf.sync_flush()
    buf.insert(3)
    before = metrics.collect()
    assert before.values(FLUSHED) == {key(name, 0, "manual"): 2}
    assert before.values(INSERTED) == {key(name, 0): 3}
    assert before.values(BUFFERED) == {key(name, 0): 1}
    state = before.sync_state()

    inst.uninstrument()
    assert not inst.active and "uninstrumented" in repr(inst)
    assert otel_handlers(inst) == []
    assert not telemetry.has_handlers(telemetry.INSERT_STOP)  # inserts are off the telemetry path again
    inst.uninstrument()  # idempotent

    buf.insert_batch([4, 5])
    with pytest.raises(ExceptionGroup):
        buf.sync_flush()  # a retry, then a failure
    buf.insert(6)
    assert buf.stats()["retried"] == 3 and buf.stats()["failed"] == 3
    after = metrics.collect()
    assert after.sync_state() == state  # cumulative values, unchanged
    assert after.points(BUFFERED) == {}  # although an item is buffered
    assert buf.size() == 1


def test_context_manager(make_buffer, core_name):
    name = f"otel-with-{core_name}"
    metrics = Metrics(name)
    buf = make_buffer(handle_flush=lambda batch, opts: None, name=name, max_size=100, flush_interval=3600)
    with otel.instrument(metrics.provider) as inst:
        assert isinstance(inst, otel.Instrumentation)
        assert otel_handlers(inst)
        buf.insert_batch([1, 2, 3])
        buf.sync_flush()
        buf.insert(4)
        inside = metrics.collect()
        assert inside.values(FLUSHED) == {key(name, 0, "manual"): 3}
        assert inside.values(BUFFERED) == {key(name, 0): 1}
    assert not inst.active
    assert otel_handlers(inst) == []
    buf.sync_flush()
    after = metrics.collect()
    assert after.values(FLUSHED) == {key(name, 0, "manual"): 3}
    assert after.points(BUFFERED) == {}


def test_count_inserts_false(make_buffer, instrument, core_name):
    name = f"otel-noinsert-{core_name}"
    metrics = Metrics(name)
    inst = instrument(metrics.provider, count_inserts=False)
    assert inst.count_inserts is False
    # Only the drop event, which inserts emit only when they drop: the
    # insert path stays off telemetry.
    assert [h["event"] for h in telemetry.list_handlers(("data_buffer", "insert"))] == [telemetry.INSERT_DROP]
    assert not telemetry.has_handlers(telemetry.INSERT_STOP)
    assert not _core_py.insert_telemetry()
    buf = make_buffer(handle_flush=lambda batch, opts: None, name=name, max_size=2, flush_interval=3600)
    buf.insert_batch([1, 2, 3])
    buf.sync_flush()
    got = metrics.collect()
    assert INSERTED not in got.metrics or got.points(INSERTED) == {}
    assert got.values(FLUSHED) == {key(name, 0, "size"): 2, key(name, 0, "manual"): 1}
    assert got.histogram(BATCH_SIZE) == {key(name, 0, "size"): (1, 2), key(name, 0, "manual"): (1, 1)}
    assert got.values(BUFFERED) == {key(name, 0): 0}


def test_two_instrumentations_on_two_providers(make_buffer, instrument, core_name):
    name = f"otel-two-{core_name}"
    first, second = Metrics(name), Metrics(name)
    one = instrument(first.provider)
    two = instrument(second.provider, count_inserts=False)
    assert one.handler_id != two.handler_id
    assert otel_handlers(one) and otel_handlers(two)
    buf = make_buffer(handle_flush=lambda batch, opts: None, name=name, max_size=100, flush_interval=3600)
    buf.insert_batch([1, 2, 3])
    buf.sync_flush()
    buf.insert(4)
    for metrics in (first, second):
        got = metrics.collect()
        assert got.values(FLUSHED) == {key(name, 0, "manual"): 3}
        assert got.histogram(BATCH_SIZE) == {key(name, 0, "manual"): (1, 3)}
        assert got.values(BUFFERED) == {key(name, 0): 1}
    assert first.collect().values(INSERTED) == {key(name, 0): 4}
    assert second.collect().points(INSERTED) == {}

    one.uninstrument()
    assert otel_handlers(two)
    buf.sync_flush()
    buf.insert_batch([5, 6])
    assert first.collect().values(FLUSHED) == {key(name, 0, "manual"): 3}
    assert first.collect().points(BUFFERED) == {}
    got = second.collect()
    assert got.values(FLUSHED) == {key(name, 0, "manual"): 4}
    assert got.values(BUFFERED) == {key(name, 0): 2}


def test_two_instrumentations_on_one_provider(make_buffer, instrument, core_name):
    """Each records every event (so twice); the gauge follows whichever is still active."""
    name = f"otel-shared-{core_name}"
    metrics = Metrics(name)
    one = instrument(metrics.provider)
    two = instrument(metrics.provider)
    buf = make_buffer(handle_flush=lambda batch, opts: None, name=name, max_size=100, flush_interval=3600)
    buf.insert_batch([1, 2, 3])
    buf.sync_flush()
    buf.insert(4)
    got = metrics.collect()
    assert got.values(FLUSHED) == {key(name, 0, "manual"): 6}
    assert got.values(INSERTED) == {key(name, 0): 8}
    assert got.values(BUFFERED) == {key(name, 0): 1}

    # The provider kept only the first gauge callback registered (one's):
    # it must go on reporting for two.
    one.uninstrument()
    buf.insert(5)
    got = metrics.collect()
    assert got.values(INSERTED) == {key(name, 0): 9}
    assert got.values(BUFFERED) == {key(name, 0): 2}

    two.uninstrument()
    assert metrics.collect().points(BUFFERED) == {}

    # Instrumenting the same provider again brings the gauge back.
    instrument(metrics.provider)
    buf.insert(6)
    got = metrics.collect()
    assert got.values(BUFFERED) == {key(name, 0): 3}
    assert got.values(INSERTED) == {key(name, 0): 10}


# -- the global provider and the import ----------------------------------------


def test_global_meter_provider(core_name):
    """With no meter_provider, instrument() uses the global one (in a subprocess, not to set ours)."""
    proc = run_python(
        """
        import json
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import databuffer
        from databuffer.contrib.otel import instrument

        inst = instrument()  # before the global provider is set: through the API's proxy
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        with databuffer.Buffer(handle_flush=lambda b, o: None, name="g", max_size=2) as buf:
            buf.insert_batch([1, 2, 3])
            buf.sync_flush()
            out = {"extension": databuffer.USING_EXTENSION}
            for rm in reader.get_metrics_data().resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        out[m.name] = sorted(
                            (sorted(p.attributes.items()), p.value if hasattr(p, "value") else p.count)
                            for p in m.data.data_points
                        )
        inst.uninstrument()
        print(json.dumps(out))
        """,
        core=core_name,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out.pop("extension") is (core_name == "c")
    flush_attrs = lambda trigger: [  # noqa: E731
        ["databuffer.buffer", "g"],
        ["databuffer.partition", 0],
        ["databuffer.trigger", trigger],
    ]
    assert out == {
        INSERTED: [[[["databuffer.buffer", "g"], ["databuffer.partition", 0]], 3]],
        FLUSHED: [[flush_attrs("manual"), 1], [flush_attrs("size"), 2]],
        BATCH_SIZE: [[flush_attrs("manual"), 1], [flush_attrs("size"), 1]],
        DURATION: [[flush_attrs("manual"), 1], [flush_attrs("size"), 1]],
        BUFFERED: [[[["databuffer.buffer", "g"], ["databuffer.partition", 0]], 0]],
    }


def test_import_databuffer_does_not_import_opentelemetry():
    proc = run_python(
        """
        import sys
        import databuffer, databuffer.contrib, databuffer.telemetry
        print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_import_error_without_opentelemetry():
    proc = run_python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        import databuffer
        try:
            import databuffer.contrib.otel
        except ImportError as exc:
            print(type(exc).__name__, type(exc.__cause__).__name__)
            print(exc)
        else:
            print("imported")
        """
    )
    assert proc.returncode == 0, proc.stderr
    kind, message = proc.stdout.strip().split("\n")
    assert kind == "ImportError ModuleNotFoundError"
    assert "pip install 'databuffer[otel]'" in message
    assert "OpenTelemetry" in message


# -- AsyncBuffer ---------------------------------------------------------------


def test_async_buffer_metrics(AsyncBuffer, instrument, core_name):
    """An AsyncBuffer emits the same events: the same metrics, and the gauge sees it while open."""
    import asyncio

    name = f"otel-async-{core_name}"
    metrics = Metrics(name)
    events = FlushEvents(name)
    instrument(metrics.provider)
    flushed: list[list[int]] = []
    seen_while_open: dict[Attrs, int | float] = {}

    async def handle_flush(batch: list[int], opts: Any) -> None:
        await asyncio.sleep(0)
        if batch == [4]:
            raise ValueError("boom")
        flushed.append(list(batch))

    async def main() -> None:
        async with AsyncBuffer(
            handle_flush=handle_flush,
            handle_flush_error=lambda batch, opts, error: None,
            name=name,
            max_size=3,
            flush_interval=3600,
        ) as buf:
            buf.insert_batch([1, 2, 3])  # a batch by size, handed to the flusher
            await buf.ainsert(4)
            seen_while_open.update(metrics.collect().values(BUFFERED))
            with pytest.raises(ExceptionGroup):
                await buf.sync_flush()  # [4], manual, fails
            buf.insert(5)  # flushed by aclose

    asyncio.run(main())
    assert flushed == [[1, 2, 3], [5]]
    assert seen_while_open == {key(name, 0): 1}
    got = metrics.collect()
    assert got.values(INSERTED) == {key(name, 0): 5}
    assert got.values(FLUSHED) == {key(name, 0, "size"): 3, key(name, 0, "close"): 1}
    assert got.values(FAILED) == {key(name, 0, "manual", "ValueError"): 1}
    assert durations_of(got) == expected_durations(events)
    assert got.points(BUFFERED) == {}  # closed
