"""Deadlines that hold: sync_flush(timeout) and close(timeout) whatever the
callbacks do, the capped flush at interpreter exit, and Ctrl-C on a blocked
insert."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import AlwaysOne, run_python, wait_for

import databuffer
from databuffer import telemetry
from databuffer._front import engine_of

BIG = 3600
# A loaded 2-core machine can be late to wake a thread; the deadlines are
# far shorter than any stuck callback, so the bound still tells them apart.
MARGIN = 2.0


@pytest.mark.parametrize("call", ["sync_flush", "close"])
@pytest.mark.parametrize("stuck", ["handle_flush", "handle_flush_error", "telemetry", "backoff"])
def test_sync_flush_and_close_keep_their_deadline(
    make_buffer: Any, gates: Any, stuck: str, call: str
) -> None:
    release = gates()
    entered = threading.Event()

    def flush(batch: list[Any], opts: Any) -> None:
        if stuck == "handle_flush":
            entered.set()
            release.wait(60)
        if stuck in ("handle_flush_error", "backoff") and opts.attempt == 1:
            raise ValueError("fail")

    def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        entered.set()
        release.wait(60)

    def handler(*args: Any) -> None:
        entered.set()
        release.wait(60)

    if stuck == "telemetry":
        telemetry.attach("stuck", telemetry.FLUSH_STOP, handler)
    if stuck == "backoff":
        telemetry.attach("stuck", telemetry.FLUSH_RETRY, lambda *a: entered.set())
    buf = make_buffer(
        handle_flush=flush,
        handle_flush_error=on_error,
        max_size=100,
        flush_interval=BIG,
        flush_timeout=60,
        max_retries=1 if stuck == "backoff" else 0,
        retry_backoff=3.0,
        retry_backoff_max=3.0,
    )
    engine_of(buf).random = AlwaysOne()  # a 3 s backoff
    buf.insert_batch([1, 2, 3])
    buf.flush()
    assert entered.wait(30)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        getattr(buf, call)(timeout=0.3)
    took = time.monotonic() - start
    assert 0.3 <= took < 0.3 + MARGIN
    if call == "close":
        assert buf.closed  # closed to inserts; the flush goes on
    release.set()
    buf.close(timeout=30)
    stats = buf.stats()
    assert stats["inserted"] == stats["flushed"] + stats["failed"] == 3


def test_set_exit_timeout_checks_its_value() -> None:
    before = databuffer.get_exit_timeout()
    try:
        with pytest.raises(TypeError, match="exit timeout.*'soon'"):
            databuffer.set_exit_timeout("soon")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="exit timeout.*-1"):
            databuffer.set_exit_timeout(-1)
        with pytest.raises(ValueError, match="exit timeout.*inf"):
            databuffer.set_exit_timeout(float("inf"))
        databuffer.set_exit_timeout(2)
        assert databuffer.get_exit_timeout() == 2.0
    finally:
        databuffer.set_exit_timeout(before)
    assert before == 30.0


def test_close_open_buffers_flushes_them_all_at_once(make_buffer: Any, gates: Any, caplog: Any) -> None:
    release = gates()
    delivered: list[Any] = []

    def stuck(batch: list[Any], opts: Any) -> None:
        release.wait(60)

    slow = make_buffer(handle_flush=stuck, name="slow", max_size=100, flush_interval=BIG)
    fine = make_buffer(
        handle_flush=lambda batch, opts: delivered.extend(batch),
        name="fine",
        max_size=100,
        flush_interval=BIG,
    )
    slow.insert_batch([1, 2])
    fine.insert_batch([3, 4])
    start = time.monotonic()
    databuffer.close_open_buffers(timeout=0.5)
    assert time.monotonic() - start < 0.5 + MARGIN
    assert delivered == [3, 4]
    assert fine.closed and slow.closed
    messages = [r.getMessage() for r in caplog.records]
    assert any("'slow': not flushed within 0.5s" in m and "2 in flight" in m for m in messages), messages


EXIT_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    import databuffer
    from databuffer import Buffer

    path = sys.argv[1]
    databuffer.set_exit_timeout(1.0)

    def record(name, batch):
        with open(path, "a") as f:
            f.write(json.dumps({"buffer": name, "batch": batch}) + "\\n")

    class Stuck(Buffer):
        def handle_flush(self, batch, opts):
            raise ValueError("fail")

        def handle_flush_error(self, batch, opts, error):
            threading.Event().wait()  # never returns: flush_timeout does not bound it

    stuck = Stuck(name="stuck", max_size=1000, flush_interval=3600, flush_timeout=0.2)
    stuck.insert_batch([1, 2, 3])
    fine = Buffer(name="fine", handle_flush=lambda b, o: record("fine", b),
                  max_size=1000, flush_interval=3600)
    fine.insert_batch([4, 5])
    """
)


