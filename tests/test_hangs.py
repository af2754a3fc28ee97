"""Hangs and misleading outcomes found by a chaos run, each kept fixed.

One test (or a few) per finding, through the public API, on both cores:

1. an interrupt (Ctrl-C) at any point of an insert that waits for room
   leaves nothing held: later waits honour their timeout, close() and the
   exit close finish;
2. a flusher ended by a callback is replaced at once, even while its thread
   is still alive (free-threaded builds saw it alive), and close() waits
   for a replacement being started instead of failing to join it;
3. close() after a thread ended does not wait for the timer's next round;
4. a finalizer (``__del__``) run by the garbage collector inside an insert
   that waits for room can close or flush the buffer;
5. a ``handle_flush`` that consumes its batch and fails leaves the whole
   batch to ``handle_flush_error``;
6. a cancelled ``ainsert`` says in a note whether it stored its item;
7. an insert telemetry handler raising a ``BaseException`` neither makes the
   insert look failed nor stays attached;
8. a huge retry backoff is capped instead of overflowing the sleep;
10. a constructor that fails midway stops the threads it had started.

(9 and 11, the bounds of options, are in test_limits.py.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest
from conftest import adds_up, run_python, wait_for

from databuffer import BufferClosed, BufferFull, telemetry
from databuffer._front import engine_of

BIG = 3600


# -- 1. an interrupt at any point of a wait for room ------------------------------------


def _interrupt_at(index: int) -> Any:
    """A profile function raising KeyboardInterrupt at the ``index``-th call or C-call return.

    Those are the moments a signal handler runs at: right after a C call
    returned (a lock acquired, say) and when a Python function starts.
    """
    seen = [0]

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_return"):
            if seen[0] == index:
                sys.setprofile(None)
                raise KeyboardInterrupt
            seen[0] += 1

    profile.seen = seen  # type: ignore[attr-defined]
    return profile


def _moments(call: Any) -> int:
    """How many moments ``call()`` offers to ``_interrupt_at``."""
    counter = _interrupt_at(-1)
    try:
        sys.setprofile(counter)
        call()
    except BufferFull:
        pass
    finally:
        sys.setprofile(None)
    return int(counter.seen[0])


@pytest.mark.parametrize("call", ["insert", "insert_batch"])
def test_an_interrupt_at_any_moment_of_a_wait_for_room_leaves_nothing_held(
    make_buffer: Any, core_name: str, call: str
) -> None:
    release = threading.Event()
    delivered: Counter[Any] = Counter()
    lock = threading.Lock()

    def handle_flush(batch: list[Any], opts: Any) -> None:
        release.wait(60)
        with lock:
            delivered.update(batch)

    buf = make_buffer(handle_flush=handle_flush, max_size=1, max_queued_batches=0, flush_interval=BIG)
    buf.insert("a")  # sealed: the flusher waits in handle_flush
    wait_for(lambda: buf.stats()["in_flight"] == 1)
    buf.insert("b")  # a full batch waits: the partition is full
    accepted = ["a", "b"]

    def waiting_insert(item: Any) -> None:
        if call == "insert":
            buf.insert(item, timeout=0.02)
        else:
            buf.insert_batch([item, item + "'"], timeout=0.02)

    moments = _moments(lambda: waiting_insert("dry"))
    assert moments > 10  # the sweep below covers a real wait
    interrupted = stored = 0
    for index in range(moments):
        before = buf.stats()["inserted"]
        try:
            sys.setprofile(_interrupt_at(index))
            waiting_insert(f"x{index}")
        except KeyboardInterrupt:
            interrupted += 1
        except BufferFull as full:
            assert full.stored == 0
        finally:
            sys.setprofile(None)
        # Nothing is held: a wait for room still ends at its timeout.
        started = time.monotonic()
        with pytest.raises(BufferFull):
            buf.insert("late", timeout=0.05)
        assert time.monotonic() - started < 5, f"a wait for room hung after an interrupt at moment {index}"
        stats = buf.stats()
        assert adds_up(stats)
        if stats["inserted"] != before:
            # Only the pure-Python core stores before it checks for room
            # (an append, then the check): an interrupt right between the
            # two leaves the item stored, as one right after any insert would.
            assert core_name == "py" and call == "insert", f"moment {index} stored an item"
            accepted.append(f"x{index}")
            stored += 1
    # The dry run's wait may go round more often than a later one's.
    assert interrupted > moments // 2
    release.set()
    buf.close(timeout=30)
    assert delivered == Counter(accepted)


def test_an_interrupt_in_a_wait_for_room_does_not_hang_the_exit_close() -> None:
    # A program that dies of the KeyboardInterrupt, as Ctrl-C usually ends
    # one: the exit close flushes and the process ends, within the exit cap.
    code = """
