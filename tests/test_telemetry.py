"""Telemetry (SPEC section 5): the registry API and every event, against both cores."""

from __future__ import annotations

import importlib
import logging
import threading
import time
import types

import pytest
from conftest import Events, wait_for

from databuffer import BufferClosed, BufferFull, FlushTimeout, _core_py, telemetry

INSERT_START = ("data_buffer", "insert", "start")
INSERT_STOP = ("data_buffer", "insert", "stop")
INSERT_EXCEPTION = ("data_buffer", "insert", "exception")
FLUSH_START = ("data_buffer", "flush", "start")
FLUSH_STOP = ("data_buffer", "flush", "stop")
FLUSH_EXCEPTION = ("data_buffer", "flush", "exception")
INSERT_EVENTS = [INSERT_START, INSERT_STOP, INSERT_EXCEPTION]
FLUSH_EVENTS = [FLUSH_START, FLUSH_STOP, FLUSH_EXCEPTION]
ALL_EVENTS = INSERT_EVENTS + FLUSH_EVENTS

FLUSH_META_KEYS = {"buffer", "partition", "size", "trigger"}
EXCEPTION_META_KEYS = {"kind", "reason", "stacktrace"}


def loaded_cores(core_name: str) -> list[types.ModuleType]:
    cores = [_core_py]
    if core_name == "c":
        cores.append(importlib.import_module("databuffer._core"))
    return cores


def assert_is_int_ns(value: object) -> None:
    assert isinstance(value, int) and not isinstance(value, bool), value


def assert_times(measurements, before_ns: int, after_ns: int, *, start: bool) -> None:
    if start:
        assert set(measurements) == {"system_time", "monotonic_time"}
        assert_is_int_ns(measurements["system_time"])
        assert abs(measurements["system_time"] - time.time_ns()) < 120 * 10**9
    else:
        assert set(measurements) == {"duration", "monotonic_time"}
        assert_is_int_ns(measurements["duration"])
        assert 0 <= measurements["duration"] <= after_ns - before_ns
    assert_is_int_ns(measurements["monotonic_time"])
    assert before_ns <= measurements["monotonic_time"] <= after_ns


def traceback_frames(tb: types.TracebackType | None) -> list[types.TracebackType]:
    out = []
    while tb is not None:
        out.append(tb)
        tb = tb.tb_next
    return out


# -- registry ------------------------------------------------------------------


def test_attach_list_detach_shapes(core_name):
    def h1(event, measurements, metadata, config):
        return None

    def h2(event, measurements, metadata, config):
        return None

    config = {"c": 1}
    assert telemetry.attach("h1", FLUSH_STOP, h1, config) is None
    assert telemetry.attach_many("h2", [INSERT_START, INSERT_STOP], h2) is None
    handlers = telemetry.list_handlers()
    assert isinstance(handlers, list)
    assert all(set(h) == {"id", "event", "function", "config"} for h in handlers)
    assert {"id": "h1", "event": FLUSH_STOP, "function": h1, "config": config} in handlers
    assert {"id": "h2", "event": INSERT_START, "function": h2, "config": None} in handlers
    assert {"id": "h2", "event": INSERT_STOP, "function": h2, "config": None} in handlers
    assert len(handlers) == 3
    assert handlers[0]["config"] is config
    assert tuple(handlers[0]["event"]) == FLUSH_STOP

    assert sorted(h["event"] for h in telemetry.list_handlers(("data_buffer", "insert"))) == sorted(
        [INSERT_START, INSERT_STOP]
    )
    assert [h["id"] for h in telemetry.list_handlers(("data_buffer", "flush"))] == ["h1"]
    assert [h["id"] for h in telemetry.list_handlers(FLUSH_STOP)] == ["h1"]
    assert len(telemetry.list_handlers(("data_buffer",))) == 3
    assert telemetry.list_handlers(("other",)) == []
    assert telemetry.list_handlers(("data_buffer", "flush", "start")) == []

    assert telemetry.detach("h1") is True
    assert telemetry.detach("h1") is False
    assert telemetry.detach("never-attached") is False
    assert [h["id"] for h in telemetry.list_handlers()] == ["h2", "h2"]
    assert telemetry.detach("h2") is True
    assert telemetry.list_handlers() == []


