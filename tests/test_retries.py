"""Retries: max_retries, retry_backoff, retry_backoff_max, retry_on, opts.attempt
and the ("data_buffer", "flush", "retry") event."""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import pytest
from conftest import AlwaysOne, Boom, Errors, Events, wait_for

from databuffer import FlushTimeout, telemetry
from databuffer._front import engine_of

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


# -- retry_on -------------------------------------------------------------------------


class Other(Exception):
    """An error that the tests' retry_on does not retry."""


class Scripted:
    """A handle_flush that raises, for a batch's attempt n, the n-th error of ``errors`` (then returns).

    A batch that starts with ``"ok"`` never fails.
    """

    def __init__(self, *errors: BaseException) -> None:
        self.errors = errors
        self.attempts: list[int] = []
        self.stamps: list[float] = []

    def __call__(self, batch: list[Any], opts: Any) -> Any:
        self.attempts.append(opts.attempt)
        self.stamps.append(time.monotonic())
        if batch[0] != "ok" and opts.attempt <= len(self.errors):
            raise self.errors[opts.attempt - 1]
        return ("ok", opts.attempt)


class Predicate:
    """A retry_on predicate that records the errors it is asked about and answers with ``answer``."""

    def __init__(self, answer: Any = True) -> None:
        self.answer = answer
        self.asked: list[BaseException] = []

    def __call__(self, error: BaseException) -> Any:
        self.asked.append(error)
        return self.answer(error) if callable(self.answer) else self.answer


def databuffer_records(caplog: Any, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "databuffer" and r.levelno == level]


class NotAnError:
    """A class: callable, but not an exception type."""


async def a_predicate(error: BaseException) -> bool:
    return True


BAD_RETRY_ON = [
    ("ConnectionError", "'ConnectionError'"),  # a str: the name of a type, not the type
    (3, "3"),
    (True, "True"),
    ([ConnectionError], "[<class 'ConnectionError'>]"),  # a list: retry_on takes a tuple
    ((ConnectionError, int), "retry_on[1] is the class int"),
    ((ConnectionError, "TimeoutError"), "retry_on[1] is str 'TimeoutError'"),
    ((ValueError(),), "retry_on[0] is ValueError ValueError()"),
    (((ValueError,),), "retry_on[0] is tuple (<class 'ValueError'>,)"),  # nested tuples are not flattened
    (int, "the class int"),
    (NotAnError, "the class NotAnError"),
]


@pytest.mark.parametrize(("value", "shown"), BAD_RETRY_ON, ids=[repr(v) for v, _ in BAD_RETRY_ON])
def test_a_bad_retry_on_is_a_type_error_naming_the_option_and_the_value(
    Buffer: Any, AsyncBuffer: Any, value: Any, shown: str
) -> None:
    async def anoop(batch: list[Any], opts: Any) -> None:
        return None

    for build in (
        lambda: Buffer(handle_flush=lambda b, o: None, max_retries=2, retry_on=value),
        lambda: AsyncBuffer(handle_flush=anoop, max_retries=2, retry_on=value),
    ):
        with pytest.raises(TypeError) as caught:
            build()
        message = str(caught.value)
        assert message.startswith("retry_on must be "), message
        assert shown in message, message


def test_a_coroutine_function_as_retry_on_is_refused(Buffer: Any, AsyncBuffer: Any) -> None:
    async def anoop(batch: list[Any], opts: Any) -> None:
        return None

    with pytest.raises(
        TypeError, match="retry_on must be a plain callable .* coroutine function 'a_predicate'"
    ):
        AsyncBuffer(handle_flush=anoop, retry_on=a_predicate)
    with pytest.raises(
        TypeError, match="retry_on must be a plain callable .* coroutine function .*a_predicate"
    ):
        Buffer(handle_flush=lambda b, o: None, retry_on=functools.partial(a_predicate))


@pytest.mark.parametrize(
    "value",
    [None, ConnectionError, (), (ConnectionError, FlushTimeout), Predicate(), functools.partial(bool)],
    ids=["None", "one type", "empty tuple", "tuple", "callable object", "partial"],
)
def test_the_accepted_forms_of_retry_on(make_buffer: Any, value: Any) -> None:
    buf = make_buffer(handle_flush=lambda b, o: len(b), flush_interval=BIG, max_retries=1, retry_on=value)
    buf.insert(1)
    assert buf.sync_flush(timeout=30) == [1]


