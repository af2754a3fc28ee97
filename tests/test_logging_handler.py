"""databuffer.contrib.logging.BufferingHandler, with real ``logging``.

In this process each test uses a logger of its own, outside the hierarchy, and
never reconfigures ``logging`` as a whole: ``dictConfig`` closes every
handler there is (pytest's own included), so the tests that use it, and the
ones about interpreter exit, run in a child interpreter.  The handler's
buffer is built over the core under test (``make_handler`` swaps the
module's ``Buffer``; a child takes the core from its environment).
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Background, Boom, run_python, wait_for

from databuffer._buffer import BufferMethods
from databuffer.contrib import logging as dblogging
from databuffer.contrib.logging import BufferingHandler

# -- helpers ----------------------------------------------------------------------


class Collect(logging.Handler):
    """A target handler that keeps the records it emits, and whether it held its lock then."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self.locked: list[bool] = []
        self.threads: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.locked.append(self.lock._is_owned())  # type: ignore[union-attr]
        self.threads.append(threading.current_thread().name)
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in list(self.records)]


class Batches:
    """A callable target that keeps each batch (a copy); thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[logging.LogRecord]] = []

    def __call__(self, records: list[logging.LogRecord]) -> None:
        with self.lock:
            self.batches.append(list(records))

    def messages(self) -> list[str]:
        with self.lock:
            return [r.getMessage() for batch in self.batches for r in batch]


@pytest.fixture
def make_handler(Buffer: type, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., BufferingHandler]]:
    """Build BufferingHandlers over the core under test; closed when the test ends."""
    monkeypatch.setattr(dblogging, "Buffer", Buffer)
    made: list[BufferingHandler] = []

    def make(target: Any, **options: Any) -> BufferingHandler:
        handler = BufferingHandler(target, **options)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        handler.close()


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> logging.Logger:
    """A logger of the test's own, at DEBUG, outside the logger hierarchy.

    Not made by ``logging.getLogger``: pytest attaches its capturing
    handlers to every registered logger that does not propagate, and they
    would see (and format) each record before the handler under test.
    """
    return logging.Logger(f"test_logging_handler.{request.node.name}", logging.DEBUG)


@pytest.fixture
def databuffer_logger() -> Iterator[logging.Logger]:
    """The ``databuffer`` logger; the handlers a test adds are removed at its end."""
    log = logging.getLogger("databuffer")
    before = log.handlers[:]
    yield log
    for handler in log.handlers[:]:
        if handler not in before:
            log.removeHandler(handler)


@pytest.fixture
def last_resort(monkeypatch: pytest.MonkeyPatch) -> Collect:
    """``logging.lastResort``, replaced by a ``Collect`` at WARNING."""
    collect = Collect(logging.WARNING)
    monkeypatch.setattr(logging, "lastResort", collect)
    return collect


# -- delivery -----------------------------------------------------------------------


def test_a_handler_target_gets_each_record_in_order_through_handle_under_its_lock(make_handler, logger):
    target = Collect()
    handler = make_handler(target, flush_interval=3600, max_size=10)
    logger.addHandler(handler)
    for i in range(50):
        logger.info("record %d", i)
    handler.flush()
    assert target.messages() == [f"record {i}" for i in range(50)]
    assert all(target.locked)
    # Written by the buffer's flusher thread, not the thread that logged.
    assert set(target.threads) != {threading.current_thread().name}


def test_the_target_handlers_level_and_filters_apply(make_handler, logger):
    target = Collect(logging.WARNING)
    target.addFilter(lambda record: "secret" not in record.getMessage())
    handler = make_handler(target, flush_interval=3600)
    logger.addHandler(handler)
    logger.info("too low")
    logger.warning("shown")
    logger.error("a secret")
    logger.error("shown too")
    handler.flush()
    assert target.messages() == ["shown", "shown too"]


def test_this_handlers_level_and_filters_apply_before_buffering(make_handler, logger):
    target = Collect()
    handler = make_handler(target, level="WARNING", flush_interval=3600)
    handler.addFilter(lambda record: record.getMessage() != "skip")
    logger.addHandler(handler)
    logger.info("too low")
    logger.warning("skip")
    logger.warning("kept")
    assert handler.buffer.stats()["inserted"] == 1
    handler.flush()
    assert target.messages() == ["kept"]


def test_a_callable_target_gets_the_batches_as_lists(make_handler, logger):
    target = Batches()
    handler = make_handler(target, flush_interval=3600, max_size=10)
    logger.addHandler(handler)
    for i in range(25):
        logger.info("n=%d", i)
    handler.flush()
    sizes = [len(batch) for batch in target.batches]
    assert sum(sizes) == 25 and max(sizes) == 10
    assert target.messages() == [f"n={i}" for i in range(25)]
    assert all(isinstance(r, logging.LogRecord) for batch in target.batches for r in batch)


def test_set_target_hands_the_next_batches_to_the_new_target(make_handler, logger):
    first, second = Collect(), Batches()
    handler = make_handler(first, flush_interval=3600)
    logger.addHandler(handler)
    logger.info("one")
    handler.flush()
    handler.setTarget(second)
    assert handler.target is second
    logger.info("two")
    handler.flush()
    assert first.messages() == ["one"]
    assert second.messages() == ["two"]


# -- what the target receives -------------------------------------------------------------


def test_records_are_prepared_on_the_logging_thread_and_the_originals_left_alone(make_handler, logger):
    target = Collect()
    target.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler = make_handler(target, flush_interval=3600)
    seen = Collect()  # another handler of the same logger: sees the original records
    logger.addHandler(handler)
    logger.addHandler(seen)
    items = ["before"]
    logger.info("items: %s", items)
    items.append("after")  # changed after logging: the buffered record does not see it
    try:
        raise Boom("the failure")
    except Boom:
        logger.exception("failed with %d", 42)
    logger.info("with stack", stack_info=True)
    handler.flush()

    plain, failed, stacked = target.records
    assert plain.msg == plain.getMessage() == "items: ['before']"
    assert plain.args is None
    assert failed.msg == "failed with 42" and failed.args is None
    assert failed.exc_info is None
    assert failed.exc_text is not None
    assert failed.exc_text.startswith("Traceback (most recent call last):")
    assert failed.exc_text.endswith("Boom: the failure")
    # The target's formatter shows the traceback as it would have.
    assert target.format(failed) == f"ERROR failed with 42\n{failed.exc_text}"
    assert stacked.stack_info is not None and "Stack (most recent call last)" in stacked.stack_info
    # Other handlers got the records as logged.
    original = seen.records[1]
    assert original is not failed
    assert original.args == (42,) and original.msg == "failed with %d"
    assert original.exc_info is not None and original.exc_info[0] is Boom
    assert seen.records[0].args == (items,)


def test_the_traceback_is_formatted_by_the_target_handlers_formatter(make_handler, logger):
    class Short(logging.Formatter):
        def formatException(self, ei: Any) -> str:
            return f"<{ei[0].__name__}>"

    target = Collect()
    target.setFormatter(Short())
    handler = make_handler(target, flush_interval=3600)
    logger.addHandler(handler)
    try:
        raise Boom("x")
    except Boom:
        logger.exception("oops")
    handler.flush()
    assert target.records[0].exc_text == "<Boom>"

    # A callable target: this handler's formatter (or logging's default one).
    calls = Batches()
    handler.setTarget(calls)
    handler.setFormatter(Short())
    try:
        raise KeyError("k")
    except KeyError:
        logger.exception("again")
    handler.flush()
    assert calls.batches[0][0].exc_text == "<KeyError>"


def test_a_message_that_cannot_be_formatted_goes_to_handle_error_on_the_logging_thread(make_handler, logger):
    target = Collect()
    handler = make_handler(target, flush_interval=3600)
    errors: list[tuple[str, str]] = []
    handler.handleError = lambda record: errors.append(  # type: ignore[method-assign]
        (record.msg, threading.current_thread().name)
    )
    logger.addHandler(handler)
    logger.info("%d items", "not a number")
    logger.info("fine")
    handler.flush()
    assert errors == [("%d items", threading.current_thread().name)]
    assert target.messages() == ["fine"]


# -- flush_level, flush() and close() ---------------------------------------------------------


@pytest.mark.parametrize("flush_level", ["WARNING", logging.WARNING])
def test_a_record_at_flush_level_flushes_what_is_buffered(make_handler, logger, flush_level):
    target = Collect()
    handler = make_handler(target, flush_level=flush_level, flush_interval=3600)
    assert handler.flushLevel == logging.WARNING
    logger.addHandler(handler)
    logger.info("context")
    logger.info("more context")
    assert handler.buffer.size() == 2  # no trigger yet: flush_interval is an hour
    logger.warning("the problem")
    wait_for(lambda: len(target.records) == 3)
    assert target.messages() == ["context", "more context", "the problem"]
    assert handler.shouldFlush(target.records[2]) and not handler.shouldFlush(target.records[0])


def test_flush_level_defaults_to_error_as_for_memory_handler(make_handler):
    assert make_handler(Collect()).flushLevel == logging.ERROR


def test_flush_waits_for_the_target_and_close_leaves_it_open(make_handler, logger, tmp_path):
    path = tmp_path / "app.log"
    target = logging.FileHandler(path, encoding="utf-8")
    try:
        handler = make_handler(target, flush_interval=3600)
        logger.addHandler(handler)
        logger.info("first")
        assert path.read_text() == ""
        handler.flush()
        assert path.read_text() == "first\n"
        logger.info("second")
        handler.close()
        assert handler.buffer.closed
        assert path.read_text() == "first\nsecond\n"
        # The target is still open, and a record logged after close() goes
        # straight to it, from the thread that logs it.
        assert target.stream is not None and not target.stream.closed
        logger.info("late")
        assert path.read_text() == "first\nsecond\nlate\n"
        handler.flush()  # nothing left: returns
        handler.close()  # idempotent
    finally:
        target.close()


def test_flush_called_by_the_target_only_asks_for_the_flush(make_handler, logger):
    handler: BufferingHandler | None = None
    delivered: list[str] = []

    def target(records: list[logging.LogRecord]) -> None:
        assert handler is not None
        handler.flush()  # from the flusher thread: it cannot wait for itself
        delivered.extend(r.getMessage() for r in records)

    handler = make_handler(target, flush_interval=3600)
    logger.addHandler(handler)
    logger.info("a")
    handler.flush()
    assert delivered == ["a"]
    assert handler.buffer.stats()["failed"] == 0


def test_failed_batches_go_to_handle_flush_error_and_flush_does_not_raise(make_handler, logger):
    reported: list[tuple[list[str], BaseException]] = []

    def target(records: list[logging.LogRecord]) -> None:
        raise Boom("the log service is down")

    handler = make_handler(
        target,
        flush_interval=3600,
        handle_flush_error=lambda batch, opts, error: reported.append(([r.msg for r in batch], error)),
    )
    logger.addHandler(handler)
    logger.info("lost")
    handler.flush()
    assert [(msgs, type(err)) for msgs, err in reported] == [(["lost"], Boom)]
    assert handler.buffer.stats()["failed"] == 1


# -- threads and order -------------------------------------------------------------------------


@pytest.mark.parametrize("on_full", ["drop_oldest", "wait"])
def test_many_threads_log_into_a_file_target_and_each_threads_records_stay_in_order(
    make_handler, logger, tmp_path, on_full
):
    # As with a QueueHandler: the threads only insert, one thread writes.
    path = tmp_path / "threads.log"
    target = logging.FileHandler(path, encoding="utf-8")
    target.setFormatter(logging.Formatter("%(threadName)s %(message)s"))
    threads, per_thread = 8, 500
    try:
        handler = make_handler(target, max_size=100, on_full=on_full)
        logger.addHandler(handler)
        start = threading.Barrier(threads)

        def work() -> None:
            start.wait(30)
            for i in range(per_thread):
                logger.info("%d", i)

        workers = [threading.Thread(target=work, name=f"w{t}") for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert not worker.is_alive()
        handler.close()
        stats = handler.buffer.stats()
    finally:
        target.close()
    lines = path.read_text().splitlines()
    assert stats["inserted"] == threads * per_thread
    assert stats["flushed"] + stats["dropped"] == threads * per_thread
    assert len(lines) == stats["flushed"]
    by_thread: dict[str, list[int]] = {}
    for line in lines:
        name, number = line.split()
        by_thread.setdefault(name, []).append(int(number))
    if on_full == "wait":
        assert stats["dropped"] == 0
        assert by_thread == {f"w{t}": list(range(per_thread)) for t in range(threads)}
    else:
        # Whatever was dropped to keep the threads from waiting, what is
        # written is in each thread's order.
        assert all(numbers == sorted(set(numbers)) for numbers in by_thread.values())


def test_with_partitions_dispatch_thread_keeps_each_threads_records_in_order(make_handler, logger):
    target = Batches()
    handler = make_handler(target, partitions=4, dispatch="thread", max_size=100, on_full="wait")
    logger.addHandler(handler)

    def work() -> None:
        for i in range(300):
            logger.info("%d", i)

    workers = [threading.Thread(target=work, name=f"p{t}") for t in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    handler.flush()
    by_thread: dict[str, list[int]] = {}
    with target.lock:
        for batch in target.batches:
            for record in batch:
                by_thread.setdefault(record.threadName, []).append(int(record.getMessage()))
    assert by_thread == {f"p{t}": list(range(300)) for t in range(4)}


# -- never blocking, never recursing, never deadlocking ----------------------------------------


def _stuck_target(release: threading.Event) -> tuple[Collect, threading.Event]:
    """A Collect whose first record blocks until ``release``; ``started`` is set then."""
    started = threading.Event()

    class Stuck(Collect):
        def emit(self, record: logging.LogRecord) -> None:
            if not started.is_set():
                started.set()
                release.wait(30)
            super().emit(record)

    return Stuck(), started


def _logging_drops_nested_records() -> bool:
    """Whether ``logging`` drops a record logged inside a handler's ``emit`` (3.13.5 does, 3.13.0 not)."""
    got: list[str] = []

    class Inner(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    class Outer(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            inner_logger.warning("inner")

    inner_logger = logging.getLogger("test_logging_handler.probe.inner")
    outer_logger = logging.getLogger("test_logging_handler.probe.outer")
    inner, outer = Inner(), Outer()
    inner_logger.addHandler(inner)
    outer_logger.addHandler(outer)
    inner_logger.propagate = outer_logger.propagate = False
    try:
        outer_logger.warning("outer")
    finally:
        inner_logger.removeHandler(inner)
        outer_logger.removeHandler(outer)
    return not got


_LOGGING_DROPS_NESTED_RECORDS = _logging_drops_nested_records()


def test_a_full_buffer_drops_the_oldest_and_its_warning_comes_back_through_the_handler(
    make_handler, logger, databuffer_logger, gates
):
    release = gates()
    target, started = _stuck_target(release)
    handler = make_handler(target, max_size=2, max_queued_batches=0, flush_interval=3600)
    logger.addHandler(handler)
    # The buffer's warning about drops, logged by the insert that drops,
    # on the logging thread, comes back into the same handler.
    databuffer_logger.addHandler(handler)
    logger.info("0")
    logger.info("1")
    handler.buffer.flush()
    assert started.wait(30)  # [0, 1] is with the target, which waits
    logger.info("2")
    logger.info("3")  # the buffer is full now

    def log_until_a_drop() -> None:
        for i in range(4, 100):
            logger.info("%d", i)
            if handler.buffer.stats()["dropped"]:
                return

    # Never waits for room, never recurses.
    Background(log_until_a_drop).wait(10)
    release.set()
    handler.flush()
    delivered = [(r.name, r.getMessage()) for r in target.records]
    warnings = [msg for name, msg in delivered if name == "databuffer" and "'BufferingHandler'" in msg]
    assert [msg for _, msg in delivered[:2]] == ["0", "1"]
    assert handler.buffer.stats()["dropped"] >= 1
    if _LOGGING_DROPS_NESTED_RECORDS:
        # This Python's logging drops a record logged while a handler runs
        # on the same thread (Logger._tls.in_progress): the warning, logged
        # inside emit, never reaches any handler.  The count stays in stats().
        assert warnings == []
        return
    assert len(warnings) == 1 and "dropped 1 item" in warnings[0]
    # After the record whose insert dropped, in logging order.
    assert delivered[-1][0] == "databuffer"


def test_a_failing_target_is_reported_to_last_resort_and_not_fed_its_own_failure(
    make_handler, logger, databuffer_logger, last_resort
):
    calls: list[list[str]] = []

    def target(records: list[logging.LogRecord]) -> None:
        calls.append([r.getMessage() for r in records])
        raise Boom("the log service is down")

    handler = make_handler(target, flush_interval=3600)
    logger.addHandler(handler)
    databuffer_logger.addHandler(handler)
    logger.info("payload")
    handler.flush()  # the batch fails; the default handle_flush_error logs it, on the flusher thread
    handler.flush()
    assert calls == [["payload"]]
    assert handler.buffer.size() == 0
    reports = [r for r in last_resort.records if "'BufferingHandler'" in r.getMessage()]
    assert len(reports) == 1
    assert "handle_flush failed" in reports[0].getMessage()
    assert reports[0].exc_info is not None and reports[0].exc_info[0] is Boom


def test_a_target_that_logs_is_not_fed_its_own_records(make_handler, logger, last_resort):
    inner = logging.Logger(logger.name + ".inner")
    inner.parent = logger  # propagates to the handler's logger

    class Chatty(Collect):
        def emit(self, record: logging.LogRecord) -> None:
            inner.debug("writing %s", record.getMessage())
            inner.warning("slow disk")
            super().emit(record)

    target = Chatty()
    handler = make_handler(target, flush_interval=3600)
    logger.addHandler(handler)
    logger.info("a")
    logger.info("b")
    handler.flush()
    handler.flush()
    assert target.messages() == ["a", "b"]
    assert handler.buffer.size() == 0
    # WARNING and above went to logging.lastResort; the DEBUG ones nowhere.
    assert [r.getMessage() for r in last_resort.records] == ["slow disk", "slow disk"]


def test_a_target_handler_that_fails_reports_through_its_handle_error_and_delivery_goes_on(
    make_handler, logger, capsys
):
    class Broken(Collect):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "bad":
                raise Boom("cannot write")
            super().emit(record)

    target = Broken()
    handler = make_handler(target, flush_interval=3600)
    logger.addHandler(handler)
    logger.info("bad")
    logger.info("good")
    handler.flush()
    logger.info("later")
    handler.flush()
    assert target.messages() == ["good", "later"]
    assert handler.buffer.stats()["failed"] == 0  # target.handle reported it itself
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "Boom: cannot write" in err


def test_records_from_other_threads_are_not_held_up_by_logging_shutdown(make_handler, logger):
    # logging.shutdown holds the handler's lock while it flushes and closes
    # it; the flush waits for the target, and this target waits for a record
    # logged by another thread through the same handler.  Handler.handle
    # would take that lock: BufferingHandler.handle does not.
    other_logged = threading.Event()
    waited: list[bool] = []

    def target(records: list[logging.LogRecord]) -> None:
        if not waited:
            thread = threading.Thread(target=lambda: (logger.info("from another thread"), other_logged.set()))
            thread.start()
            waited.append(other_logged.wait(10))

    handler = make_handler(target, flush_interval=3600)
    logger.addHandler(handler)
    logger.info("first")
    Background(logging.shutdown, [weakref.ref(handler)]).wait(30)
    assert waited == [True]


def test_close_with_loggings_module_lock_held_does_not_deadlock(make_handler, logger, monkeypatch):
    # logging.config closes the handlers it replaces with the module lock
    # held; a target that calls logging.getLogger needs that lock.
    monkeypatch.setattr(dblogging, "_LOCKED_WAIT", 0.2)
    delivered: list[str] = []

    def target(records: list[logging.LogRecord]) -> None:
        logging.getLogger(logger.name + ".target")  # takes logging's module lock
        delivered.extend(r.getMessage() for r in records)

    handler = make_handler(target, flush_interval=3600)
    logger.addHandler(handler)
    logger.info("buffered")

    def flush_and_close_under_the_lock() -> float:
        with logging._lock:  # type: ignore[attr-defined]
            began = time.monotonic()
            handler.flush()
            handler.close()
            return time.monotonic() - began

    took = Background(flush_and_close_under_the_lock).wait(30).result
    assert took < 10
    wait_for(lambda: delivered == ["buffered"])  # once the lock is released
    assert handler.buffer.closed


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flush_level", "error", "message"),
    [
        ("ERRR", ValueError, "flush_level 'ERRR' is not a level name"),
        ("error", ValueError, "flush_level 'error' is not a level name"),
        (None, TypeError, "not NoneType None"),
        (2.5, TypeError, "not float 2.5"),
        (True, TypeError, "not bool True"),
    ],
)
def test_a_flush_level_that_is_not_a_level_is_refused(make_handler, flush_level, error, message):
    with pytest.raises(error, match=message):
        make_handler(Collect(), flush_level=flush_level)


class _NotAHandler:
    pass


async def _coroutine_target(records: list[logging.LogRecord]) -> None:
    pass


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (42, TypeError, "not int 42"),
        (None, TypeError, "not NoneType None"),
        ("file", TypeError, r"not str 'file' \(logging.config resolves a handler's name"),
        (_NotAHandler(), TypeError, "not _NotAHandler"),
        (logging.StreamHandler, TypeError, "not the class StreamHandler"),
        (_coroutine_target, TypeError, "not the coroutine function"),
    ],
)
def test_a_target_that_is_neither_a_handler_nor_a_callable_is_refused(make_handler, target, error, message):
    with pytest.raises(error, match=message):
        make_handler(target)