def test_handler_receives_event_and_config(make_buffer):
    got = []
    config = object()
    telemetry.attach("cfg", FLUSH_STOP, lambda e, m, md, c: got.append((e, md["buffer"], c)), config)
    buf = make_buffer(handle_flush=lambda batch, opts: None, name="cfg-buf", flush_interval=3600)
    buf.insert(1)
    buf.sync_flush(timeout=30)
    assert got == [(FLUSH_STOP, "cfg-buf", config)]
    assert got[0][2] is config


# -- insert events ---------------------------------------------------------------


def test_insert_events(make_buffer):
    rec = Events("ins-buf")
    telemetry.attach_many("rec", ALL_EVENTS, rec)
    buf = make_buffer(
        handle_flush=lambda batch, opts: None,
        name="ins-buf",
        partitions=2,
        max_size=100,
        flush_interval=3600,
    )
    before = time.monotonic_ns()
    buf.insert("a")
    buf.insert_batch(["b", "c", "d"])
    after = time.monotonic_ns()
    starts = rec.of(INSERT_START)
    stops = rec.of(INSERT_STOP)
    assert rec.names() == [INSERT_START, INSERT_STOP, INSERT_START, INSERT_STOP]
    assert len(starts) == len(stops) == 2
    for (measurements, metadata), (stop_m, _) in zip(starts, stops, strict=False):
        assert metadata == {"buffer": "ins-buf"}
        assert_times(measurements, before, after, start=True)
        assert measurements["monotonic_time"] <= stop_m["monotonic_time"]
    for measurements, _ in stops:
        assert_times(measurements, before, after, start=False)
    (_, first), (_, second) = stops
    assert set(first) == {"buffer", "partition", "size"}
    assert set(second) == {"buffer", "partition", "size"}
    assert first["size"] == 1 and second["size"] == 3
    assert first["buffer"] == second["buffer"] == "ins-buf"
    assert {first["partition"], second["partition"]} == {0, 1}
    assert buf.dump() == (["a", "b", "c", "d"] if first["partition"] == 0 else ["b", "c", "d", "a"])
    info = buf.info()
    assert info[first["partition"]]["size"] == 1
    assert info[second["partition"]]["size"] == 3


def test_insert_exception_event_on_buffer_full(make_buffer, gates):
    release = gates()
    started = threading.Event()

    def fn(batch, opts):
        started.set()
        release.wait(30)

    rec = Events("full-buf")
    buf = make_buffer(handle_flush=fn, name="full-buf", max_size=1, max_queued_batches=0, flush_interval=3600)
    buf.insert(0)  # a full batch: flushing, stuck
    assert started.wait(30)
    buf.insert(1)  # the partition now holds a full batch
    telemetry.attach_many("rec", INSERT_EVENTS, rec)
    before = time.monotonic_ns()
    with pytest.raises(BufferFull) as excinfo:
        buf.insert(2, timeout=0.2)
    after = time.monotonic_ns()
    assert rec.names() == [INSERT_START, INSERT_EXCEPTION]
    ((measurements, metadata),) = rec.of(INSERT_EXCEPTION)
    assert_times(measurements, before, after, start=False)
    assert measurements["duration"] >= 0.15 * 10**9
    assert set(metadata) == {"buffer", "kind", "reason", "stacktrace"}
    assert metadata["buffer"] == "full-buf"
    assert metadata["kind"] == "error"
    assert metadata["reason"] is excinfo.value
    assert isinstance(metadata["stacktrace"], types.TracebackType)
    assert metadata["stacktrace"] in traceback_frames(excinfo.value.__traceback__)

    # insert_batch that runs out of room too.
    with pytest.raises(BufferFull) as excinfo:
        buf.insert_batch([3, 4], timeout=0.1)
    (_, metadata) = rec.of(INSERT_EXCEPTION)[-1]
    assert metadata["reason"] is excinfo.value
    assert rec.of(INSERT_STOP) == []