def test_a_failure_retry_on_rejects_goes_to_handle_flush_error_at_once(make_buffer: Any) -> None:
    handle_flush = Scripted(ConnectionError("reset"), Other("schema"), ConnectionError("never reached"))
    errors, events = Errors(), Events()
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        name="filtered",
        max_size=100,
        flush_interval=BIG,
        max_retries=5,
        retry_backoff=0,
        retry_on=(ConnectionError,),
    )
    buf.insert_batch([1, 2, 3])
    with pytest.raises(ExceptionGroup) as group:
        buf.sync_flush(timeout=30)
    assert [type(e) for e in group.value.exceptions] == [Other]
    # Retried on the ConnectionError, not on the Other: two attempts of six.
    assert handle_flush.attempts == [1, 2]
    ((batch, opts, error),) = errors.reported
    assert (batch, opts.attempt, type(error)) == ([1, 2, 3], 2, Other)
    stats = buf.stats()
    assert (stats["flushed"], stats["retried"], stats["failed"], stats["in_flight"]) == (0, 3, 3, 0)
    info = buf.info()[0]
    assert (info["retried"], info["failed"]) == (3, 3)
    # One retry event (the ConnectionError); the rejected failure ends the
    # batch as any last failure does: an exception event for attempt 2.
    assert len(events.of(telemetry.FLUSH_START)) == 1
    assert [(md["attempt"], type(md["reason"])) for _, md in events.of(telemetry.FLUSH_RETRY)] == [
        (1, ConnectionError)
    ]
    ((_, failure),) = events.of(telemetry.FLUSH_EXCEPTION)
    assert (failure["attempt"], failure["reason"], failure["buffer"]) == (2, error, "filtered")
    assert events.of(telemetry.FLUSH_STOP) == []


def test_a_rejected_first_failure_is_neither_retried_nor_backed_off(make_buffer: Any) -> None:
    handle_flush = Scripted(Other("no"))
    errors, events = Errors(), Events()
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        max_retries=3,
        retry_backoff=BIG,  # a backoff would outlast the test
        retry_backoff_max=BIG,
        retry_on=ConnectionError,
    )
    engine_of(buf).random = AlwaysOne()  # every backoff drawn would be the whole hour
    buf.insert_batch(["a", "b"])
    t0 = time.monotonic()
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    assert time.monotonic() - t0 < 30
    assert handle_flush.attempts == [1]
    assert [(b, o.attempt, type(e)) for b, o, e in errors.reported] == [(["a", "b"], 1, Other)]
    assert events.of(telemetry.FLUSH_RETRY) == []
    assert [md["attempt"] for _, md in events.of(telemetry.FLUSH_EXCEPTION)] == [1]
    stats = buf.stats()
    assert (stats["retried"], stats["failed"]) == (0, 2)


def test_a_predicate_is_asked_about_each_failure_while_retries_are_left(make_buffer: Any) -> None:
    first, second, third = ConnectionError("1"), TimeoutError("2"), ConnectionError("3")
    handle_flush = Scripted(first, second, third)
    predicate = Predicate(lambda error: isinstance(error, OSError))
    errors = Errors()
    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        max_retries=2,
        retry_backoff=0,
        retry_on=predicate,
    )
    buf.insert(1)
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    # Asked with the error itself, after attempts 1 and 2; not after the
    # last attempt, which has no retry left to grant.
    assert predicate.asked == [first, second]
    assert handle_flush.attempts == [1, 2, 3]
    assert [(o.attempt, e) for _, o, e in errors.reported] == [(3, third)]
    assert (buf.stats()["retried"], buf.stats()["failed"]) == (2, 1)

    # A success asks nothing; without retries nothing is asked either.
    predicate.asked.clear()
    buf.insert("ok")
    assert buf.sync_flush(timeout=30) == [("ok", 1)]
    assert predicate.asked == []
    none_left = Predicate()
    plain = make_buffer(
        handle_flush=Scripted(Other("x")),
        handle_flush_error=Errors(),
        max_size=100,
        flush_interval=BIG,
        retry_on=none_left,
    )
    plain.insert(1)
    with pytest.raises(ExceptionGroup):
        plain.sync_flush(timeout=30)
    assert none_left.asked == []


def test_a_predicate_answer_counts_by_its_truth(make_buffer: Any) -> None:
    handle_flush = Scripted(Other("a"), Other("b"))
    buf = make_buffer(
        handle_flush=handle_flush,
        max_size=100,
        flush_interval=BIG,
        max_retries=3,
        retry_backoff=0,
        retry_on=Predicate(lambda error: "retry" if str(error) == "a" else []),
        handle_flush_error=Errors(),
    )
    buf.insert(1)
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    assert handle_flush.attempts == [1, 2]  # "retry" is true, [] is false


