"""Retries: max_retries, retry_backoff, retry_backoff_max, opts.attempt and
the ("data_buffer", "flush", "retry") event."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import Boom, Errors, Events, wait_for

from databuffer import FlushTimeout, telemetry

BIG = 3600


class Calls:
    """A handle_flush that fails the attempts listed in ``fail`` and records every call."""

    def __init__(self, fail: set[tuple[Any, int]] | None = None, always: bool = False) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[list[Any], int]] = []
        self.fail = fail or set()
        self.always = always

    def __call__(self, batch: list[Any], opts: Any) -> Any:
        with self.lock:
            self.calls.append((list(batch), opts.attempt))
        if self.always or (batch[0], opts.attempt) in self.fail:
            raise Boom(f"attempt {opts.attempt} of {batch}")
        return ("ok", batch[0], opts.attempt)


FLUSH_EVENTS = [telemetry.FLUSH_START, telemetry.FLUSH_STOP, telemetry.FLUSH_EXCEPTION, telemetry.FLUSH_RETRY]


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("max_retries", -1, ValueError),
        ("max_retries", 1.0, TypeError),
        ("max_retries", True, TypeError),
        ("max_retries", "3", TypeError),
        ("retry_backoff", -0.1, ValueError),
        ("retry_backoff", float("nan"), ValueError),
        ("retry_backoff", float("inf"), ValueError),
        ("retry_backoff", "1", TypeError),
        ("retry_backoff_max", -1, ValueError),
        ("retry_backoff_max", None, TypeError),
    ],
)
def test_bad_retry_options_name_the_option_and_value(
    Buffer: Any, option: str, value: Any, error: type
) -> None:
    with pytest.raises(error, match=option) as caught:
        Buffer(handle_flush=lambda b, o: None, **{option: value})
    assert repr(value) in str(caught.value)


def test_without_retries_a_failure_goes_straight_to_handle_flush_error(make_buffer: Any) -> None:
    calls, errors, events = Calls(always=True), Errors(), Events()
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    buf = make_buffer(handle_flush=calls, handle_flush_error=errors, max_size=100, flush_interval=BIG)
    buf.insert_batch([1, 2])
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    assert calls.calls == [([1, 2], 1)]
    assert [(b, o.attempt) for b, o, _ in errors.reported] == [([1, 2], 1)]
    assert events.of(telemetry.FLUSH_RETRY) == []
    stats = buf.stats()
    assert (stats["failed"], stats["retried"], stats["flushed"]) == (2, 0, 0)


def test_a_batch_is_retried_until_it_succeeds(make_buffer: Any) -> None:
    calls, errors, events = Calls(fail={(1, 1), (1, 2)}), Errors(), Events()
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    buf = make_buffer(
        handle_flush=calls,
        handle_flush_error=errors,
        name="retry-buf",
        max_size=100,
        flush_interval=BIG,
        max_retries=3,
        retry_backoff=0.01,
    )
    buf.insert_batch([1, 2, 3])
    assert buf.sync_flush(timeout=30) == [("ok", 1, 3)]
    assert calls.calls == [([1, 2, 3], 1), ([1, 2, 3], 2), ([1, 2, 3], 3)]
    assert errors.reported == []
    stats = buf.stats()
    assert (stats["inserted"], stats["flushed"], stats["retried"], stats["failed"], stats["in_flight"]) == (
        3,
        3,
        6,
        0,
        0,
    )
    assert buf.info()[0]["retried"] == 6

    # One start and one stop for the batch; a retry event per failed attempt.
    assert [md["attempt"] for _, md in events.of(telemetry.FLUSH_STOP)] == [3]
    assert len(events.of(telemetry.FLUSH_START)) == 1
    assert events.of(telemetry.FLUSH_EXCEPTION) == []
    retries = events.of(telemetry.FLUSH_RETRY)
    assert [md["attempt"] for _, md in retries] == [1, 2]
    for measurements, metadata in retries:
        assert set(measurements) == {"duration", "delay", "monotonic_time"}
        assert all(isinstance(v, int) and v >= 0 for v in measurements.values())
        assert {k: metadata[k] for k in ("buffer", "partition", "size", "trigger", "kind")} == {
            "buffer": "retry-buf",
            "partition": 0,
            "size": 3,
            "trigger": "manual",
            "kind": "error",
        }
        assert isinstance(metadata["reason"], Boom)
        assert metadata["stacktrace"] is metadata["reason"].__traceback__
    # The stop event's duration spans every attempt, backoffs included.
    (stop, _), (retry2, _) = events.of(telemetry.FLUSH_STOP)[0], retries[1]
    assert stop["duration"] >= retry2["delay"]


def test_exhausted_retries_reach_handle_flush_error_once(make_buffer: Any) -> None:
    calls, errors, events = Calls(always=True), Errors(), Events()
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    buf = make_buffer(
        handle_flush=calls,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        max_retries=2,
        retry_backoff=0,
    )
    buf.insert_batch(["a", "b"])
    with pytest.raises(ExceptionGroup) as group:
        buf.sync_flush(timeout=30)
    assert [str(e) for e in group.value.exceptions] == ["attempt 3 of ['a', 'b']"]
    assert calls.calls == [(["a", "b"], 1), (["a", "b"], 2), (["a", "b"], 3)]
    ((batch, opts, error),) = errors.reported
    assert (batch, opts.attempt, str(error)) == (["a", "b"], 3, "attempt 3 of ['a', 'b']")
    assert [md["attempt"] for _, md in events.of(telemetry.FLUSH_EXCEPTION)] == [3]
    assert [m["delay"] for m, _ in events.of(telemetry.FLUSH_RETRY)] == [0, 0]
    stats = buf.stats()
    assert (stats["failed"], stats["retried"], stats["flushed"], stats["in_flight"]) == (2, 4, 0, 0)


def test_a_retry_comes_before_the_next_batch_of_its_partition(make_buffer: Any) -> None:
    calls = Calls(fail={(0, 1), (0, 2)})
    buf = make_buffer(handle_flush=calls, max_size=2, flush_interval=BIG, max_retries=2, retry_backoff=0.02)
    buf.insert_batch(range(6))  # three batches of one partition, sealed back to back
    buf.sync_flush(timeout=30)
    assert calls.calls == [([0, 1], 1), ([0, 1], 2), ([0, 1], 3), ([2, 3], 1), ([4, 5], 1)]


def test_each_attempt_gets_the_whole_batch_even_if_the_last_one_consumed_it(make_buffer: Any) -> None:
    seen: list[list[int]] = []
    errors = Errors()

    def consume(batch: list[int], opts: Any) -> None:
        seen.append(list(batch))
        batch.clear()
        raise Boom("after consuming the list")

    buf = make_buffer(
        handle_flush=consume,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        max_retries=2,
        retry_backoff=0,
    )
    buf.insert_batch([1, 2, 3])
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    assert seen == [[1, 2, 3]] * 3
    assert errors.reported[0][0] == [1, 2, 3]


def test_a_timed_out_attempt_is_retried_and_its_late_return_ignored(make_buffer: Any, gates: Any) -> None:
    release = gates()
    returned = threading.Event()
    events = Events()
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    attempts: list[int] = []

    def fn(batch: list[Any], opts: Any) -> Any:
        attempts.append(opts.attempt)
        if opts.attempt == 1:
            release.wait(30)
            returned.set()
            return "late"
        return "in time"

    buf = make_buffer(
        handle_flush=fn,
        max_size=100,
        flush_interval=BIG,
        flush_timeout=0.2,
        max_retries=1,
        retry_backoff=0,
    )
    buf.insert_batch([1, 2])
    assert buf.sync_flush(timeout=30) == ["in time"]
    assert attempts == [1, 2]
    ((_, retry),) = events.of(telemetry.FLUSH_RETRY)
    assert isinstance(retry["reason"], FlushTimeout)
    release.set()
    assert returned.wait(30)
    buf.insert(3)
    assert buf.sync_flush(timeout=30) == ["late"]  # released: a first attempt now returns in time
    stats = buf.stats()
    assert (stats["flushed"], stats["failed"], stats["retried"]) == (3, 0, 2)


def test_backoff_is_full_jitter_capped_by_retry_backoff_max(make_buffer: Any) -> None:
    events = Events()
    telemetry.attach("rec", telemetry.FLUSH_RETRY, events)
    stamps: list[float] = []

    def fn(batch: list[Any], opts: Any) -> None:
        stamps.append(time.monotonic())
        raise Boom("always")

    base, cap = 0.02, 0.05
    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=lambda b, o, e: None,
        max_size=100,
        flush_interval=BIG,
        max_retries=5,
        retry_backoff=base,
        retry_backoff_max=cap,
    )
    buf.insert(1)
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    delays = [(md["attempt"], m["delay"]) for m, md in events.of(telemetry.FLUSH_RETRY)]
    assert [a for a, _ in delays] == [1, 2, 3, 4, 5]
    for attempt, delay in delays:
        assert 0 <= delay <= min(cap, base * 2 ** (attempt - 1)) * 1e9 + 1
    # Each retry waited (at least) its drawn delay after the failed attempt.
    for (_, delay), before, after in zip(delays, stamps, stamps[1:], strict=False):
        assert after - before >= delay * 1e-9 - 0.002


def test_system_exit_is_not_retried(make_buffer: Any, caplog: Any) -> None:
    calls: list[int] = []
    errors = Errors()

    def fn(batch: list[Any], opts: Any) -> None:
        calls.append(opts.attempt)
        if batch == ["exit"]:
            raise SystemExit(3)

    buf = make_buffer(
        handle_flush=fn, handle_flush_error=errors, max_size=1, flush_interval=BIG, max_retries=3
    )
    buf.insert("exit")
    wait_for(lambda: buf.stats()["failed"] == 1, timeout=30)
    assert calls == [1]
    assert isinstance(errors.reported[0][2], SystemExit)
    buf.insert("next")
    buf.sync_flush(timeout=30)
    wait_for(lambda: buf.stats()["flushed"] == 1, timeout=30)