def test_insert_exception_event_on_buffer_closed(make_buffer):
    rec = Events("closed-buf")
    buf = make_buffer(handle_flush=lambda batch, opts: None, name="closed-buf", flush_interval=3600)
    buf.close(timeout=30)
    telemetry.attach_many("rec", INSERT_EVENTS, rec)
    before = time.monotonic_ns()
    with pytest.raises(BufferClosed) as excinfo:
        buf.insert("x")
    after = time.monotonic_ns()
    assert rec.names() == [INSERT_START, INSERT_EXCEPTION]
    ((measurements, metadata),) = rec.of(INSERT_EXCEPTION)
    assert_times(measurements, before, after, start=False)
    assert set(metadata) == {"buffer", "kind", "reason", "stacktrace"}
    assert metadata["kind"] == "error"
    assert metadata["reason"] is excinfo.value
    assert isinstance(metadata["stacktrace"], types.TracebackType)
    assert metadata["stacktrace"] in traceback_frames(excinfo.value.__traceback__)
    with pytest.raises(BufferClosed) as excinfo:
        buf.insert_batch(["y"])
    assert rec.of(INSERT_EXCEPTION)[-1][1]["reason"] is excinfo.value


# -- flush events ----------------------------------------------------------------


def test_flush_events_for_size_manual_and_close(make_buffer):
    rec = Events("fl-buf")
    telemetry.attach_many("rec", FLUSH_EVENTS, rec)

    def fn(batch, opts):
        with rec.lock:
            rec.log.append(("call", opts.partition, opts.trigger))
        return len(batch)

    buf = make_buffer(handle_flush=fn, name="fl-buf", partitions=2, max_size=2, flush_interval=3600)
    t0 = time.monotonic_ns()
    buf.insert_batch([0, 1])  # size flush
    wait_for(lambda: len(rec.of(FLUSH_STOP)) == 1, timeout=30)
    p_size = rec.of(FLUSH_STOP)[0][1]["partition"]
    buf.insert("m")  # the other partition
    assert buf.sync_flush(timeout=30) == [1]
    buf.insert_batch(["c1"])  # back to p_size
    buf.close(timeout=30)
    t1 = time.monotonic_ns()

    starts = [md for _, md in rec.of(FLUSH_START)]
    stops = [md for _, md in rec.of(FLUSH_STOP)]
    assert rec.of(FLUSH_EXCEPTION) == []
    expected = [
        {"buffer": "fl-buf", "partition": p_size, "size": 2, "trigger": "size"},
        {"buffer": "fl-buf", "partition": 1 - p_size, "size": 1, "trigger": "manual"},
        {"buffer": "fl-buf", "partition": p_size, "size": 1, "trigger": "close"},
    ]
    assert starts == expected
    assert stops == [{**md, "attempt": 1} for md in expected]
    for measurements, _ in rec.of(FLUSH_START):
        assert_times(measurements, t0, t1, start=True)
    for measurements, _ in rec.of(FLUSH_STOP):
        assert_times(measurements, t0, t1, start=False)
    # start, then handle_flush, then stop, for every flush.
    assert rec.log == [
        FLUSH_START,
        ("call", p_size, "size"),
        FLUSH_STOP,
        FLUSH_START,
        ("call", 1 - p_size, "manual"),
        FLUSH_STOP,
        FLUSH_START,
        ("call", p_size, "close"),
        FLUSH_STOP,
    ]