@pytest.mark.parametrize("raised", [ValueError, GeneratorExit])
def test_a_predicate_that_raises_rejects_the_retry_and_is_logged_once(
    make_buffer: Any, caplog: Any, raised: type[BaseException]
) -> None:
    caplog.set_level(logging.ERROR, logger="databuffer")

    def predicate(error: BaseException) -> bool:
        raise raised("predicate broke")

    failure = ConnectionError("reset")
    handle_flush = Scripted(failure)
    errors, events = Errors(), Events()
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        name="broken-predicate",
        max_size=100,
        flush_interval=BIG,
        max_retries=3,
        retry_backoff=BIG,
        retry_backoff_max=BIG,
        retry_on=predicate,
    )
    engine_of(buf).random = AlwaysOne()
    flusher = engine_of(buf).parts[0].thread
    buf.insert_batch([1, 2])
    with pytest.raises(ExceptionGroup) as group:
        buf.sync_flush(timeout=30)
    # The batch's own error, not the predicate's, reaches handle_flush_error and sync_flush.
    assert list(group.value.exceptions) == [failure]
    assert handle_flush.attempts == [1]
    assert [(b, o.attempt, e) for b, o, e in errors.reported] == [([1, 2], 1, failure)]
    assert events.of(telemetry.FLUSH_RETRY) == []
    assert [md["reason"] for _, md in events.of(telemetry.FLUSH_EXCEPTION)] == [failure]
    stats = buf.stats()
    assert (stats["retried"], stats["failed"], stats["in_flight"]) == (0, 2, 0)
    (record,) = [r for r in databuffer_records(caplog, logging.ERROR) if "retry_on" in r.getMessage()]
    assert "'broken-predicate'" in record.getMessage()
    assert "ConnectionError" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], raised)
    # The flusher goes on.
    buf.insert("ok")
    assert buf.sync_flush(timeout=30) == [("ok", 1)]
    assert engine_of(buf).parts[0].thread is flusher and flusher.is_alive()


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_system_exit_and_keyboard_interrupt_are_never_retried_whatever_retry_on_says(
    make_buffer: Any, raised: type[BaseException]
) -> None:
    predicate = Predicate(True)
    errors = Errors()
    handle_flush = Scripted(raised())
    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=1,
        flush_interval=BIG,
        max_retries=3,
        retry_on=predicate,
    )
    buf.insert("exit")
    wait_for(lambda: buf.stats()["failed"] == 1, timeout=30)
    assert handle_flush.attempts == [1]
    assert predicate.asked == []
    assert isinstance(errors.reported[0][2], raised)
    assert buf.stats()["retried"] == 0
    buf.insert("ok")  # a new flusher (the first ended) flushes it
    wait_for(lambda: buf.stats()["flushed"] == 1, timeout=30)
    tuple_buf = make_buffer(
        handle_flush=Scripted(raised()),
        handle_flush_error=Errors(),
        max_size=1,
        flush_interval=BIG,
        max_retries=3,
        retry_on=(BaseException,),
    )
    tuple_buf.insert("exit")
    wait_for(lambda: tuple_buf.stats()["failed"] == 1, timeout=30)
    assert tuple_buf.stats()["retried"] == 0


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_a_predicate_raising_system_exit_ends_its_flusher_after_the_batch_is_reported(
    make_buffer: Any, caplog: Any, raised: type[BaseException]
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")

    def predicate(error: BaseException) -> bool:
        raise raised()

    failure = ConnectionError("reset")
    errors = Errors()
    delivered: list[Any] = []

    def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch == ["bad"]:
            raise failure
        delivered.extend(batch)

    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=1,
        flush_interval=BIG,
        max_retries=3,
        retry_on=predicate,
    )
    first = engine_of(buf).parts[0].thread
    buf.insert("bad")
    first.join(30)
    assert not first.is_alive()
    # The batch was reported with its own error, and counted, before the thread ended.
    assert [(b, o.attempt, e) for b, o, e in errors.reported] == [(["bad"], 1, failure)]
    stats = buf.stats()
    assert (stats["failed"], stats["retried"], stats["in_flight"]) == (1, 0, 0)
    buf.insert("good")
    buf.sync_flush(timeout=30)
    assert delivered == ["good"]
    ended = f"the flusher of partition 0 ends: a flush callback raised {raised.__name__}"
    wait_for(lambda: any(ended in r.getMessage() for r in caplog.records))


@pytest.mark.parametrize(
    ("retry_on", "retried"),
    [
        (None, True),
        ((ConnectionError,), False),
        ((ConnectionError, FlushTimeout), True),
        (TimeoutError, True),
    ],
    ids=["default", "not listed", "listed", "TimeoutError"],
)
def test_a_timed_out_attempt_is_retried_as_retry_on_says(
    make_buffer: Any, gates: Any, retry_on: Any, retried: bool
) -> None:
    release = gates()
    errors = Errors()
    attempts: list[int] = []

    def handle_flush(batch: list[Any], opts: Any) -> Any:
        attempts.append(opts.attempt)
        if opts.attempt == 1:
            release.wait(30)
        return "in time"

    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        flush_timeout=0.2,
        max_retries=1,
        retry_backoff=0,
        retry_on=retry_on,
    )
    buf.insert_batch([1, 2])
    if retried:
        assert buf.sync_flush(timeout=30) == ["in time"]
        assert attempts == [1, 2]
        assert errors.reported == []
        assert (buf.stats()["retried"], buf.stats()["failed"]) == (2, 0)
    else:
        with pytest.raises(ExceptionGroup) as group:
            buf.sync_flush(timeout=30)
        assert [type(e) for e in group.value.exceptions] == [FlushTimeout]
        assert attempts == [1]
        assert [(o.attempt, type(e)) for _, o, e in errors.reported] == [(1, FlushTimeout)]
        assert (buf.stats()["retried"], buf.stats()["failed"]) == (0, 2)