def test_set_target_checks_its_target(make_handler):
    handler = make_handler(Collect())
    with pytest.raises(TypeError, match="not int 7"):
        handler.setTarget(7)
    with pytest.raises(ValueError, match="its own target"):
        handler.setTarget(handler)
    assert isinstance(handler.target, Collect)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_sise": 10}, TypeError, "unknown option 'max_sise'"),
        ({"capacity": 10}, TypeError, "unknown option 'capacity'"),
        ({"handle_flush": print}, TypeError, "does not take handle_flush"),
        ({"max_size": 0}, ValueError, "max_size must be >= 1, got 0"),
        ({"on_full": "block"}, ValueError, "'block'"),
        ({"flush_interval": "1s"}, TypeError, "flush_interval must be a number of seconds, not str '1s'"),
        ({"level": "LOUD"}, ValueError, "LOUD"),
    ],
)
def test_bad_options_are_refused_naming_them(make_handler, options, error, message):
    with pytest.raises(error, match=message):
        make_handler(Collect(), **options)


def test_every_buffer_option_is_taken(make_handler):
    parameters = inspect.signature(BufferMethods.__init__).parameters
    options = {
        name: parameter.default
        for name, parameter in parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "handle_flush"
    }
    assert {"max_size", "on_full", "retry_on", "handle_flush_error"} <= set(options)
    for name, default in options.items():
        make_handler(Collect(), **{name: default})


