"""Shutdown (SPEC sections 3 and 4): close, the with block and interpreter exit."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from typing import Any

import pytest
from conftest import Background, Recorder, run_python, stuck_buffer, wait_for

from databuffer import BufferClosed, FlushTimeout

# -- close ----------------------------------------------------------------------


def test_close_flushes_what_is_left_and_is_idempotent(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, partitions=3, max_size=100, flush_interval=3600)
    for i in range(7):
        buf.insert(i)
    assert buf.close() is None
    assert sorted(recorder.items()) == list(range(7))
    assert recorder.triggers() == ["close"] * 3
    assert buf.close() is None
    assert buf.close(timeout=1) is None
    assert len(recorder.calls) == 3
    assert sum(p["flushed"] for p in buf.info()) == 7


def test_after_close_inserts_raise_buffer_closed_and_queries_answer(make_buffer):
    recorder = Recorder()
    buf = make_buffer(
        handle_flush=recorder, name="closed-buf", partitions=2, max_size=100, flush_interval=3600
    )
    buf.insert_batch(["a", "b"])
    buf.insert("c")
    buf.close(timeout=30)
    with pytest.raises(BufferClosed) as excinfo:
        buf.insert("d")
    assert isinstance(excinfo.value, RuntimeError)
    with pytest.raises(BufferClosed):
        buf.insert_batch(["e", "f"])
    with pytest.raises(BufferClosed):
        buf.insert("g", timeout=0.1)
    # Nothing lost, nothing added.
    assert sorted(recorder.items()) == ["a", "b", "c"]
    assert buf.size() == 0
    assert buf.dump() == []
    info = buf.info()
    assert [p["name"] for p in info] == ["closed-buf", "closed-buf"]
    assert sum(p["inserted"] for p in info) == 3
    assert sum(p["flushed"] for p in info) == 3
    assert not any(p["flushing"] for p in info)


def test_close_waits_for_a_flush_in_flight(make_buffer, gates):
    recorder = Recorder()
    buf, release, _ = stuck_buffer(make_buffer, gates, recorder, insert_timeout=30)
    buf.insert(2)
    closing = Background(buf.close)
    assert not closing.done.wait(0.3), "close returned while a flush was still running"
    release.set()
    closing.wait()
    assert closing.error is None
    assert recorder.items() == [0, 1, 2]
    assert recorder.triggers() == ["size", "close"]
    assert buf.info()[0]["flushed"] == 3


def test_close_with_timeout_raises_timeout_error_when_stuck(make_buffer, gates):
    recorder = Recorder()
    buf, release, _ = stuck_buffer(make_buffer, gates, recorder, flush_timeout=60)
    buf.insert(2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        buf.close(timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(BufferClosed):
        buf.insert(3)
    release.set()
    buf.close(timeout=30)  # waits for the rest
    assert recorder.items() == [0, 1, 2]
    assert buf.info()[0]["flushed"] == 3


def test_close_without_timeout_is_bounded_by_flush_timeout(make_buffer, gates):
    release = gates()
    reported: list[tuple[list[Any], BaseException]] = []

    def fn(batch, opts):
        release.wait(30)

    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=lambda batch, opts, error: reported.append((list(batch), opts, error)),
        max_size=100,
        flush_interval=3600,
        flush_timeout=0.3,
    )
    buf.insert_batch([1, 2])
    t0 = time.monotonic()
    closing = Background(buf.close)
    # The stuck call would only return when the test ends; close must not wait for it.
    assert closing.done.wait(15), "close() waited for an abandoned handle_flush"
    assert closing.error is None
    assert time.monotonic() - t0 >= 0.3
    assert len(reported) == 1
    batch, opts, error = reported[0]
    assert batch == [1, 2]
    assert opts.trigger == "close"
    assert isinstance(error, FlushTimeout)
    assert buf.info()[0]["failed"] == 2


def test_timed_out_flusher_that_cannot_be_replaced_fails_the_rest(make_buffer, gates, monkeypatch):
    """No new thread (as at interpreter exit on Python 3.12): report, never hang."""
    release = gates()
    reported: list[tuple[list[Any], Any, BaseException]] = []

    def fn(batch, opts):
        release.wait(30)

    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=lambda batch, opts, error: reported.append((list(batch), opts, error)),
        max_size=2,
        flush_interval=3600,
        flush_timeout=0.3,
        insert_timeout=60,
    )

    real_start = threading.Thread.start

    def refuse(self):
        if "-flusher-" in self.name:
            raise RuntimeError("can't create new thread at interpreter shutdown")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    t0 = time.monotonic()
    buf.insert_batch([0, 1, 2, 3, 4])  # [0, 1] sticks; [2, 3] waits; [4] waits for room
    # [4] got room when [2, 3] was reported failed, not when its insert_timeout ran out.
    assert time.monotonic() - t0 < 30
    closing = Background(buf.close)
    assert closing.done.wait(15), "close() hung on a partition without a flusher"
    assert closing.error is None
    assert [batch for batch, _, _ in reported] == [[0, 1], [2, 3], [4]]
    assert isinstance(reported[0][2], FlushTimeout)
    assert all(type(error) is RuntimeError for _, _, error in reported[1:])
    assert "no thread could replace" in str(reported[1][2])
    info = buf.info()[0]
    assert (info["inserted"], info["size"], info["flushed"], info["failed"]) == (5, 0, 0, 5)


def test_insert_waiting_during_close_loses_nothing(make_buffer, gates):
    recorder = Recorder()
    buf, release, _ = stuck_buffer(make_buffer, gates, recorder, insert_timeout=30)
    buf.insert_batch([2, 3])
    waiting = Background(buf.insert, 4, timeout=30)
    assert not waiting.done.wait(0.2)
    closing = Background(buf.close, timeout=30)
    release.set()
    closing.wait(60)
    waiting.wait(60)
    assert closing.error is None
    if waiting.error is None:
        assert recorder.items() == [0, 1, 2, 3, 4]
    else:
        assert isinstance(waiting.error, BufferClosed), repr(waiting.error)
        assert recorder.items() == [0, 1, 2, 3]
    info = buf.info()[0]
    assert info["inserted"] == info["flushed"] + info["size"] + info["failed"]
    assert info["size"] == 0


def test_close_stops_the_buffer_threads(make_buffer):
    name = "threads-stop-check"
    buf = make_buffer(handle_flush=Recorder(), name=name, partitions=2, flush_interval=3600)

    def ours() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if name in t.name and t.is_alive()]

    assert ours()
    buf.insert(1)
    buf.close(timeout=30)
    wait_for(lambda: not ours(), timeout=30)
    assert buf.size() == 0


def test_with_block_closes_and_flushes(make_buffer):
    recorder = Recorder()
    with make_buffer(handle_flush=recorder, partitions=2, max_size=100, flush_interval=3600) as buf:
        buf.insert_batch([1, 2, 3])
        buf.insert(4)
    assert sorted(recorder.items()) == [1, 2, 3, 4]
    assert recorder.triggers() == ["close", "close"]
    with pytest.raises(BufferClosed):
        buf.insert(5)
    assert buf.size() == 0


# -- interpreter exit ---------------------------------------------------------------


ATEXIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import databuffer
    from databuffer import Buffer

    path = sys.argv[1]

    def write(record):
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\\n")

    class Sink(Buffer):
        def handle_flush(self, batch, opts):
            write({"buffer": opts.buffer, "trigger": opts.trigger,
                   "partition": opts.partition, "batch": batch})
            return len(batch)

    events = Sink(name="events", partitions=3, max_size=1000, flush_interval=3600)
    for i in range(20):
        events.insert(i)
    events.insert_batch(range(20, 30))

    def unreferenced():
        # A buffer nobody keeps a reference to still flushes at exit.
        other = Buffer(
            name="other",
            handle_flush=lambda batch, opts: write(
                {"buffer": opts.buffer, "trigger": opts.trigger,
                 "partition": opts.partition, "batch": batch}),
            max_size=1000, flush_interval=3600,
        )
        other.insert_batch(["x", "y"])

    unreferenced()
    print("extension" if databuffer.USING_EXTENSION else "python", flush=True)
    """
)

