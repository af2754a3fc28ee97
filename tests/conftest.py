"""Shared fixtures: every behavioural test runs against both cores."""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from databuffer import _compat, _support, telemetry
from databuffer._async import AsyncBufferMethods
from databuffer._buffer import BufferMethods
from databuffer._support import PyAsyncBuffer, PyBuffer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="run the tests against the pure-Python core only",
    )


def _c_buffer_classes() -> tuple[type, type] | tuple[None, None]:
    if _compat.NO_EXTENSIONS:
        return None, None
    try:
        core = importlib.import_module("databuffer._core")
    except ImportError:
        return None, None

    class CBuffer(BufferMethods, core.BufferCore):
        """``Buffer`` over the compiled core."""

    class CAsyncBuffer(AsyncBufferMethods, core.BufferCore):
        """``AsyncBuffer`` over the compiled core."""

    return CBuffer, CAsyncBuffer


_CBuffer, _CAsyncBuffer = _c_buffer_classes()


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("c", marks=pytest.mark.c_extension),
        pytest.param("py"),
    ],
)
def core_name(request: pytest.FixtureRequest) -> str:
    """``"c"`` or ``"py"``: which core the test's buffers use."""
    if request.param == "c":
        if request.config.getoption("--no-c-extensions"):
            pytest.skip("--no-c-extensions given")
        if _CBuffer is None:
            pytest.skip("the compiled core is not available (DATABUFFER_NO_EXTENSIONS or not built)")
    return str(request.param)


@pytest.fixture
def Buffer(core_name: str) -> type:
    """The ``Buffer`` class over the core under test; subclass it or call it."""
    return _CBuffer if core_name == "c" else PyBuffer  # type: ignore[return-value]


@pytest.fixture
def make_buffer(Buffer: type) -> Iterator[Callable[..., BufferMethods]]:
    """Build buffers that are closed (with a deadline) when the test ends."""
    made: list[BufferMethods] = []

    def make(cls: type | None = None, **options: object) -> BufferMethods:
        buf = (cls or Buffer)(**options)
        made.append(buf)
        return buf

    yield make
    for buf in made:
        buf.close(timeout=30)


@pytest.fixture
def AsyncBuffer(core_name: str) -> type:
    """The ``AsyncBuffer`` class over the core under test; subclass it or call it."""
    return _CAsyncBuffer if core_name == "c" else PyAsyncBuffer  # type: ignore[return-value]


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": "uvloop"}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """anyio's plugin runs each async test on asyncio's default loop and on uvloop."""
    name, options = request.param
    if options.get("loop_factory") == "uvloop":
        if "uvloop" not in _support.available_loops():
            pytest.skip("uvloop is not installed (it has no wheels for Windows or free-threaded 3.13)")
        options = {"loop_factory": _support.loop_factory("uvloop")}
    return name, options


@pytest.fixture
def loop_factory(anyio_backend: tuple[str, dict[str, Any]]) -> Callable[[], Any] | None:
    """The event loop factory of the loop under test, for tests that run their own ``asyncio.Runner``."""
    return anyio_backend[1].get("loop_factory")


@pytest.fixture(autouse=True)
def _no_telemetry_handlers() -> Iterator[None]:
    yield
    for handler in telemetry.list_handlers():
        telemetry.detach(handler["id"])


@pytest.fixture
def gates(make_buffer):
    """Events released at teardown (before the buffers are closed)."""
    made: list[threading.Event] = []

    def new() -> threading.Event:
        event = threading.Event()
        made.append(event)
        return event

    yield new
    for event in made:
        event.set()


class Background:
    """Run a call in a daemon thread, keeping its result or exception."""

    def __init__(self, fn, *args, **kwargs) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout: float = 30.0) -> Background:
        assert self.done.wait(timeout), "background call did not finish in time"
        return self


async def await_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.002) -> None:
    """``wait_for`` for async tests: poll ``predicate``, yielding to the event loop in between."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