def test_the_buffer_options_are_passed_through(make_handler):
    handler = make_handler(
        Collect(), name="app-logs", partitions=2, max_size=10, flush_interval=5.0, on_full="raise"
    )
    info = handler.buffer.info()
    assert [(p["name"], p["flush_size"], p["flush_interval"], p["on_full"]) for p in info] == [
        ("app-logs", 10, 5.0, "raise")
    ] * 2
    defaults = make_handler(Collect()).buffer.info()[0]
    assert (defaults["name"], defaults["on_full"], defaults["flush_interval"]) == (
        "BufferingHandler",
        "drop_oldest",
        1.0,
    )
    assert handler.name is None  # the handler's own name is separate
    assert "app-logs" in repr(handler) and "Collect" in repr(handler)


# -- logging.config and interpreter exit, in a child interpreter ------------------------------------

DICT_CONFIG_SCRIPT = """
import json, logging, logging.config, sys

path = sys.argv[1]
logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {
        # "buffered" sorts before "file": dictConfig defers it until "file" exists.
        "buffered": {
            "class": "databuffer.contrib.logging.BufferingHandler",
            "target": "file",
            "flush_level": "CRITICAL",
            "flush_interval": 3600,
            "max_size": 1000,
            "name": "app-logs",
            "level": "INFO",
        },
        "file": {"class": "logging.FileHandler", "filename": path, "formatter": "line"},
    },
    "root": {"level": "DEBUG", "handlers": ["buffered"]},
})
handler = logging.root.handlers[0]
file_handler = logging.getLogger().handlers[0].target
assert type(handler).__name__ == "BufferingHandler" and handler.name == "buffered", handler
assert isinstance(file_handler, logging.FileHandler), file_handler
log = logging.getLogger("app")
log.debug("below the handler's level")
for i in range(5):
    log.info("record %d", i)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
print(json.dumps(handler.buffer.stats()))
# No close, no logging.shutdown(): interpreter exit delivers everything.
"""


