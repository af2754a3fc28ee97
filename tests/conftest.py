"""Shared fixtures: every behavioural test runs against both cores."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
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
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


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


def run_cli(*args: str, core: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m databuffer ARGS`` with the given core (``"c"``, the default, or ``"py"``)."""
    env = core_env(core or "c")
    return subprocess.run(
        [sys.executable, "-m", "databuffer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=100,
        check=False,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run ``soak`` tests only when the ``-m`` expression names them (``-m soak``)."""
    if "soak" in (config.getoption("markexpr", default="") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]