def test_the_exit_flush_is_capped_and_never_hangs_the_interpreter(core_name: str, tmp_path: Path) -> None:
    out = tmp_path / "flushed.jsonl"
    start = time.monotonic()
    proc = run_python(EXIT_SCRIPT, str(out), core=core_name, timeout=30)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert took < 15  # the cap is 1 s; the rest is interpreter start-up on a loaded machine
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"buffer": "fine", "batch": [4, 5]}
    ]
    assert "buffer 'stuck': not flushed within 1.0s" in proc.stderr
    assert "3 items left unflushed (0 buffered, 3 in flight)" in proc.stderr


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import json, signal, sys, threading, time
    from databuffer import Buffer
    from databuffer._front import engine_of

    # A child started from a background job inherits SIGINT ignored, and
    # Python then raises no KeyboardInterrupt: make Ctrl-C what it is in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    call = sys.argv[1]
    release = threading.Event()
    delivered = []

    def flush(batch, opts):
        release.wait(60)
        delivered.extend(batch)

    buf = Buffer(handle_flush=flush, max_size=2, max_queued_batches=0, flush_interval=3600, flush_timeout=60)
    buf.insert_batch([0, 1])          # sealed: its flush is stuck
    buf.insert_batch([2, 3])          # the partition is full again
    main = threading.get_ident()

    def interrupt():
        deadline = time.monotonic() + 30
        engine = engine_of(buf)
        room = engine.parts[0].room
        waiting = (lambda: engine._sync_count) if call == "sync_flush" else (lambda: room.waiting)
        while not waiting() and time.monotonic() < deadline:
            time.sleep(0.005)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    start = time.monotonic()
    outcome = {}
    try:
        if call == "insert":
            buf.insert("blocked", timeout=60)
        elif call == "sync_flush":
            buf.sync_flush()           # waits for the stuck flush, without a deadline
        else:
            buf.insert_batch(["blocked", "too"], timeout=60)
    except KeyboardInterrupt as exc:
        outcome["interrupted"] = True
        outcome["notes"] = getattr(exc, "__notes__", [])
    outcome["took"] = time.monotonic() - start
    outcome["dump"] = buf.dump()
    outcome["stats"] = buf.stats()
    release.set()
    buf.insert(4)                      # still usable
    buf.sync_flush(timeout=30)
    buf.close(timeout=30)
    outcome["delivered"] = sorted(delivered)
    outcome["after"] = buf.stats()
    print(json.dumps(outcome))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("call", ["insert", "insert_batch", "sync_flush"])
def test_ctrl_c_interrupts_a_blocked_call_and_the_buffer_stays_usable(core_name: str, call: str) -> None:
    proc = run_python(CTRL_C_SCRIPT, call, core=core_name, timeout=30)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["interrupted"] is True
    assert outcome["took"] < 30
    # Nothing of the interrupted call was stored.
    assert outcome["dump"] == [2, 3]
    assert outcome["stats"]["inserted"] == 4
    if call == "insert_batch":
        assert outcome["notes"] == [
            "insert_batch stored 0 leading items of the call before it was interrupted"
        ]
    assert outcome["delivered"] == [0, 1, 2, 3, 4]
    after = outcome["after"]
    assert (after["inserted"], after["flushed"], after["size"], after["in_flight"]) == (5, 5, 0, 0)


def test_a_deadline_past_an_insert_waiting_for_room_raises_buffer_full_in_time(
    make_buffer: Any, gates: Any
) -> None:
    release = gates()
    buf = make_buffer(
        handle_flush=lambda b, o: release.wait(60), max_size=1, max_queued_batches=0, flush_interval=BIG
    )
    buf.insert(0)
    buf.insert(1)
    wait_for(lambda: buf.info()[0]["flushing"], timeout=30)
    start = time.monotonic()
    with pytest.raises(databuffer.BufferFull):
        buf.insert(2, timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 0.3 + MARGIN
