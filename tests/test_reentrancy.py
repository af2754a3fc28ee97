"""Re-entrancy: every operation called from handle_flush, handle_flush_error or
a telemetry handler either works or raises a RuntimeError saying why; none
deadlocks."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import wait_for

from databuffer import BufferClosed, BufferFull, telemetry

BIG = 3600
CALLS = ["insert", "insert_batch", "flush", "sync_flush", "dump", "size", "info", "stats", "close"]
WHERE = ["handle_flush", "handle_flush_error", "flush_telemetry", "insert_telemetry"]
# Waiting for flushes from inside a flush would wait for itself.
REFUSED = {"sync_flush", "close"}


def _call(buf: Any, call: str) -> Any:
    if call == "insert":
        return buf.insert("inner")
    if call == "insert_batch":
        return buf.insert_batch(["inner", "inner2"])
    if call in ("sync_flush", "close"):
        return getattr(buf, call)(timeout=10)
    return getattr(buf, call)()


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("where", WHERE)
def test_operations_from_callbacks_work_or_refuse(make_buffer: Any, where: str, call: str) -> None:
    outcome: dict[str, Any] = {}
    done = threading.Event()
    delivered: list[Any] = []
    lock = threading.Lock()

    def run_once() -> None:
        with lock:
            if "started" in outcome:
                return
            outcome["started"] = time.monotonic()
        try:
            outcome["result"] = _call(buf, call)
        except Exception as exc:  # noqa: BLE001 - recorded for the test
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - outcome["started"]
        done.set()

    def flush(batch: list[Any], opts: Any) -> None:
        if "trigger" in batch:
            if where == "handle_flush":
                run_once()
            elif where == "handle_flush_error":
                raise ValueError("so that handle_flush_error runs")
        delivered.extend(batch)

    def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        if where == "handle_flush_error":
            run_once()

    def handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        run_once()

    if where == "flush_telemetry":
        telemetry.attach("reenter", telemetry.FLUSH_STOP, handler)
    buf = make_buffer(
        handle_flush=flush, handle_flush_error=on_error, max_size=100, flush_interval=BIG, insert_timeout=20
    )
    if where == "insert_telemetry":
        telemetry.attach("reenter", telemetry.INSERT_START, handler)
    try:
        buf.insert("trigger")
    except BufferClosed:
        assert (where, call) == ("insert_telemetry", "close")  # closed by the handler, before it stored
    if where != "insert_telemetry":
        buf.flush()
    assert done.wait(30), "the call from the callback did not return"
    assert outcome["took"] < 10

    if call in REFUSED and where != "insert_telemetry":
        error = outcome["error"]
        assert isinstance(error, RuntimeError)
        assert f"{call}() of buffer" in str(error)
        assert "cannot be called from its own flush callbacks" in str(error)
        assert not buf.closed
    else:
        assert "error" not in outcome, outcome
        result = outcome["result"]
        expected_type = {"dump": list, "size": int, "info": list, "stats": dict, "sync_flush": list}
        if call in expected_type:
            assert isinstance(result, expected_type[call])
        else:
            assert result is None
    if call == "close":
        if where == "insert_telemetry":
            assert buf.closed
        return
    buf.sync_flush(timeout=30)
    if call.startswith("insert"):
        wait_for(lambda: "inner" in delivered, timeout=30)
    stats = buf.stats()
    assert stats["inserted"] == stats["flushed"] + stats["failed"] + stats["size"] + stats["in_flight"]


def test_an_insert_from_a_flush_callback_does_not_wait_for_room(make_buffer: Any) -> None:
    caught: list[BaseException] = []
    took: list[float] = []

    def flush(batch: list[Any], opts: Any) -> None:
        if batch == [0]:
            buf.insert("fits")  # the partition's one free slot
            start = time.monotonic()
            try:
                buf.insert("full")  # full while this very batch is flushing
            except BufferFull as exc:
                caught.append(exc)
            took.append(time.monotonic() - start)

    buf = make_buffer(
        handle_flush=flush, max_size=1, max_queued_batches=0, flush_interval=BIG, insert_timeout=20
    )
    buf.insert(0)
    wait_for(lambda: took, timeout=30)
    assert took[0] < 5
    assert "does not wait for room" in str(caught[0])
    assert caught[0].stored == 0
    buf.sync_flush(timeout=30)
    assert buf.stats()["flushed"] == 2


def test_insert_telemetry_handlers_that_insert_do_not_recurse(make_buffer: Any) -> None:
    seen: list[Any] = []

    def handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        seen.append(event[-1])
        buf.insert(f"from {event[-1]}")  # no events of its own: they would call this again

    telemetry.attach_many("inserter", [telemetry.INSERT_START, telemetry.INSERT_STOP], handler)
    buf = make_buffer(handle_flush=lambda b, o: None, max_size=100, flush_interval=BIG)
    buf.insert("outer")
    assert seen == ["start", "stop"]
    assert sorted(buf.dump()) == ["from start", "from stop", "outer"]
    assert telemetry.list_handlers(("data_buffer", "insert"))  # still attached: it never raised