def test_dict_config_resolves_the_target_by_name_and_exit_delivers_everything(core_name, tmp_path):
    path = tmp_path / "app.log"
    proc = run_python(DICT_CONFIG_SCRIPT, str(path), core=core_name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    stats = json.loads(proc.stdout)
    assert (stats["name"], stats["inserted"], stats["flushed"]) == ("app-logs", 6, 0)
    lines = path.read_text().splitlines()
    assert lines[:6] == [f"INFO app record {i}" for i in range(5)] + ["ERROR app failed"]
    assert lines[6] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"


DICT_CONFIG_CALLABLE_SCRIPT = """
import logging, logging.config, sys

def write(records):
    with open(sys.argv[1], "a") as out:
        out.writelines(f"{r.levelname} {r.getMessage()}\\n" for r in records)

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "buffered": {"()": "databuffer.contrib.logging.BufferingHandler", "target": "ext://__main__.write"},
    },
    "root": {"level": "INFO", "handlers": ["buffered"]},
})
logging.getLogger("app").warning("via a callable")
"""


def test_dict_config_with_a_callable_target_uses_the_factory_key(core_name, tmp_path):
    path = tmp_path / "out.log"
    proc = run_python(DICT_CONFIG_CALLABLE_SCRIPT, str(path), core=core_name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text() == "WARNING via a callable\n"


DICT_CONFIG_BAD_SCRIPT = """
import logging.config, sys

handler = {"class": "databuffer.contrib.logging.BufferingHandler", "target": "file"}
handler.update(eval(sys.argv[1]))
config = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"buffered": handler, "file": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["buffered"]},
}
try:
    logging.config.dictConfig(config)
except ValueError as exc:
    print(f"{exc} <- {exc.__cause__!r}")
else:
    print("configured")
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('{"flush_level": "LOUD"}', "flush_level 'LOUD' is not a level name"),
        ('{"max_sise": 3}', "unknown option 'max_sise'"),
        ('{"target": "nowhere"}', "Unable to set target handler 'nowhere'"),
    ],
)
def test_dict_config_reports_bad_input(core_name, extra, message):
    proc = run_python(DICT_CONFIG_BAD_SCRIPT, extra, core=core_name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Unable to configure handler 'buffered'" in proc.stdout
    assert message in proc.stdout


RECONFIGURE_SCRIPT = """
import logging, logging.config, sys, time

delivered = []

def target(records):
    logging.getLogger("inside.the.target")  # takes logging's module lock
    delivered.extend(r.getMessage() for r in records)

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "buffered": {
            "()": "databuffer.contrib.logging.BufferingHandler",
            "target": "ext://__main__.target",
            "flush_interval": 3600,
        },
    },
    "root": {"level": "INFO", "handlers": ["buffered"]},
})
handler = logging.root.handlers[0]
for i in range(3):
    logging.getLogger("app").info("record %d", i)