def test_flush_events_for_interval(make_buffer):
    rec = Events("iv-buf")
    telemetry.attach_many("rec", FLUSH_EVENTS, rec)
    buf = make_buffer(
        handle_flush=lambda batch, opts: None,
        name="iv-buf",
        max_size=100,
        flush_interval=0.05,
        flush_jitter=0,
    )
    buf.insert_batch([1, 2, 3])
    wait_for(lambda: len(rec.of(FLUSH_STOP)) == 1, timeout=30)
    assert [md for _, md in rec.of(FLUSH_START)] == [
        {"buffer": "iv-buf", "partition": 0, "size": 3, "trigger": "interval"}
    ]
    assert rec.of(FLUSH_STOP)[0][1] == {
        "buffer": "iv-buf",
        "partition": 0,
        "size": 3,
        "trigger": "interval",
        "attempt": 1,
    }


def test_flush_exception_event_on_failure(make_buffer):
    rec = Events("fail-buf")
    telemetry.attach_many("rec", FLUSH_EVENTS, rec)
    raised: list[BaseException] = []
    reported: list[BaseException] = []

    def failing_flush(batch, opts):
        error = ValueError("nope")
        raised.append(error)
        raise error

    buf = make_buffer(
        handle_flush=failing_flush,
        handle_flush_error=lambda batch, opts, error: reported.append(error),
        name="fail-buf",
        partitions=2,
        max_size=100,
        flush_interval=3600,
    )
    buf.insert_batch([1, 2, 3])
    t0 = time.monotonic_ns()
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    t1 = time.monotonic_ns()
    # Finished for sync_flush means its telemetry has fired.
    assert rec.names() == [FLUSH_START, FLUSH_EXCEPTION]
    ((measurements, metadata),) = rec.of(FLUSH_EXCEPTION)
    assert_times(measurements, t0, t1, start=False)
    assert set(metadata) == FLUSH_META_KEYS | EXCEPTION_META_KEYS | {"attempt"}
    assert metadata["buffer"] == "fail-buf"
    assert metadata["partition"] == rec.of(FLUSH_START)[0][1]["partition"]
    assert metadata["size"] == 3
    assert metadata["trigger"] == "manual"
    assert metadata["kind"] == "error"
    assert metadata["reason"] is raised[0] is reported[0]
    assert isinstance(metadata["stacktrace"], types.TracebackType)
    assert metadata["stacktrace"] is raised[0].__traceback__
    codes = [tb.tb_frame.f_code for tb in traceback_frames(metadata["stacktrace"])]
    assert failing_flush.__code__ in codes


def test_flush_exception_event_on_timeout(make_buffer, gates):
    release = gates()
    rec = Events("to-buf")
    telemetry.attach_many("rec", FLUSH_EVENTS, rec)

    def fn(batch, opts):
        release.wait(30)
        return "late"

    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=lambda batch, opts, error: None,
        name="to-buf",
        max_size=2,
        flush_interval=3600,
        flush_timeout=0.3,
    )
    t0 = time.monotonic_ns()
    buf.insert_batch([1, 2])
    wait_for(lambda: rec.of(FLUSH_EXCEPTION), timeout=30)
    t1 = time.monotonic_ns()
    ((measurements, metadata),) = rec.of(FLUSH_EXCEPTION)
    assert_times(measurements, t0, t1, start=False)
    assert measurements["duration"] >= 0.25 * 10**9
    assert set(metadata) == FLUSH_META_KEYS | EXCEPTION_META_KEYS | {"attempt"}
    assert (metadata["buffer"], metadata["partition"], metadata["size"], metadata["trigger"]) == (
        "to-buf",
        0,
        2,
        "size",
    )
    assert metadata["kind"] == "error"
    assert isinstance(metadata["reason"], FlushTimeout)
    assert metadata["stacktrace"] is metadata["reason"].__traceback__
    release.set()
    buf.insert("after")
    buf.sync_flush(timeout=30)
    # The abandoned call's late return produces no stop event.
    assert [md["size"] for _, md in rec.of(FLUSH_STOP)] == [1]