import sys, threading, time
import databuffer
from databuffer import Buffer
databuffer.set_exit_timeout(5)
release = threading.Event()
delivered = []
def handle_flush(batch, opts):
    release.wait(30)
    print("delivered", batch, flush=True)
buf = Buffer(handle_flush=handle_flush, max_size=1, max_queued_batches=0, flush_interval=3600)
buf.insert(1)
while buf.stats()["in_flight"] == 0:
    time.sleep(0.001)
buf.insert(2)
threading.Timer(0.3, release.set).start()
def profile(frame, event, arg):
    # the first C call that returns in the wait machinery (a lock acquired, say)
    if event == "c_return" and frame.f_code.co_name in ("wait", "__enter__", "_wait_for_room"):
        sys.setprofile(None)
        raise KeyboardInterrupt
sys.setprofile(profile)
buf.insert(3, timeout=10)
"""
    for core in ("c", "py"):
        started = time.monotonic()
        proc = run_python(code, core=core, timeout=60)
        assert time.monotonic() - started < 30
        assert "KeyboardInterrupt" in proc.stderr, proc.stderr
        assert proc.stdout.split() == ["delivered", "[1]", "delivered", "[2]"], (proc.stdout, proc.stderr)


# -- 2. a flusher that ended is replaced while its thread is still alive ----------------


def test_a_flusher_ended_by_a_callback_is_replaced_even_while_its_thread_is_alive(make_buffer: Any) -> None:
    # The ending flusher is held alive in a logging handler (it logs after
    # it asked for its replacement); meanwhile the buffer must flush.
    dying = threading.Event()
    done = threading.Event()
    delivered: list[Any] = []

    class Hold(logging.Handler):
        # Held in handle(), before the handler's lock: the buffer's other
        # records (a new flusher started) pass meanwhile.
        def handle(self, record: logging.LogRecord) -> bool:
            if "ends: a flush callback raised SystemExit" in record.getMessage():
                dying.set()
                done.wait(30)
            return super().handle(record)

        def emit(self, record: logging.LogRecord) -> None:
            pass

    def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch == ["exit"]:
            raise SystemExit
        delivered.extend(batch)

    hold = Hold()
    logger = logging.getLogger("databuffer")
    logger.addHandler(hold)
    try:
        buf = make_buffer(
            handle_flush=handle_flush, handle_flush_error=lambda b, o, e: None, max_size=1, flush_interval=BIG
        )
        buf.insert("exit")
        assert dying.wait(30)
        buf.insert("next")
        buf.sync_flush(timeout=10)  # no TimeoutError: a flusher took the batch
        assert delivered == ["next"]
        assert not done.is_set()  # while the ended thread was still alive
    finally:
        done.set()
        logger.removeHandler(hold)


def test_close_while_the_timer_starts_a_new_flusher_waits_for_it(make_buffer: Any, monkeypatch: Any) -> None:
    # close() flushes; partition 0's callback ends its flusher, and the
    # timer starts a new one (held in Thread.start here) while partition 1's
    # callback still runs.  close() must then wait for that start, not try
    # to join a thread that is not started yet (RuntimeError on 3.13t).
    from databuffer import _threaded

    starting = threading.Event()
    release = threading.Event()
    delivered: list[Any] = []
    failed: list[Any] = []

    def handle_flush(batch: list[Any], opts: Any) -> None:
        if "exit" in batch:
            raise SystemExit
        assert starting.wait(30)
        delivered.extend(batch)

    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=lambda b, o, e: failed.extend(b),
        partitions=2,
        flush_interval=BIG,
    )
    timer = engine_of(buf)._timer
    start = _threaded._OwnedThread.start

    def held_start(thread: threading.Thread) -> None:
        if threading.current_thread() is timer:
            starting.set()
            release.wait(30)
        start(thread)

    monkeypatch.setattr(_threaded._OwnedThread, "start", held_start)
    buf.insert("exit")
    buf.insert("wait")  # round-robin: the other partition
    errors: list[BaseException] = []

    def close() -> None:
        try:
            buf.close(timeout=30)
        except BaseException as exc:
            errors.append(exc)

    closer = threading.Thread(target=close)
    closer.start()
    assert starting.wait(30)
    closer.join(1.0)  # the old close() raised here, at once
    release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert errors == []
    assert (delivered, failed) == (["wait"], ["exit"])


# -- 3. close() after a thread ended ----------------------------------------------------


def test_close_after_a_thread_ended_does_not_wait_for_the_timer(make_buffer: Any, monkeypatch: Any) -> None:
    # The timer replaces an ended flusher; close() tells it to stop while it
    # is doing so: it must not then sleep until its next round (30 s here).
    buf = make_buffer(handle_flush=lambda b, o: None, flush_interval=30, flush_jitter=0, flush_timeout=30)
    engine = engine_of(buf)
    supervise = engine._supervise
    timer = engine._timer
    main = threading.current_thread()

    def in_close() -> bool:
        frame = sys._current_frames().get(main.ident)  # type: ignore[arg-type]
        while frame is not None:
            if frame.f_code.co_name == "join":
                return True
            frame = frame.f_back
        return False

    supervising = threading.Event()

    def slow_supervise() -> None:
        if threading.current_thread() is timer:
            supervising.set()
            wait_for(in_close, timeout=30)  # close() has told the timer to stop, and waits for it
        supervise()

    monkeypatch.setattr(engine, "_supervise", slow_supervise)

    def end_thread(*args: Any) -> None:
        raise SystemExit

    telemetry.attach("end-thread", telemetry.FLUSH_STOP, end_thread)
    buf.insert_batch([1, 2, 3])
    buf.sync_flush(timeout=10)
    telemetry.detach("end-thread")
    assert supervising.wait(10)  # the timer replaces the ended flusher
    started = time.monotonic()
    buf.close(timeout=10)
    assert time.monotonic() - started < 5


# -- 4. a finalizer that closes or flushes the buffer inside a wait for room ------------


@pytest.mark.parametrize("action", ["close", "sync_flush"])
def test_a_finalizer_inside_an_insert_waiting_for_room_can_close_or_flush(
    make_buffer: Any, action: str
) -> None:
    delivered: Counter[Any] = Counter()
    lock = threading.Lock()

    def handle_flush(batch: list[Any], opts: Any) -> None:
        time.sleep(0.02)  # a slow sink: the inserts below wait for room
        with lock:
            delivered.update(batch)

    buf = make_buffer(handle_flush=handle_flush, max_size=10, flush_interval=BIG)
    main = threading.current_thread()
    outcome: list[Any] = []
    inserting = [False]

    class Owner:
        """An object that closes (or flushes) the buffer when it is collected."""

        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            if outcome or not inserting[0] or threading.current_thread() is not main or buf.size() < 10:
                Owner()  # not inside a wait for room yet: again at a later collection
                return
            started = time.monotonic()
            try:
                getattr(buf, action)(timeout=10)
                outcome.append(("returned", time.monotonic() - started))
            except BaseException as exc:
                outcome.append((exc, time.monotonic() - started))

    threshold = gc.get_threshold()
    Owner()
    gc.set_threshold(1)
    stored = 0
    try:
        inserting[0] = True
        buf.insert_batch(range(200), timeout=30)
        stored = 200
    except BufferClosed as exc:
        stored = exc.stored
    finally:
        inserting[0] = False
        gc.set_threshold(*threshold)
        gc.collect()
    if not outcome and _free_threaded():
        pytest.skip("the free-threaded collector did not run inside the insert (it ignores a threshold of 1)")
    assert outcome, "the finalizer never ran inside the insert"
    result, seconds = outcome[0]
    assert seconds < 5, f"{action}() from the finalizer took {seconds:.1f}s"
    if result != "returned":
        # Only where the core holds its lock around Python code (the pure
        # one): the call says so, and the flushes go on once the insert returns.
        assert isinstance(result, RuntimeError) and "finalizer" in str(result), result
    buf.close(timeout=30)
    assert delivered == Counter(range(stored))


def test_a_finalizer_flushing_the_buffer_during_inserts_never_stalls(make_buffer: Any) -> None:
    delivered: list[Any] = []
    buf = make_buffer(handle_flush=lambda b, o: delivered.extend(b), max_size=7, flush_interval=BIG)
    durations: list[float] = []
    errors: list[BaseException] = []
    active = [True]

    class Owner:
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            if not active[0] or threading.current_thread() is not threading.main_thread():
                return
            started = time.monotonic()
            try:
                buf.sync_flush(timeout=10)
            except RuntimeError as exc:
                errors.append(exc)
            durations.append(time.monotonic() - started)
            if len(durations) < 30:
                Owner()

    threshold = gc.get_threshold()
    Owner()
    gc.set_threshold(1)
    try:
        for i in range(3000):
            buf.insert(i)
    finally:
        active[0] = False
        gc.set_threshold(*threshold)
        gc.collect()
    if not durations and _free_threaded():
        pytest.skip(
            "the free-threaded collector did not run inside the inserts (it ignores a threshold of 1)"
        )
    assert durations, "the finalizer never ran"
    assert max(durations) < 5
    assert all("finalizer" in str(e) for e in errors)
    buf.close(timeout=30)
    assert sorted(delivered) == list(range(3000))


def _free_threaded() -> bool:
    return not getattr(sys, "_is_gil_enabled", lambda: True)()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.parametrize("action", ["close", "sync_flush"])
def test_a_signal_handler_inside_an_insert_waiting_for_room_can_close_or_flush(
    make_buffer: Any, action: str
) -> None:
    # A signal handler runs in the main thread wherever it is, like a
    # finalizer: here while insert_batch waits for room.
    delivered: Counter[Any] = Counter()
    lock = threading.Lock()

    def handle_flush(batch: list[Any], opts: Any) -> None:
        time.sleep(0.05)  # a slow sink: the insert below waits for room
        with lock:
            delivered.update(batch)

    buf = make_buffer(handle_flush=handle_flush, max_size=10, flush_interval=BIG)
    outcome: list[Any] = []

    def on_alarm(signum: int, frame: Any) -> None:
        started = time.monotonic()
        try:
            getattr(buf, action)(timeout=10)
            outcome.append(("returned", time.monotonic() - started))
        except BaseException as exc:
            outcome.append((exc, time.monotonic() - started))

    previous = signal.signal(signal.SIGALRM, on_alarm)
    stored = 0
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        buf.insert_batch(range(100), timeout=30)
        stored = 100
    except BufferClosed as exc:
        stored = exc.stored
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert outcome, "the signal handler did not run during the insert"
    result, seconds = outcome[0]
    assert seconds < 5, f"{action}() from the signal handler took {seconds:.1f}s"
    if result != "returned":
        assert isinstance(result, RuntimeError) and "inside an insert" in str(result), result
    buf.close(timeout=30)
    assert delivered == Counter(range(stored))


# -- 5. a handle_flush that consumes its batch, then fails ------------------------------


@pytest.mark.parametrize("max_retries", [0, 1])
def test_handle_flush_error_gets_the_whole_batch_that_handle_flush_consumed(
    make_buffer: Any, max_retries: int
) -> None:
    got: list[tuple[list[Any], int]] = []

    def send_all(batch: list[Any], opts: Any) -> None:
        while batch:
            batch.pop()  # "sent"
        raise ConnectionError("dropped before the commit")

    buf = make_buffer(
        handle_flush=send_all,
        handle_flush_error=lambda batch, opts, error: got.append((list(batch), opts.size)),
        max_retries=max_retries,
        retry_backoff=0,
        flush_interval=BIG,
    )
    buf.insert_batch(range(10))
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=10)
    assert got == [(list(range(10)), 10)]


@pytest.mark.anyio
async def test_async_handle_flush_error_gets_the_whole_batch_that_handle_flush_consumed(
    AsyncBuffer: Any,
) -> None:
    got: list[list[Any]] = []

    async def send_all(batch: list[Any], opts: Any) -> None:
        batch.clear()
        raise ConnectionError("dropped before the commit")

    async with AsyncBuffer(
        handle_flush=send_all, handle_flush_error=lambda b, o, e: got.append(list(b)), flush_interval=BIG
    ) as buf:
        buf.insert_batch(range(10))
        with pytest.raises(ExceptionGroup):
            await buf.sync_flush(timeout=10)
    assert got == [list(range(10))]


# -- 6. a cancelled ainsert ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["ainsert", "ainsert_batch"])
async def test_a_cancelled_ainsert_says_whether_it_stored_its_items(AsyncBuffer: Any, call: str) -> None:
    delivered: list[Any] = []
    release = asyncio.Event()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        await release.wait()
        delivered.extend(batch)

    async with AsyncBuffer(
        handle_flush=handle_flush, partitions=2, max_size=1, max_queued_batches=0, flush_interval=BIG
    ) as buf:
        buf.insert("a0")
        buf.insert("b0")  # both partitions flushing (held)
        await asyncio.sleep(0)
        buf.insert("a1")
        buf.insert("b1")  # both hold a full batch
        with pytest.raises(BufferFull):
            buf.insert("x")
        release.set()
        await asyncio.sleep(0.01)
        task = asyncio.create_task(buf.ainsert("y") if call == "ainsert" else buf.ainsert_batch(["y", "z"]))
        await asyncio.sleep(0)  # the call starts and yields
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
        notes = " ".join(getattr(caught.value, "__notes__", []))
        assert "before it stored anything" in notes, notes
    assert sorted(delivered) == ["a0", "a1", "b0", "b1"]


# -- 7. an insert telemetry handler raising a BaseException ------------------------------


@pytest.mark.parametrize("event", [telemetry.INSERT_START, telemetry.INSERT_STOP])
@pytest.mark.parametrize("call", ["insert", "insert_batch"])
def test_an_insert_handler_raising_a_base_exception_is_detached_and_the_insert_succeeds(
    make_buffer: Any, event: tuple[str, ...], call: str
) -> None:
    delivered: list[Any] = []
    buf = make_buffer(handle_flush=lambda b, o: delivered.extend(b), flush_interval=BIG)
    calls: list[Any] = []

    def handler(*args: Any) -> None:
        calls.append(args[0])
        raise asyncio.CancelledError

    telemetry.attach("cancels", event, handler)
    if call == "insert":
        buf.insert("x")
        buf.insert("y")
    else:
        buf.insert_batch(["x"])
        buf.insert_batch(["y"])
    assert calls == [event]  # detached at its first raise
    assert not telemetry.list_handlers(event)
    buf.close(timeout=10)
    assert delivered == ["x", "y"]


def test_an_insert_stop_handler_raising_system_exit_says_the_item_was_stored(make_buffer: Any) -> None:
    delivered: list[Any] = []
    buf = make_buffer(handle_flush=lambda b, o: delivered.extend(b), flush_interval=BIG)

    def handler(*args: Any) -> None:
        raise SystemExit(3)

    telemetry.attach("exits", telemetry.INSERT_STOP, handler)
    with pytest.raises(SystemExit) as caught:
        buf.insert("x")
    assert "had stored its item" in " ".join(caught.value.__notes__)
    assert telemetry.list_handlers(telemetry.INSERT_STOP)  # an exit is not the handler's fault: kept
    telemetry.detach("exits")
    buf.close(timeout=10)
    assert delivered == ["x"]


# -- 8. a huge retry backoff ---------------------------------------------------------------


@pytest.mark.parametrize("core", ["c", "py"])
def test_a_huge_retry_backoff_is_capped_not_overflowed(core: str) -> None:
    code = """