began = time.monotonic()
# Replaces (flushes and closes) the handler with logging's module lock held.
logging.config.dictConfig({"version": 1, "disable_existing_loggers": False, "root": {"handlers": []}})
took = time.monotonic() - began
deadline = time.monotonic() + 30
while len(delivered) < 3 and time.monotonic() < deadline:
    time.sleep(0.01)
print(round(took, 1), delivered, handler.buffer.closed)
"""


def test_dict_config_replacing_the_handler_does_not_deadlock_on_loggings_lock(core_name):
    proc = run_python(RECONFIGURE_SCRIPT, core=core_name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    took, rest = proc.stdout.split(" ", 1)
    assert float(took) < 10
    assert rest.strip() == "['record 0', 'record 1', 'record 2'] True"


EXIT_SCRIPT = """
import atexit, sys

path = sys.argv[1]

def after_logging_shutdown():
    # Registered before logging is imported: runs after logging.shutdown().
    logging.getLogger("app").warning("after logging.shutdown")

atexit.register(after_logging_shutdown)

import logging
from databuffer.contrib.logging import BufferingHandler

target = logging.FileHandler(path)
target.setFormatter(logging.Formatter("%(name)s %(message)s"))
handler = BufferingHandler(target, flush_interval=3600, max_size=10_000)
root = logging.getLogger()
root.addHandler(handler)
root.setLevel(logging.INFO)