def adds_up(counters: Any) -> bool:
    """The accounting identity of ``stats()`` or one ``info()`` dict.

    ``inserted == size + in_flight + flushed + failed + dropped``.
    """
    parts = counters["size"] + counters["in_flight"] + counters["flushed"] + counters["failed"]
    return bool(counters["inserted"] == parts + counters["dropped"])


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.002) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def core_env(core: str | None) -> dict[str, str]:
    """This process's environment, for a child interpreter that uses ``core``.

    ``"py"``: the pure-Python core; any other name: the compiled core (when
    it is built); ``None``: whatever the environment already says.
    """
    env = dict(os.environ)
    if core == "py":
        env["DATABUFFER_NO_EXTENSIONS"] = "1"
    elif core is not None:
        env.pop("DATABUFFER_NO_EXTENSIONS", None)
    return env


def _python(
    argv: list[str], core: str | None, timeout: float, cwd: Path | None
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGV`` with ``core`` (see ``core_env``); fail the test if it outlives ``timeout``."""
    try:
        return subprocess.run(
            [sys.executable, *argv],
            capture_output=True,
            text=True,
            env=core_env(core),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the interpreter did not exit within {timeout} s: {exc.stderr!r}")


def run_python(
    code: str, *args: str, core: str | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c CODE ARGS`` (``CODE`` dedented) in a child interpreter, capturing its output as text.

    ``core``: as for ``core_env`` (``None``: this process's environment as it
    is).  A child still running after ``timeout`` seconds fails the test.
    """
    return _python(["-c", textwrap.dedent(code), *args], core, timeout, cwd)


def run_cli(*args: str, core: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m databuffer ARGS`` with the given core (``"c"``, the default, or ``"py"``)."""
    return _python(["-m", "databuffer", *args], core or "c", 100, cwd)


# -- flush callbacks and telemetry handlers that record what they are given -----------


class Boom(Exception):
    """The error a test's callback raises on purpose."""


class Recorder:
    """A ``handle_flush`` that records every call; a call returns ``len(batch)``.

    ``calls`` holds ``(batch copy, opts, time.monotonic())`` per call, in call
    order; ``called`` is set by every call; ``problems`` notes each call whose
    ``opts.size`` is not the batch's length.  Callable from any thread.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[list[Any], Any, float]] = []
        self.called: Any = threading.Event()  # an asyncio.Event in AsyncRecorder
        self.problems: list[str] = []

    def __call__(self, batch: list[Any], opts: Any) -> Any:
        self.record(batch, opts, time.monotonic())
        return self.result(batch, opts)

    def record(self, batch: list[Any], opts: Any, when: float) -> None:
        with self.lock:
            if opts.size != len(batch):
                self.problems.append(f"opts.size={opts.size} but len(batch)={len(batch)}")
            self.calls.append((list(batch), opts, when))
        self.called.set()

    def result(self, batch: list[Any], opts: Any) -> Any:
        """What a call returns (what ``sync_flush`` then returns for that batch)."""
        return len(batch)

    def batches(self, partition: int | None = None) -> list[list[Any]]:
        with self.lock:
            return [b for b, o, _ in self.calls if partition is None or o.partition == partition]

    def items(self, partition: int | None = None) -> list[Any]:
        return [item for batch in self.batches(partition) for item in batch]

    def triggers(self) -> list[str]:
        with self.lock:
            return [o.trigger for _, o, _ in self.calls]

    def partition_of(self) -> dict[Any, int]:
        with self.lock:
            return {item: o.partition for b, o, _ in self.calls for item in b}


class PartitionBatchRecorder(Recorder):
    """A ``Recorder`` whose calls return ``(opts.partition, batch copy)``."""

    def result(self, batch: list[Any], opts: Any) -> Any:
        return (opts.partition, list(batch))


class PartitionSizeRecorder(Recorder):
    """A ``Recorder`` whose calls return ``(opts.partition, len(batch))``."""

    def result(self, batch: list[Any], opts: Any) -> Any:
        return (opts.partition, len(batch))


class AsyncRecorder(Recorder):
    """An async ``Recorder``: times are the running loop's, ``called`` is an ``asyncio.Event``."""

    def __init__(self) -> None:
        super().__init__()
        self.called = asyncio.Event()

    async def __call__(self, batch: list[Any], opts: Any) -> Any:  # type: ignore[override]
        self.record(batch, opts, asyncio.get_running_loop().time())
        return self.result(batch, opts)


class Errors:
    """A plain ``handle_flush_error`` that records ``(batch copy, opts, error)``."""

    def __init__(self) -> None:
        self.reported: list[tuple[list[Any], Any, BaseException]] = []

    def __call__(self, batch: list[Any], opts: Any, error: BaseException) -> None:
        self.reported.append((list(batch), opts, error))


class Events:
    """A telemetry handler recording the events of the buffer named ``buffer`` (of every buffer: ``None``).

    ``seen`` holds ``(event, measurements, metadata, config)`` per event;
    ``log`` the events in order, and whatever the test appends between them.
    """

    def __init__(self, buffer: str | None = None) -> None:
        self.buffer = buffer
        self.lock = threading.Lock()
        self.seen: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any], Any]] = []
        self.log: list[Any] = []

    def __call__(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        if self.buffer is not None and metadata.get("buffer") != self.buffer:
            return
        with self.lock:
            self.seen.append((tuple(event), dict(measurements), dict(metadata), config))
            self.log.append(tuple(event))

    def of(self, event: tuple[str, ...]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        with self.lock:
            return [(m, md) for e, m, md, _ in self.seen if e == event]

    def names(self) -> list[tuple[str, ...]]:
        with self.lock:
            return [e for e, _, _, _ in self.seen]


def stuck_buffer(
    make_buffer: Callable[..., Any],
    gates: Callable[[], threading.Event],
    recorder: Recorder | None = None,
    **options: Any,
) -> tuple[Any, threading.Event, Recorder]:
    """A buffer (max_size=2, no queue) whose first batch [0, 1] is stuck in handle_flush.

    With ``max_queued_batches=0`` (unless given), two more items fill it.

    Returns (buffer, release, recorder): setting ``release`` lets the stuck
    flush go on; ``recorder`` (a new ``Recorder`` unless given) records every
    flush, the stuck one included once it is released.
    """
    release = gates()
    started = threading.Event()
    rec = Recorder() if recorder is None else recorder

    def fn(batch: list[Any], opts: Any) -> Any:
        if batch[0] == 0:
            started.set()
            release.wait(30)
        return rec(batch, opts)

    options.setdefault("flush_interval", 3600)
    options.setdefault("max_queued_batches", 0)
    buf = make_buffer(handle_flush=fn, max_size=2, **options)
    buf.insert_batch([0, 1])
    assert started.wait(30)
    return buf, release, rec


def first_partition(buf: Any) -> int:
    """The index of the first partition that holds items."""
    return next(p["partition"] for p in buf.info() if p["size"])


class AlwaysOne:
    """A stand-in for the buffer's random.Random: every backoff draw is its bound."""

    def random(self) -> float:
        return 1.0


# -- memory ---------------------------------------------------------------------------


class Sentinel:
    """An item whose references are counted."""


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Run with the cyclic GC off: only reference counting frees objects."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# Long randomized runs, each only when the ``-m`` expression names its marker.
_ON_REQUEST_MARKERS = ("soak", "chaos")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run ``soak`` and ``chaos`` tests only when the ``-m`` expression names their marker (``-m chaos``)."""
    markexpr = config.getoption("markexpr", default="") or ""
    for marker in _ON_REQUEST_MARKERS:
        if marker in markexpr:
            continue
        dropped = [item for item in items if item.get_closest_marker(marker) is not None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item.get_closest_marker(marker) is None]