# -- raising handlers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "event", [INSERT_START, INSERT_STOP, FLUSH_START, FLUSH_STOP], ids=lambda e: "_".join(e[1:])
)
def test_raising_handler_is_detached_and_logged(make_buffer, caplog, event):
    caplog.set_level(logging.ERROR, logger="databuffer")
    good = Events("raise-buf")
    calls = []

    def bad_handler(e, m, md, c):
        calls.append(e)
        raise RuntimeError("handler exploded")

    telemetry.attach("bad-handler-id", event, bad_handler)
    telemetry.attach("good-handler-id", event, good)
    buf = make_buffer(
        handle_flush=lambda batch, opts: list(batch), name="raise-buf", max_size=100, flush_interval=3600
    )
    buf.insert("x")
    assert buf.sync_flush(timeout=30) == [["x"]]
    assert calls == [event]
    assert [h["id"] for h in telemetry.list_handlers()] == ["good-handler-id"]
    records = [r for r in caplog.records if r.name == "databuffer" and r.levelno >= logging.ERROR]
    assert any("bad-handler-id" in r.getMessage() for r in records), [r.getMessage() for r in records]
    # The buffer keeps working and the other handler still runs.
    buf.insert("y")
    assert buf.sync_flush(timeout=30) == [["y"]]
    assert calls == [event]
    assert len(good.of(event)) == 2
    if event in INSERT_EVENTS:
        assert telemetry.list_handlers(("data_buffer", "insert"))


def test_raising_insert_handler_turns_insert_path_off(make_buffer, core_name, caplog):
    caplog.set_level(logging.ERROR, logger="databuffer")

    def bad_handler(e, m, md, c):
        raise RuntimeError("bad insert handler")

    telemetry.attach("bad-insert", INSERT_START, bad_handler)
    assert all(core.insert_telemetry() for core in loaded_cores(core_name))
    buf = make_buffer(handle_flush=lambda batch, opts: None, name="bi-buf", flush_interval=3600)
    buf.insert("x")  # does not raise
    assert buf.dump() == ["x"]
    assert telemetry.list_handlers() == []
    assert not any(core.insert_telemetry() for core in loaded_cores(core_name))
    buf.insert("y")
    assert buf.dump() == ["x", "y"]


# -- the insert path switch ----------------------------------------------------------


def test_insert_telemetry_is_off_without_insert_handlers(make_buffer, core_name):
    cores = loaded_cores(core_name)
    assert telemetry.list_handlers() == []
    assert not any(core.insert_telemetry() for core in cores)

    flush_rec = Events("sw-buf")
    telemetry.attach_many("flush-only", FLUSH_EVENTS, flush_rec)
    assert not any(core.insert_telemetry() for core in cores)

    insert_rec = Events("sw-buf")
    telemetry.attach("ins", INSERT_STOP, insert_rec)
    assert all(core.insert_telemetry() for core in cores)
    buf = make_buffer(handle_flush=lambda batch, opts: None, name="sw-buf", flush_interval=3600)
    buf.insert(1)
    assert len(insert_rec.of(INSERT_STOP)) == 1

    assert telemetry.detach("ins") is True
    assert not any(core.insert_telemetry() for core in cores)
    assert _core_py.insert_telemetry() is False
    buf.insert(2)
    buf.insert_batch([3, 4])
    assert len(insert_rec.of(INSERT_STOP)) == 1  # nothing after detaching
    assert buf.dump() == [1, 2, 3, 4]
    # Flush events still fire.
    buf.sync_flush(timeout=30)
    assert len(flush_rec.of(FLUSH_STOP)) == 1

    telemetry.attach_many("again", [INSERT_START, INSERT_EXCEPTION], insert_rec)
    assert all(core.insert_telemetry() for core in cores)
    assert telemetry.detach("again") is True
    assert _core_py.insert_telemetry() is False