def before_the_buffers_close():
    # Registered after databuffer is imported: runs before it closes the buffers.
    logging.getLogger("app").info("in an atexit function")

atexit.register(before_the_buffers_close)

failing = BufferingHandler(lambda records: 1 / 0, flush_interval=3600)
root.addHandler(failing)  # its failure report is logged at exit, back through both handlers
for i in range(1000):
    logging.getLogger("app").info("record %d", i)
"""


def test_interpreter_exit_delivers_every_record(core_name, tmp_path):
    path = tmp_path / "exit.log"
    proc = run_python(EXIT_SCRIPT, str(path), core=core_name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = path.read_text().splitlines()
    # The failing handler's report, logged on its flusher thread while the
    # buffers close, went to logging.lastResort (stderr) and, from that
    # thread, straight into the other handler's file.
    failures = [line for line in lines if line.startswith("databuffer ")]
    assert len(failures) == 1 and "handle_flush failed" in failures[0]
    assert "handle_flush failed" in proc.stderr and "ZeroDivisionError" in proc.stderr
    records = [line for line in lines if line.startswith("app ")]
    assert records == [f"app record {i}" for i in range(1000)] + [
        "app in an atexit function",
        "app after logging.shutdown",
    ]


def test_module_docstring_example_runs():
    # The example at the top of the module docstring.
    doc = dblogging.__doc__
    assert doc is not None
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    proc = run_python(code + "\nlogging.getLogger().warning('hello')\n", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello\n"
