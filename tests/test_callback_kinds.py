"""Callbacks of the wrong kind are refused, not counted as flushed.

``Buffer`` calls its callbacks from threads: a coroutine function there
would lose every batch while counting it flushed.  ``AsyncBuffer`` awaits
``handle_flush``: a plain function there is refused too.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import warnings
from typing import Any
from unittest import mock

import pytest
from conftest import wait_for

from databuffer import FlushOpts
from databuffer._front import engine_of


async def async_flush(batch: list[Any], opts: FlushOpts) -> None:
    pass


async def async_error(batch: list[Any], opts: FlushOpts, error: BaseException) -> None:
    pass


class AsyncCallable:
    async def __call__(self, batch: list[Any], opts: FlushOpts) -> None:
        pass


@pytest.mark.parametrize(
    "fn",
    [async_flush, functools.partial(async_flush), AsyncCallable()],
    ids=["coroutine-function", "partial", "async-__call__"],
)
def test_buffer_refuses_an_async_handle_flush_keyword(Buffer: type, fn: Any) -> None:
    with pytest.raises(TypeError, match=r"handle_flush.*AsyncBuffer") as info:
        Buffer(handle_flush=fn)
    assert "async_flush" in str(info.value) or "AsyncCallable" in str(info.value)


def test_buffer_takes_mocks_as_callbacks(make_buffer: Any) -> None:
    """A Mock has every attribute, a coroutine marker included: it is still a plain callable."""
    flush, error = mock.Mock(return_value=None), mock.MagicMock()
    buf = make_buffer(handle_flush=flush, handle_flush_error=error, flush_interval=3600)
    buf.insert(1)
    buf.sync_flush(timeout=30)
    flush.assert_called_once()
    assert flush.call_args.args[0] == [1]
    with pytest.raises(TypeError, match="AsyncBuffer"):
        make_buffer(handle_flush=mock.AsyncMock())


def test_an_awaitable_whose_close_raises_still_fails_only_its_batch(make_buffer: Any) -> None:
    """The batch fails with the TypeError; the flusher goes on (no FlushTimeout, no second flusher)."""
    failed: list[BaseException] = []

    class Awaitable:
        def __await__(self) -> Any:
            yield

        def close(self) -> None:
            raise RuntimeError("close failed")

    buf = make_buffer(
        handle_flush=lambda batch, opts: Awaitable() if batch == [1] else None,
        handle_flush_error=lambda batch, opts, error: failed.append(error),
        flush_timeout=0.2,
        flush_interval=3600,
    )
    buf.insert(1)
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    buf.insert(2)
    assert buf.sync_flush(timeout=30) == [None]
    assert [type(e) for e in failed] == [TypeError]
    # No attempt is left under the timer's watch (it would be reported as
    # timed out, and a second flusher started).
    assert engine_of(buf).parts[0].flight is None
    flushers = [t for t in threading.enumerate() if t.name.startswith(f"databuffer-{buf.name}-flusher")]
    assert len(flushers) == 1


def test_buffer_refuses_an_async_handle_flush_method(Buffer: type) -> None:
    class Sink(Buffer):  # type: ignore[misc, valid-type]
        async def handle_flush(self, batch: list[Any], opts: FlushOpts) -> None:
            pass

    with pytest.raises(TypeError, match=r"^Sink\(\) calls handle_flush from a thread.*use AsyncBuffer"):
        Sink()


def test_buffer_refuses_an_async_handle_flush_error(Buffer: type) -> None:
    with pytest.raises(TypeError, match=r"handle_flush_error.*async_error.*AsyncBuffer"):
        Buffer(handle_flush=lambda batch, opts: None, handle_flush_error=async_error)

    class Sink(Buffer):  # type: ignore[misc, valid-type]
        def handle_flush(self, batch: list[Any], opts: FlushOpts) -> None:
            pass

        async def handle_flush_error(self, batch: list[Any], opts: FlushOpts, error: BaseException) -> None:
            pass

    with pytest.raises(TypeError, match=r"handle_flush_error.*AsyncBuffer"):
        Sink()


def test_a_handle_flush_returning_a_coroutine_fails_its_batch(make_buffer: Any, caplog: Any) -> None:
    """A plain function that returns a coroutine: the batch fails with a TypeError saying why."""
    failed: list[tuple[list[Any], BaseException]] = []
    made: list[Any] = []

    def returns_a_coroutine(batch: list[Any], opts: FlushOpts) -> Any:
        coroutine = async_flush(batch, opts)
        made.append(coroutine)
        return coroutine

    buf = make_buffer(
        handle_flush=returns_a_coroutine,
        handle_flush_error=lambda batch, opts, error: failed.append((list(batch), error)),
        max_size=2,
        flush_interval=3600,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        buf.insert_batch([1, 2])
        wait_for(lambda: failed, timeout=30)
        stats = buf.stats()
        assert made[0].cr_frame is None  # closed by the buffer
        made.clear()
        gc.collect()
    ((batch, error),) = failed
    assert batch == [1, 2]
    assert isinstance(error, TypeError)
    assert "returned coroutine, an awaitable that nothing awaits" in str(error)
    assert "use AsyncBuffer" in str(error)
    assert (stats["flushed"], stats["failed"]) == (0, 2)
    # The coroutine was closed: no "coroutine ... was never awaited" warning.
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
    with pytest.raises(ExceptionGroup) as group:
        buf.insert_batch([3])
        buf.sync_flush(timeout=30)
    assert isinstance(group.value.exceptions[0], TypeError)


def test_a_handle_flush_error_returning_a_coroutine_is_logged(make_buffer: Any, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="databuffer")

    def failing(batch: list[Any], opts: FlushOpts) -> None:
        raise ValueError("nope")

    buf = make_buffer(
        handle_flush=failing,
        handle_flush_error=lambda batch, opts, error: async_error(batch, opts, error),
        flush_interval=3600,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        buf.insert(1)
        buf.flush()
        wait_for(lambda: buf.stats()["failed"] == 1, timeout=30)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    wait_for(lambda: any("handle_flush_error raised" in r.getMessage() for r in caplog.records), timeout=30)
    record = next(r for r in caplog.records if "handle_flush_error raised" in r.getMessage())
    assert record.exc_info is not None and isinstance(record.exc_info[1], TypeError)
    assert "handle_flush_error of buffer" in str(record.exc_info[1])
    assert "returned coroutine, an awaitable that nothing awaits: it did not run" in str(record.exc_info[1])


def test_async_buffer_refuses_a_plain_handle_flush(AsyncBuffer: type) -> None:
    with pytest.raises(TypeError, match=r"needs a coroutine function as handle_flush.*use Buffer"):
        AsyncBuffer(handle_flush=lambda batch, opts: None)

    class Sink(AsyncBuffer):  # type: ignore[misc, valid-type]
        def handle_flush(self, batch: list[Any], opts: FlushOpts) -> None:  # type: ignore[override]
            pass

    with pytest.raises(TypeError, match=r"needs a coroutine function as handle_flush"):
        Sink()


@pytest.mark.anyio
async def test_async_buffer_fails_a_batch_whose_handle_flush_returns_no_awaitable(AsyncBuffer: type) -> None:
    """A callable object whose kind cannot be told up front: its batch fails, saying why."""
    failed: list[BaseException] = []

    class Plain:
        def __call__(self, batch: list[Any], opts: FlushOpts) -> int:
            return len(batch)

    async with AsyncBuffer(
        handle_flush=Plain(),
        handle_flush_error=lambda batch, opts, error: failed.append(error),
        flush_interval=3600,
    ) as buf:
        buf.insert(1)
        with pytest.raises(ExceptionGroup) as group:
            await buf.sync_flush(timeout=30)
    (error,) = group.value.exceptions
    assert isinstance(error, TypeError) and "not an awaitable" in str(error)
    assert failed == [error]
    assert buf.stats()["failed"] == 1 and buf.stats()["flushed"] == 0
