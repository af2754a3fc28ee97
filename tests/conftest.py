"""Shared fixtures: every behavioural test runs against both cores."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator

import pytest

from databuffer import _buffer, _compat, _core_py, telemetry


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="run the tests against the pure-Python core only",
    )


class PyBuffer(_buffer._BufferLayer, _core_py.BufferCore):
    """``Buffer`` over the pure-Python core."""


def _c_buffer_class() -> type | None:
    if _compat.NO_EXTENSIONS:
        return None
    try:
        core = importlib.import_module("databuffer._core")
    except ImportError:
        return None

    class CBuffer(_buffer._BufferLayer, core.BufferCore):
        """``Buffer`` over the compiled core."""

    return CBuffer


_CBuffer = _c_buffer_class()


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
def make_buffer(Buffer: type) -> Iterator[Callable[..., _buffer._BufferLayer]]:
    """Build buffers that are closed (with a deadline) when the test ends."""
    made: list[_buffer._BufferLayer] = []

    def make(cls: type | None = None, **options: object) -> _buffer._BufferLayer:
        buf = (cls or Buffer)(**options)
        made.append(buf)
        return buf

    yield make
    for buf in made:
        buf.close(timeout=30)


@pytest.fixture(autouse=True)
def _no_telemetry_handlers() -> Iterator[None]:
    yield
    for handler in telemetry.list_handlers():
        telemetry.detach(handler["id"])


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.002) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)