import logging, os, sys
from databuffer import Buffer, telemetry
logging.basicConfig(level=logging.ERROR, format="LOG %(message)s")
delays = []
telemetry.attach("retry", telemetry.FLUSH_RETRY, lambda e, m, md, c: delays.append(m["delay"]))
def handle_flush(batch, opts):
    raise ConnectionError("sink down")
b = Buffer(handle_flush=handle_flush, max_retries=1, retry_backoff=1e12, retry_backoff_max=1e12,
           flush_interval=3600)
b.insert_batch([1, 2, 3])
try:
    b.sync_flush(timeout=1)
except TimeoutError:
    pass
print("delays", delays, "stats", b.stats()["in_flight"], flush=True)
os._exit(0)
"""
    proc = run_python(code, core=core, timeout=60)
    assert "LOG" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr  # no error logged
    delays = eval(proc.stdout.split("delays", 1)[1].split("stats")[0])
    assert len(delays) == 1 and 0 <= delays[0] <= 1e9 * 1e9
    assert proc.stdout.strip().endswith("stats 3")  # waiting for its retry, not lost


# -- 10. a constructor that fails midway ----------------------------------------------------


def test_a_constructor_that_cannot_start_all_its_threads_stops_the_others(
    Buffer: Any, monkeypatch: Any
) -> None:
    start = threading.Thread.start
    started: list[threading.Thread] = []

    def start_three(self: threading.Thread) -> None:
        if self.name.startswith("databuffer-half-"):
            if len(started) == 3:
                raise RuntimeError("can't start new thread")
            started.append(self)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", start_three)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        Buffer(handle_flush=lambda b, o: None, name="half", partitions=4)
    monkeypatch.undo()
    assert len(started) == 3
    wait_for(lambda: not any(thread.is_alive() for thread in started), timeout=10)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("databuffer-half-")]
