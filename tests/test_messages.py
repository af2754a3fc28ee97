"""What the errors and logs say: the user's class and option names, what to do next, plurals.

Against both cores, and ``AsyncBuffer`` where it applies.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any

import pytest
from conftest import Background, Boom, await_for, wait_for

from databuffer import BufferClosed, BufferFull, FlushOpts, FlushTimeout, telemetry
from databuffer._front import engine_of
from databuffer._text import closest, join_and, plural


def noop(batch: list[Any], opts: FlushOpts) -> None:
    return None


async def anoop(batch: list[Any], opts: FlushOpts) -> None:
    return None


# -- the helpers ---------------------------------------------------------------


def test_plural_agrees_with_the_count() -> None:
    assert [plural(n, "item") for n in (0, 1, 2)] == ["0 items", "1 item", "2 items"]
    assert [plural(n, "batch") for n in (1, 3)] == ["1 batch", "3 batches"]
    assert [plural(n, "flush") for n in (1, 2)] == ["1 flush", "2 flushes"]
    assert plural(1, "leading item") == "1 leading item"
    assert plural(4, "leading item") == "4 leading items"


def test_join_and_closest() -> None:
    assert [join_and(w) for w in ([], ["a"], ["a", "b"])] == ["", "a", "a and b"]
    assert join_and(["a", "b", "c"]) == "a, b and c"
    options = ("max_size", "max_size_jitter", "flush_timeout", "insert_timeout")
    assert closest("maxsize", options) == ["max_size"]
    assert closest("timeout", options) == ["flush_timeout", "insert_timeout"]
    assert closest("bogus_option", options) == []


# -- constructors: unknown options and positional arguments --------------------


@pytest.fixture(params=["Buffer", "AsyncBuffer"])
def buffer_class(request: pytest.FixtureRequest, Buffer: type, AsyncBuffer: type) -> type:
    """``Buffer`` or ``AsyncBuffer``, over the core under test."""
    return Buffer if request.param == "Buffer" else AsyncBuffer


def _flush_fn(cls: type) -> Any:
    return anoop if "Async" in cls.__name__ else noop


def test_an_unknown_option_names_the_class_the_option_and_the_closest_one(buffer_class: type) -> None:
    name = buffer_class.__name__
    with pytest.raises(
        TypeError, match=rf"^{name}\(\) got an unknown option 'maxsize' \(did you mean 'max_size'\?\)$"
    ):
        buffer_class(handle_flush=_flush_fn(buffer_class), maxsize=10)


def test_an_unknown_option_in_a_subclass_names_the_subclass(buffer_class: type) -> None:
    class EventBuffer(buffer_class):  # type: ignore[valid-type,misc]
        pass

    with pytest.raises(
        TypeError, match=r"^EventBuffer\(\) got an unknown option 'maxsize' \(did you mean 'max_size'\?\)$"
    ):
        EventBuffer(handle_flush=_flush_fn(buffer_class), maxsize=10)


def test_several_unknown_options_are_all_named(buffer_class: type) -> None:
    with pytest.raises(TypeError) as caught:
        buffer_class(handle_flush=_flush_fn(buffer_class), maxsize=10, flush_intervall=3, bogus_option=1)
    message = str(caught.value)
    assert message.startswith(f"{buffer_class.__name__}() got unknown options 'maxsize' ")
    assert "'maxsize' (did you mean 'max_size'?)" in message
    assert "'flush_intervall' (did you mean 'flush_interval'?)" in message
    assert "and 'bogus_option'; its options are handle_flush, handle_flush_error, name," in message


def test_an_option_with_two_close_names_suggests_both(buffer_class: type) -> None:
    with pytest.raises(TypeError, match=r"'timeout' \(did you mean 'flush_timeout' or 'insert_timeout'\?\)$"):
        buffer_class(handle_flush=_flush_fn(buffer_class), timeout=3)


def test_the_known_options_are_read_from_the_constructor(buffer_class: type) -> None:
    """Every keyword-only parameter of the constructor is known, in its order; nothing else."""
    code = buffer_class.__init__.__wrapped__.__code__
    parameters = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    with pytest.raises(TypeError) as caught:
        buffer_class(handle_flush=_flush_fn(buffer_class), no_such_option=1)
    assert str(caught.value).endswith(f"its options are {', '.join(parameters)}")
    assert {"max_size", "flush_timeout", "max_queued_batches", "retry_backoff_max"} <= set(parameters)


def test_a_positional_function_is_pointed_to_handle_flush(buffer_class: type) -> None:
    fn = _flush_fn(buffer_class)
    name = buffer_class.__name__
    with pytest.raises(TypeError) as caught:
        buffer_class(fn)
    assert str(caught.value) == (
        f"{name}() takes its options as keywords only, but got 1 positional argument ({fn!r}): "
        f"pass it by name, {name}(handle_flush={fn.__name__})"
    )


def test_several_positional_arguments_are_counted_and_shown(buffer_class: type) -> None:
    name = buffer_class.__name__
    with pytest.raises(
        TypeError,
        match=rf"^{name}\(\) takes its options as keywords only, but got 2 positional arguments "
        rf"\(<function .*>, 'events'\): name each one, as in {name}\(handle_flush=\w+, max_size=1000\)$",
    ):
        buffer_class(_flush_fn(buffer_class), "events")


def test_a_positional_argument_of_a_subclass_with_the_method_is_not_taken_for_handle_flush(
    buffer_class: type,
) -> None:
    class EventBuffer(buffer_class):  # type: ignore[valid-type,misc]
        async def handle_flush(self, batch: list[Any], opts: FlushOpts) -> None:
            return None

    with pytest.raises(
        TypeError,
        match=r"^EventBuffer\(\) takes its options as keywords only, but got 1 positional argument "
        r"\(<function noop at .*>\): name each one, as in EventBuffer\(max_size=1000, flush_interval=5.0\)$",
    ):
        EventBuffer(noop)


def test_a_long_positional_argument_is_shown_cut_short(buffer_class: type) -> None:
    with pytest.raises(TypeError, match=r"1 positional argument \('x{76}\.\.\.\)"):
        buffer_class("x" * 1000)


def test_a_subclass_with_its_own_init_passes_its_options_on(buffer_class: type, core_name: str) -> None:
    """A subclass whose __init__ takes more parameters, and calls super().__init__(**options)."""

    class EventBuffer(buffer_class):  # type: ignore[valid-type,misc]
        def __init__(self, sink: list[Any], table: str = "events", **options: Any) -> None:
            self.sink = sink
            self.table = table
            super().__init__(**options)

    sink: list[Any] = []
    buf = EventBuffer(sink, "t", handle_flush=_flush_fn(buffer_class), max_size=7, flush_interval=3600)
    try:
        assert (buf.sink, buf.table, buf.name) == (sink, "t", "EventBuffer")
        assert buf.info()[0]["flush_size"] == 7
        with pytest.raises(TypeError, match=r"^EventBuffer\(\) got an unknown option 'maxsize'"):
            EventBuffer(sink, handle_flush=_flush_fn(buffer_class), maxsize=7)
    finally:
        _close(buf)

    class PositionalSuper(buffer_class):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__(_flush_fn(buffer_class))

    with pytest.raises(TypeError, match=r"^PositionalSuper\(\) takes its options as keywords only"):
        PositionalSuper()


def _close(buf: Any) -> None:
    if hasattr(buf, "aclose"):
        import asyncio

        asyncio.run(buf.aclose(timeout=30))
    else:
        buf.close(timeout=30)


def test_the_signature_stays_the_constructors(buffer_class: type) -> None:
    import inspect

    parameters = inspect.signature(buffer_class).parameters
    assert list(parameters)[:3] == ["handle_flush", "handle_flush_error", "name"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())


# -- constructors: the callbacks ---------------------------------------------------


def test_no_handle_flush_says_how_to_give_one(buffer_class: type) -> None:
    spelled = "async def" if "Async" in buffer_class.__name__ else "def"
    with pytest.raises(
        TypeError,
        match=rf"^{buffer_class.__name__}\(\) needs a handle_flush: pass handle_flush=fn, a function "
        rf"fn\(batch, opts\), or define the method {spelled} handle_flush\(self, batch, opts\) "
        "in a subclass$",
    ):
        buffer_class(max_size=3)


def test_handle_flush_twice_names_the_class(buffer_class: type) -> None:
    class EventBuffer(buffer_class):  # type: ignore[valid-type,misc]
        async def handle_flush(self, batch: list[Any], opts: FlushOpts) -> None:
            return None

    with pytest.raises(
        TypeError,
        match=r"^EventBuffer\(\) got handle_flush='noop', but EventBuffer defines the method handle_flush "
        r"already: use one or the other$",
    ):
        EventBuffer(handle_flush=noop)


def test_a_callback_that_is_not_callable_is_named_with_its_type(buffer_class: type) -> None:
    with pytest.raises(
        TypeError, match=r"^handle_flush must be a function fn\(batch, opts\), not str 'not callable'$"
    ):
        buffer_class(handle_flush="not callable")
    with pytest.raises(
        TypeError, match=r"^handle_flush_error must be a function fn\(batch, opts, error\), not int 42$"
    ):
        buffer_class(handle_flush=_flush_fn(buffer_class), handle_flush_error=42)


# -- a subclass that does not call super().__init__ ---------------------------------


def test_a_buffer_whose_init_did_not_run_says_to_call_super_init(Buffer: type) -> None:
    class EventBuffer(Buffer):
        def __init__(self, sink: list[Any]) -> None:
            self.sink = sink  # and no super().__init__()

        def handle_flush(self, batch: list[Any], opts: FlushOpts) -> None:
            return None

    buf = EventBuffer([])
    expected = re.escape(
        "EventBuffer is not set up: its __init__ must call super().__init__(...) before the buffer is used"
    )
    for call in (lambda: buf.insert(1), lambda: buf.insert_batch([1]), buf.size, buf.flush):
        with pytest.raises(RuntimeError, match=f"^{expected}$"):
            call()


def test_an_init_that_runs_twice_says_so(make_buffer: Any) -> None:
    buf = make_buffer(handle_flush=noop, flush_interval=3600)
    with pytest.raises(
        RuntimeError,
        match=rf"^{type(buf).__name__}\.__init__ ran twice on the same buffer: a buffer is set up once; "
        "make a new one instead$",
    ):
        buf.__init__(handle_flush=noop, flush_interval=3600)


# -- telemetry ---------------------------------------------------------------------


def _handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
    return None


def test_attach_refuses_a_databuffer_event_that_is_never_emitted() -> None:
    with pytest.raises(ValueError) as caught:
        telemetry.attach("typo", ("data_buffer", "flush", "stopp"), _handler)
    message = str(caught.value)
    assert message.startswith(
        "databuffer never emits the event ('data_buffer', 'flush', 'stopp') "
        "(did you mean ('data_buffer', 'flush', 'stop')?), so a handler attached to it would never run; "
        "the events it emits, telemetry.EVENTS, are ('data_buffer', 'insert', 'start'), "
    )
    for event in telemetry.EVENTS:
        assert repr(event) in message
    assert telemetry.list_handlers() == []


def test_attach_many_refuses_them_before_attaching_any() -> None:
    with pytest.raises(ValueError, match=r"never emits the event \('data_buffer', 'insert'\)"):
        telemetry.attach_many("half", [telemetry.FLUSH_STOP, ("data_buffer", "insert")], _handler)
    with pytest.raises(ValueError, match=r"never emits the event \('data_buffer',\)"):
        telemetry.attach_many("prefix", [("data_buffer",)], _handler)
    assert telemetry.list_handlers() == []


def test_every_event_databuffer_emits_and_any_other_library_s_may_be_attached() -> None:
    assert telemetry.EVENTS == (
        telemetry.INSERT_START,
        telemetry.INSERT_STOP,
        telemetry.INSERT_EXCEPTION,
        telemetry.INSERT_DROP,
        telemetry.FLUSH_START,
        telemetry.FLUSH_STOP,
        telemetry.FLUSH_EXCEPTION,
        telemetry.FLUSH_RETRY,
    )
    assert telemetry.INSERT_DROP == ("data_buffer", "insert", "drop")
    telemetry.attach_many("all", list(telemetry.EVENTS), _handler)
    telemetry.attach("mine", ("my_app", "flush", "stopp"), _handler)
    telemetry.attach("nested", ["my_app", "data_buffer"], _handler)
    assert len(telemetry.list_handlers()) == len(telemetry.EVENTS) + 2


def test_attach_says_what_an_event_and_a_handler_are() -> None:
    with pytest.raises(
        TypeError,
        match=r"^an event is a tuple of strings, such as \('data_buffer', 'flush', 'stop'\), "
        r"not str 'data_buffer.flush.stop'$",
    ):
        telemetry.attach("str", "data_buffer.flush.stop", _handler)
    with pytest.raises(
        TypeError, match=r"^attach_many\(\) takes a list of events, not one event .*use attach\(\)"
    ):
        telemetry.attach_many("one", telemetry.FLUSH_STOP, _handler)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"^a telemetry handler must be a function fn\(event, measurements, metadata, config\), ",
    ):
        telemetry.attach("fn", telemetry.FLUSH_STOP, 3)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^handler_id must be hashable \(a str or a tuple, say\), not list \['x'\]$"
    ):
        telemetry.attach(["x"], telemetry.FLUSH_STOP, _handler)
    telemetry.attach("twice", telemetry.FLUSH_STOP, _handler)
    with pytest.raises(
        ValueError, match=r"^a telemetry handler with id 'twice' is attached already: detach\(\) it"
    ):
        telemetry.attach("twice", telemetry.FLUSH_START, _handler)
    assert telemetry.list_handlers() == [
        {"id": "twice", "event": telemetry.FLUSH_STOP, "function": _handler, "config": None}
    ]


# -- counts: one item, one batch ---------------------------------------------------


def test_a_failed_batch_of_one_item_is_logged_and_raised_in_the_singular(
    make_buffer: Any, caplog: Any
) -> None:
    def fail(batch: list[Any], opts: FlushOpts) -> None:
        raise Boom("sink down")

    caplog.set_level(logging.ERROR, logger="databuffer")
    buf = make_buffer(handle_flush=fail, name="one", max_size=100, flush_interval=3600)
    buf.insert("only")
    with pytest.raises(ExceptionGroup) as caught:
        buf.sync_flush(timeout=30)
    assert str(caught.value) == "sync_flush() of buffer 'one': 1 batch failed (1 sub-exception)"
    (record,) = [r for r in caplog.records if r.name == "databuffer"]
    assert record.getMessage() == (
        "buffer 'one' partition 0: handle_flush failed for a batch of 1 item (trigger manual, attempt 1); "
        "the batch counts as failed and is not kept: pass max_retries=n to retry it, "
        "or handle_flush_error=fn to keep it"
    )


@pytest.mark.anyio
async def test_an_async_failed_batch_of_one_item_is_logged_in_the_singular(
    AsyncBuffer: type, caplog: Any
) -> None:
    async def fail(batch: list[Any], opts: FlushOpts) -> None:
        raise Boom("sink down")

    caplog.set_level(logging.ERROR, logger="databuffer")
    async with AsyncBuffer(handle_flush=fail, name="one", max_size=100, flush_interval=3600) as buf:
        buf.insert("only")
        with pytest.raises(ExceptionGroup, match=r"^sync_flush\(\) of buffer 'one': 1 batch failed"):
            await buf.sync_flush(timeout=30)
    (record,) = [r for r in caplog.records if r.name == "databuffer"]
    message = record.getMessage()
    assert "a batch of 1 item (trigger manual, attempt 1); the batch counts as failed" in message


def test_buffer_full_counts_one_item_one_batch_one_leading_item(make_buffer: Any, gates: Any) -> None:
    release = gates()
    buf = make_buffer(
        handle_flush=lambda b, o: release.wait(30),
        name="full",
        max_size=2,
        max_queued_batches=1,
        flush_interval=3600,
    )
    buf.insert_batch([0, 1])  # sealed, and stuck in handle_flush
    wait_for(lambda: buf.info()[0]["flushing"], timeout=30)
    buf.insert_batch([2, 3])  # sealed, queued
    buf.insert("x")
    with pytest.raises(BufferFull) as caught:
        buf.insert_batch([4, 5], timeout=0.05)
    assert caught.value.stored == 1
    assert str(caught.value) == (
        "buffer 'full' partition 0 is full (2 items) while its previous batch is flushing and 1 more batch "
        "queued for its flusher; gave up waiting for room after 0.05s with 1 leading item stored"
    )


def test_on_full_raise_counts_one_leading_item(make_buffer: Any, gates: Any) -> None:
    release = gates()
    buf = make_buffer(
        handle_flush=lambda b, o: release.wait(30),
        name="full",
        max_size=2,
        max_queued_batches=0,
        on_full="raise",
        flush_interval=3600,
    )
    buf.insert_batch([0, 1])  # sealed, and stuck in handle_flush
    wait_for(lambda: buf.info()[0]["flushing"], timeout=30)
    buf.insert("x")
    with pytest.raises(BufferFull) as caught:
        buf.insert_batch([4, 5])
    assert caught.value.stored == 1
    assert str(caught.value) == (
        "buffer 'full' partition 0 is full (2 items) while its previous batch is flushing; "
        "on_full='raise' does not wait for room (1 leading item of the batch stored)"
    )


def test_a_close_during_insert_batch_counts_the_leading_items(make_buffer: Any, gates: Any) -> None:
    release = gates()
    buf = make_buffer(
        handle_flush=lambda b, o: release.wait(30), max_size=2, max_queued_batches=0, flush_interval=3600
    )
    buf.insert_batch([0, 1])
    wait_for(lambda: buf.info()[0]["flushing"], timeout=30)
    buf.insert("x")
    waiting = Background(buf.insert_batch, ["a", "b", "c"], timeout=30)
    wait_for(lambda: buf.info()[0]["size"] == 2, timeout=30)  # "a" stored, then it waits
    closing = Background(buf.close, timeout=30)
    waiting.wait()
    release.set()
    closing.wait()
    assert isinstance(waiting.error, BufferClosed) and waiting.error.stored == 1
    assert str(waiting.error) == (
        f"buffer {buf.name!r} was closed while insert_batch was storing its items: 1 leading item stored, "
        "the rest not"
    )


# -- timeouts of sync_flush and close: what is left, and what to do ----------------


def test_a_timed_out_close_says_close_again_waits_for_the_rest(make_buffer: Any, gates: Any) -> None:
    release = gates()
    buf = make_buffer(
        handle_flush=lambda b, o: release.wait(30), name="slow", max_size=100, flush_interval=3600
    )
    buf.insert_batch([1, 2])
    with pytest.raises(
        TimeoutError,
        match=r"^sync_flush\(timeout=0.05\) of buffer 'slow' ran out of time with 2 items not yet flushed; "
        r"the flushes go on: call sync_flush\(\) again to wait for them$",
    ):
        buf.sync_flush(timeout=0.05)
    with pytest.raises(
        TimeoutError,
        match=r"^close\(timeout=0.05\) of buffer 'slow' ran out of time with 2 items not yet flushed; "
        r"the buffer is closed to inserts and its flushes go on: call close\(\) again to wait for the rest$",
    ):
        buf.close(timeout=0.05)
    # Another thread's close() is flushing it: this one runs out waiting for it.
    other = Background(buf.close, timeout=30)
    wait_for(lambda: engine_of(buf)._closer is not None, timeout=30)
    with pytest.raises(
        TimeoutError,
        match=r"^close\(timeout=0.01\) of buffer 'slow' ran out of time: another thread's close\(\) is still "
        r"flushing it; call close\(\) again to wait for it$",
    ):
        buf.close(timeout=0.01)
    release.set()
    other.wait()
    assert other.error is None
    buf.close()  # as the message says
    assert buf.stats()["flushed"] == 2


@pytest.mark.anyio
async def test_a_timed_out_aclose_says_aclose_again_waits_for_the_rest(AsyncBuffer: type) -> None:
    release = asyncio.Event()

    async def slow(batch: list[Any], opts: FlushOpts) -> None:
        await release.wait()

    buf = AsyncBuffer(handle_flush=slow, name="slow", max_size=100, flush_interval=3600)
    async with buf:
        buf.insert(1)
        with pytest.raises(
            TimeoutError,
            match=r"^sync_flush\(timeout=0.05\) of \w+ 'slow' ran out of time with 1 item not yet flushed; "
            r"the flushes go on: await sync_flush\(\) again to wait for them$",
        ):
            await buf.sync_flush(timeout=0.05)
        with pytest.raises(
            TimeoutError,
            match=r"^aclose\(timeout=0.05\) of \w+ 'slow' ran out of time with 1 item not yet flushed; "
            r"the buffer is closed to inserts and its flushes go on: "
            r"await aclose\(\) again to wait for the rest$",
        ):
            await buf.aclose(timeout=0.05)
        release.set()
    assert buf.stats()["flushed"] == 1


# -- FlushTimeout: where handle_flush was --------------------------------------------


def _line_of(fn: Any, text: str) -> int:
    """The line number of the line of ``fn``'s source that holds ``text``."""
    import inspect

    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_a_flush_timeout_carries_where_handle_flush_was_stuck(
    make_buffer: Any, gates: Any, caplog: Any
) -> None:
    release = gates()
    notes_at_event: list[list[str]] = []

    def write_rows(batch: list[Any], opts: FlushOpts) -> None:
        release.wait(30)  # stuck here

    def on_exception(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        notes_at_event.append(list(getattr(metadata["reason"], "__notes__", [])))

    telemetry.attach("notes", telemetry.FLUSH_EXCEPTION, on_exception)
    caplog.set_level(logging.ERROR, logger="databuffer")
    buf = make_buffer(
        handle_flush=write_rows, name="stuck", max_size=100, flush_interval=3600, flush_timeout=0.1
    )
    buf.insert(1)
    buf.flush()
    wait_for(lambda: any("handle_flush failed" in r.getMessage() for r in caplog.records), timeout=30)
    record = next(r for r in caplog.records if "handle_flush failed" in r.getMessage())
    assert record.exc_info is not None
    error = record.exc_info[1]
    assert isinstance(error, FlushTimeout)
    assert str(error) == (
        "handle_flush of buffer 'stuck' partition 0 ran past flush_timeout=0.1s with a batch of 1 item: "
        "the buffer stopped waiting for the call (it goes on in its thread, its outcome ignored) and a new "
        "flusher took over; raise flush_timeout if the sink is only slow"
    )
    (note,) = error.__notes__
    assert note.startswith(
        "handle_flush was here when flush_timeout ran out (thread 'databuffer-stuck-flusher-0'), "
        "most recent call last:\n"
        f'  File "{__file__}", line {_line_of(write_rows, "stuck here")}, in write_rows\n'
        "    release.wait(30)  # stuck here\n"
    ), note
    # From handle_flush inward: none of the buffer's own frames.
    assert "databuffer" not in note.split("\n", 1)[1]
    # Already there for the telemetry handlers and the log.
    assert notes_at_event == [[note]]
    assert note in caplog.text


@pytest.mark.anyio
async def test_an_async_flush_timeout_carries_where_handle_flush_was_awaiting(AsyncBuffer: type) -> None:
    reported: list[BaseException] = []

    async def fetch(batch: list[Any]) -> None:
        await asyncio.sleep(30)  # awaiting here

    async def write_rows(batch: list[Any], opts: FlushOpts) -> None:
        await fetch(batch)  # which awaits fetch

    async with AsyncBuffer(
        handle_flush=write_rows,
        handle_flush_error=lambda batch, opts, error: reported.append(error),
        name="stuck",
        max_size=100,
        flush_interval=3600,
        flush_timeout=0.1,
    ) as buf:
        buf.insert(1)
        await buf.flush()
        await await_for(lambda: reported, timeout=30)
    (error,) = reported
    assert isinstance(error, FlushTimeout)
    assert str(error) == (
        "handle_flush of buffer 'stuck' partition 0 ran past flush_timeout=0.1s with a batch of 1 item and "
        "was cancelled; raise flush_timeout if the sink is only slow"
    )
    (note,) = error.__notes__
    assert note.startswith(
        "handle_flush was here when flush_timeout ran out (task 'databuffer-stuck-flusher-0'), "
        "most recent call last:\n"
        f'  File "{__file__}", line {_line_of(write_rows, "which awaits")}, in write_rows\n'
        "    await fetch(batch)  # which awaits fetch\n"
        f'  File "{__file__}", line {_line_of(fetch, "awaiting here")}, in fetch\n'
        "    await asyncio.sleep(30)  # awaiting here\n"
    ), note
    assert "databuffer" not in note.split("\n", 1)[1]


@pytest.mark.anyio
async def test_an_async_flush_timeout_that_was_swallowed_still_carries_the_stack(AsyncBuffer: type) -> None:
    reported: list[BaseException] = []

    async def stubborn(batch: list[Any], opts: FlushOpts) -> None:
        try:
            await asyncio.sleep(30)  # cancelled here
        except asyncio.CancelledError:
            pass  # and returns late

    async with AsyncBuffer(
        handle_flush=stubborn,
        handle_flush_error=lambda batch, opts, error: reported.append(error),
        max_size=100,
        flush_interval=3600,
        flush_timeout=0.1,
    ) as buf:
        buf.insert(1)
        await buf.flush()
        await await_for(lambda: reported, timeout=30)
    (error,) = reported
    assert isinstance(error, FlushTimeout)
    (note,) = error.__notes__
    assert f"line {_line_of(stubborn, 'cancelled here')}, in stubborn\n" in note


# -- what the logs say when a callback or a thread fails ---------------------------


def test_a_raising_handle_flush_error_is_logged_with_its_batch(make_buffer: Any, caplog: Any) -> None:
    def fail(batch: list[Any], opts: FlushOpts) -> None:
        raise Boom("sink down")

    def broken(batch: list[Any], opts: FlushOpts, error: BaseException) -> None:
        raise Boom("error handler down")

    caplog.set_level(logging.ERROR, logger="databuffer")
    buf = make_buffer(
        handle_flush=fail, handle_flush_error=broken, name="eh", max_size=100, flush_interval=3600
    )
    buf.insert("only")
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    (record,) = [r for r in caplog.records if r.name == "databuffer"]
    assert record.getMessage() == (
        "buffer 'eh' partition 0: handle_flush_error raised while handling a failed batch of 1 item; "
        "the batch is counted as failed and the buffer goes on"
    )


@pytest.mark.anyio
async def test_an_async_raising_handle_flush_error_is_logged_with_its_batch(
    AsyncBuffer: type, caplog: Any
) -> None:
    async def fail(batch: list[Any], opts: FlushOpts) -> None:
        raise Boom("sink down")

    async def broken(batch: list[Any], opts: FlushOpts, error: BaseException) -> None:
        raise Boom("error handler down")

    caplog.set_level(logging.ERROR, logger="databuffer")
    async with AsyncBuffer(
        handle_flush=fail, handle_flush_error=broken, name="eh", max_size=100, flush_interval=3600
    ) as buf:
        buf.insert_batch([1, 2])
        with pytest.raises(ExceptionGroup):
            await buf.sync_flush(timeout=30)
    (record,) = [r for r in caplog.records if r.name == "databuffer"]
    assert record.getMessage() == (
        "buffer 'eh' partition 0: handle_flush_error raised while handling a failed batch of 2 items; "
        "the batch is counted as failed and the buffer goes on"
    )


def test_a_thread_that_cannot_be_replaced_is_logged_with_what_happens_next(
    make_buffer: Any, monkeypatch: Any, caplog: Any
) -> None:
    def end_the_flusher(batch: list[Any], opts: FlushOpts) -> None:
        raise SystemExit  # ends the flusher thread once the batch is counted

    caplog.set_level(logging.WARNING, logger="databuffer")
    buf = make_buffer(handle_flush=end_the_flusher, name="norepl", max_size=1, flush_interval=3600)
    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name.startswith("databuffer-norepl-flusher"):
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    buf.insert(1)
    expected = (
        "buffer 'norepl': cannot start a thread to replace one that ended (can't start new thread); "
        "the next flush() or close() tries again"
    )
    wait_for(lambda: any(r.getMessage() == expected for r in caplog.records), timeout=30)
    monkeypatch.undo()
    buf.flush()  # as the log says
    wait_for(lambda: any("started a new flusher for partition 0" in r.getMessage() for r in caplog.records))


@pytest.mark.anyio
async def test_an_async_buffer_started_on_two_loops_says_to_make_one_per_loop(AsyncBuffer: type) -> None:
    buf = AsyncBuffer(handle_flush=anoop, name="one-loop", flush_interval=3600)
    async with buf:
        errors: list[BaseException] = []

        def other_loop() -> None:
            try:
                asyncio.run(buf.start())
            except RuntimeError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_loop)
        thread.start()
        thread.join(30)
    (error,) = errors
    assert str(error) == (
        f"{type(buf).__name__} 'one-loop' is bound to another event loop, the one it was started on: "
        "an AsyncBuffer runs on one loop; make one buffer per event loop"
    )