ATEXIT_STUCK_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from databuffer import Buffer

    path = sys.argv[1]

    class Stuck(Buffer):
        def handle_flush(self, batch, opts):
            threading.Event().wait()  # never returns

        def handle_flush_error(self, batch, opts, error):
            with open(path, "a") as f:
                f.write(json.dumps({"error": type(error).__name__, "batch": batch,
                                    "trigger": opts.trigger}) + "\\n")

    buf = Stuck(name="stuck", max_size=1000, flush_interval=3600, flush_timeout=0.5)
    buf.insert_batch([1, 2, 3])
    """
)


def test_atexit_flushes_open_buffers(core_name, tmp_path):
    out = tmp_path / "flushed.jsonl"
    proc = run_python(ATEXIT_SCRIPT, str(out), core=core_name, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("extension" if core_name == "c" else "python"), proc.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    events = [r for r in records if r["buffer"] == "events"]
    other = [r for r in records if r["buffer"] == "other"]
    assert sorted(item for r in events for item in r["batch"]) == list(range(30))
    assert {r["trigger"] for r in events} == {"close"}
    assert sorted(r["partition"] for r in events) == [0, 1, 2]
    for r in events:
        assert r["batch"] == sorted(r["batch"])
    assert other == [{"buffer": "other", "trigger": "close", "partition": 0, "batch": ["x", "y"]}]
    assert "Traceback" not in proc.stderr


def test_atexit_is_bounded_by_flush_timeout(core_name, tmp_path):
    out = tmp_path / "errors.jsonl"
    proc = run_python(ATEXIT_STUCK_SCRIPT, str(out), core=core_name, timeout=20)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [{"error": "FlushTimeout", "batch": [1, 2, 3], "trigger": "close"}]


def test_open_buffers_can_be_listed_while_other_threads_open_and_close_them(make_buffer):
    # close_open_buffers() (at exit) and the OpenTelemetry gauge copy the
    # registry of open buffers while other threads may open and close
    # buffers; an unguarded WeakSet copy raised "Set changed size during
    # iteration" then, which would have aborted the exit flush.
    from databuffer._front import engine_of
    from databuffer._registry import registry

    stop = threading.Event()

    def churn() -> int:
        rounds = 0
        while not stop.is_set():
            make_buffer(handle_flush=lambda batch, opts: None, name="churn").close()
            rounds += 1
        return rounds

    keep = make_buffer(handle_flush=lambda batch, opts: None, name="kept")
    churners = [Background(churn) for _ in range(2)]
    copies = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline or copies < 200:
        assert engine_of(keep) in registry.open_engines()
        copies += 1
    stop.set()
    rounds = [c.wait().result for c in churners]
    assert all(c.error is None for c in churners), [c.error for c in churners]
    assert min(rounds) > 0
    assert [e for e in registry.open_engines() if e.name == "churn"] == []
