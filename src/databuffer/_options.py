"""Option checking: every bad value is refused at construction, naming it.

``Options`` holds a buffer's checked options (immutable once made);
``Callbacks`` its ``handle_flush``/``handle_flush_error``, refused when they
are of the wrong kind for the buffer (a coroutine function for ``Buffer``, a
plain one as ``AsyncBuffer``'s ``handle_flush``).
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = (
    "Callbacks",
    "Options",
    "check_count",
    "check_seconds",
    "check_timeout",
    "configure",
    "is_async_callable",
)

# Each partition allocates its ring (a pointer per item) up front.
MAX_CAPACITY = sys.maxsize // 16
DISPATCH = ("round_robin", "thread")
# inspect.CO_COROUTINE, without importing inspect (and with it ast, dis, ...).
_CO_COROUTINE = 0x80


def check_count(option: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be an int, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {value!r}")
    return value


def check_seconds(option: str, value: object, *, zero_ok: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{option} must be a number of seconds, not {type(value).__name__} {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{option} must be a finite number of seconds, got {value!r}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{option} must be {bound} seconds, got {value!r}")
    return seconds


def check_timeout(value: object) -> float | None:
    if value is None:
        return None
    return check_seconds("timeout", value, zero_ok=True)


class Options:
    """A buffer's options, checked (see ``Buffer``'s docstring for each).

    Immutable once made: read by every thread of the buffer without a lock.
    """

    __slots__ = (
        "by_thread",
        "flush_interval",
        "flush_jitter",
        "flush_meta",
        "flush_timeout",
        "insert_timeout",
        "max_retries",
        "max_size",
        "max_size_jitter",
        "name",
        "partitions",
        "retry_backoff",
        "retry_backoff_max",
    )

    def __init__(
        self,
        *,
        name: str,
        partitions: int,
        dispatch: str,
        max_size: int,
        max_size_jitter: int,
        flush_interval: float,
        flush_jitter: float,
        flush_timeout: float,
        flush_meta: Any,
        insert_timeout: float,
        max_retries: int,
        retry_backoff: float,
        retry_backoff_max: float,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__} {name!r}")
        self.name = name
        self.partitions = check_count("partitions", partitions, 1)
        if not isinstance(dispatch, str):
            raise TypeError(f"dispatch must be a str, not {type(dispatch).__name__} {dispatch!r}")
        if dispatch not in DISPATCH:
            raise ValueError(f"dispatch must be one of {', '.join(map(repr, DISPATCH))}, got {dispatch!r}")
        self.by_thread = dispatch == "thread"
        self.max_size = check_count("max_size", max_size, 1)
        self.max_size_jitter = check_count("max_size_jitter", max_size_jitter, 0)
        if self.max_size + self.max_size_jitter > MAX_CAPACITY:
            raise ValueError(
                f"max_size + max_size_jitter must be <= {MAX_CAPACITY}, "
                f"got {self.max_size} + {self.max_size_jitter}"
            )
        self.flush_interval = check_seconds("flush_interval", flush_interval, zero_ok=False)
        self.flush_jitter = check_seconds("flush_jitter", flush_jitter, zero_ok=True)
        self.flush_timeout = check_seconds("flush_timeout", flush_timeout, zero_ok=False)
        self.insert_timeout = check_seconds("insert_timeout", insert_timeout, zero_ok=False)
        self.max_retries = check_count("max_retries", max_retries, 0)
        self.retry_backoff = check_seconds("retry_backoff", retry_backoff, zero_ok=True)
        self.retry_backoff_max = check_seconds("retry_backoff_max", retry_backoff_max, zero_ok=True)
        self.flush_meta = flush_meta


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` makes a coroutine by definition (``async def``, a partial of one, ...)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    # inspect.markcoroutinefunction (3.12+) sets this attribute to a marker
    # of its module; only that marker counts (a Mock makes up any attribute).
    inspect = sys.modules.get("inspect")
    marker = getattr(inspect, "_is_coroutine_mark", None)
    if marker is not None and getattr(fn, "_is_coroutine_marker", None) is marker:
        return True
    code = getattr(fn, "__code__", None)
    if code is None and callable(fn) and not isinstance(fn, type):
        # A callable object: its __call__.
        code = getattr(type(fn).__call__, "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


def _describe(fn: object) -> str:
    return repr(getattr(fn, "__qualname__", fn))


class Callbacks:
    """A buffer's ``handle_flush`` and ``handle_flush_error``, bound, of the right kind.

    ``front`` is the user's object; ``stub`` the front class's own
    ``handle_flush`` (which a subclass overrides); ``needs_async``: the
    buffer awaits ``handle_flush`` (``AsyncBuffer``).
    """

    __slots__ = ("flush", "flush_error")

    def __init__(
        self,
        front: Any,
        stub: Callable[..., Any],
        handle_flush: Callable[..., Any] | None,
        handle_flush_error: Callable[..., Any] | None,
        *,
        needs_async: bool,
    ) -> None:
        cls = type(front)
        has_method = cls.handle_flush is not stub
        spelled = (
            "async def handle_flush(self, batch, opts)"
            if needs_async
            else "def handle_flush(self, batch, opts)"
        )
        if handle_flush is None and not has_method:
            raise TypeError(
                f"{cls.__name__} needs a handle_flush: define the method {spelled} or pass handle_flush=fn"
            )
        if handle_flush is not None and has_method:
            raise TypeError(f"{cls.__name__} defines handle_flush already; do not pass handle_flush= as well")
        if handle_flush is not None and not callable(handle_flush):
            raise TypeError(f"handle_flush must be callable, not {handle_flush!r}")
        if handle_flush_error is not None and not callable(handle_flush_error):
            raise TypeError(f"handle_flush_error must be callable, not {handle_flush_error!r}")
        self.flush: Callable[..., Any] = handle_flush or front.handle_flush
        self.flush_error: Callable[..., Any] = handle_flush_error or front.handle_flush_error
        fn = self.flush
        if needs_async:
            if isinstance(fn, (types.FunctionType, types.MethodType)) and not is_async_callable(fn):
                raise TypeError(
                    f"{cls.__name__} needs a coroutine function as handle_flush (async def), "
                    f"not the plain function {_describe(fn)}; use Buffer for one"
                )
            return
        for option, callback in (("handle_flush", fn), ("handle_flush_error", self.flush_error)):
            if is_async_callable(callback):
                raise TypeError(
                    f"{cls.__name__} calls {option} from a thread and cannot await the coroutine "
                    f"function {_describe(callback)}: use AsyncBuffer for an async {option}, "
                    "or make it a plain function"
                )


def configure(
    front: Any, stub: Callable[..., Any], arguments: dict[str, Any], *, needs_async: bool
) -> tuple[Options, Callbacks]:
    """Check the arguments of a buffer's constructor: its ``locals()``, the parameters by name.

    ``name`` None is the class's name.  Both buffers take the same options
    and pass them on here unchanged, so they are checked in one place.
    """
    options = {key: value for key, value in arguments.items() if key != "self"}
    handle_flush = options.pop("handle_flush")
    handle_flush_error = options.pop("handle_flush_error")
    if options["name"] is None:
        options["name"] = type(front).__name__
    return Options(**options), Callbacks(
        front, stub, handle_flush, handle_flush_error, needs_async=needs_async
    )
