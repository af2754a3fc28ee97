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
from typing import Any, ParamSpec, cast

from ._text import closest, join_and, join_or, plural, short_repr

__all__ = (
    "Callbacks",
    "Options",
    "check_count",
    "check_retry_on",
    "check_seconds",
    "check_timeout",
    "configure",
    "is_async_callable",
    "keyword_options",
)

P = ParamSpec("P")

# Each partition allocates its ring (a pointer per item) up front.
MAX_CAPACITY = sys.maxsize // 16
# Each partition costs a flusher thread in Buffer (a task in AsyncBuffer),
# a ring allocated when the buffer is built, and a wake event.  Partitions
# buy concurrent flushes (one batch at a time each) and, with
# dispatch="thread", producers that never contend: past one per producer
# thread (a few per core) or per concurrent writer the sink takes, more buy
# nothing, and a thousand flusher threads is already more than a process
# schedules usefully.  Refusing more catches a slip such as 2**63 (which
# would allocate until out of memory) before anything is allocated.
MAX_PARTITIONS = 1024
# Each partition allocates a slot per queued batch up front (a pointer), and
# a full queue holds that many batches of items: past a few batches the
# producer already never waits for the flusher hand-off, and a queue of a
# million batches is a slip (max_size, not max_queued_batches).
MAX_QUEUED_BATCHES = 65536
# The timer wakes once per flush_interval per partition, and Buffer's timer
# thread rescans at least once per flush_timeout: below a millisecond an
# idle buffer keeps a core busy.  There is no upper bound: finite times
# above threading.TIMEOUT_MAX (~292 years) mean "practically never", and
# the engines clamp their waits.
MIN_FLUSH_INTERVAL = 0.001
MIN_FLUSH_TIMEOUT = 0.001
# flush_jitter=None: flush_interval divided by this, 20 % (2.0 s at the
# default 10 s, the fixed default before), so that a short interval is not
# drowned by its jitter and a long one is still spread out.  A division, not
# "* 0.2": it gives 0.01 for 0.05, not 0.010000000000000002.
DEFAULT_JITTER_DIVISOR = 5
# Ints longer than this are shown by their size in messages: repr of a
# giant int is long, slow, or refused (sys.set_int_max_str_digits).
_REPR_BITS = 128
DISPATCH = ("round_robin", "thread")
ON_FULL = ("wait", "raise", "drop_newest", "drop_oldest")
# inspect.CO_COROUTINE, without importing inspect (and with it ast, dis, ...).
_CO_COROUTINE = 0x80


def _show(value: object) -> str:
    """``repr(value)``; an int too long to print usefully as its order of magnitude."""
    if isinstance(value, int) and value.bit_length() > _REPR_BITS:
        sign = "-" if value < 0 else ""
        return f"an int of about {sign}10**{round(math.log10(abs(value)))}"
    return repr(value)


def check_count(option: str, value: object, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """An int in ``minimum..maximum``; ``why`` says why there is a maximum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be an int, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {_show(value)}")
    if maximum is not None and value > maximum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{option} must be <= {maximum}{reason}, got {_show(value)}")
    return value


def check_seconds(option: str, value: object, *, zero_ok: bool, minimum: float = 0.0, why: str = "") -> float:
    """A finite float >= 0 (> 0 unless ``zero_ok``), and >= ``minimum`` (``why`` says why)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{option} must be a number of seconds, not {type(value).__name__} {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        # An int (or a Fraction) beyond a float's range, ~1.8e308 seconds.
        raise ValueError(
            f"{option} must be a finite number of seconds, got {_show(value)}, too large for a float"
        ) from None
    if not math.isfinite(seconds):
        raise ValueError(f"{option} must be a finite number of seconds, got {_show(value)}")
    if minimum > 0 and seconds < minimum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{option} must be >= {minimum} seconds{reason}, got {_show(value)}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{option} must be {bound} seconds, got {_show(value)}")
    return seconds


#: ``retry_on`` as checked: None (retry every error), a tuple of exception
#: types, or a predicate ``(error) -> bool``.
RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], object] | None

_RETRY_ON_KINDS = "an exception type, a tuple of exception types, or a callable (error) -> bool"


def check_retry_on(value: object) -> RetryOn:
    """``retry_on``: None, a tuple of exception types (one type alone counts as a tuple of it), or a callable.

    A class is callable, so a class that is not an exception type would
    otherwise pass as a predicate (``retry_on=int``): refused, as is a
    coroutine function, which would return a coroutine (always true, never
    awaited) instead of its answer.
    """
    if value is None:
        return None
    if isinstance(value, type):
        if issubclass(value, BaseException):
            return (value,)
        raise TypeError(
            f"retry_on must be {_RETRY_ON_KINDS}, not the class {value.__qualname__}, "
            "which is not an exception type (a BaseException subclass)"
        )
    if isinstance(value, tuple):
        for index, member in enumerate(value):
            if not (isinstance(member, type) and issubclass(member, BaseException)):
                shown = (
                    f"the class {member.__qualname__}"
                    if isinstance(member, type)
                    else f"{type(member).__name__} {_show(member)}"
                )
                raise TypeError(
                    f"retry_on must be {_RETRY_ON_KINDS}; retry_on[{index}] is {shown}, "
                    "not an exception type (a BaseException subclass)"
                )
        return value
    if not callable(value):
        raise TypeError(f"retry_on must be {_RETRY_ON_KINDS}, not {type(value).__name__} {_show(value)}")
    if is_async_callable(value):
        raise TypeError(
            f"retry_on must be a plain callable (error) -> bool, not the coroutine function "
            f"{_describe(value)}: the buffer calls it without awaiting it"
        )
    return cast("Callable[[BaseException], object]", value)


def keyword_options(init: Callable[P, None]) -> Callable[P, None]:
    """A buffer constructor that refuses positional arguments and unknown options in the user's words.

    Python's own errors name the function that was called, not the user's
    class (``BufferMethods.__init__() got an unexpected keyword argument
    'maxsize'``).  The options are read from ``init``'s keyword-only
    parameters: an option added there is known here.  A subclass whose own
    ``__init__`` takes more and passes the options on with
    ``super().__init__(**options)`` goes through here too.
    """
    code = init.__code__
    options = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    known = frozenset(options)

    @functools.wraps(init)
    def __init__(*args: P.args, **kwargs: P.kwargs) -> None:
        # Once per buffer made: a length test and a subset test.
        if len(args) > 1 or not known.issuperset(kwargs):
            raise _misused(init, args, kwargs, options)
        init(*args, **kwargs)

    return __init__


def _misused(
    init: Callable[..., None], args: tuple[Any, ...], kwargs: dict[str, Any], options: tuple[str, ...]
) -> TypeError:
    """The error of a constructor called with positional arguments or unknown options."""
    front, positional = args[0], args[1:]
    cls = type(front).__name__
    if positional:
        got = (
            f"{cls}() takes its options as keywords only, but got "
            f"{plural(len(positional), 'positional argument')} ({', '.join(map(short_repr, positional))})"
        )
        # A callable first is handle_flush, unless the class defines the method.
        stub = f"{init.__qualname__.rpartition('.')[0]}.handle_flush"
        first = positional[0]
        if callable(first) and getattr(type(front).handle_flush, "__qualname__", None) == stub:
            name = getattr(first, "__name__", "")
            name = name if name.isidentifier() else "fn"
            if len(positional) == 1:
                return TypeError(f"{got}: pass it by name, {cls}(handle_flush={name})")
            return TypeError(f"{got}: name each one, as in {cls}(handle_flush={name}, max_size=1000)")
        return TypeError(f"{got}: name each one, as in {cls}(max_size=1000, flush_interval=5.0)")
    described = []
    unmatched = False
    for name in kwargs:
        if name in options:
            continue
        matches = closest(name, options)
        described.append(
            f"{name!r} (did you mean {join_or([repr(m) for m in matches])}?)" if matches else repr(name)
        )
        unmatched = unmatched or not matches
    if len(described) == 1:
        message = f"{cls}() got an unknown option {described[0]}"
    else:
        message = f"{cls}() got unknown options {join_and(described)}"
    if unmatched:
        message += f"; its options are {', '.join(options)}"
    return TypeError(message)


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
        "max_queued_batches",
        "max_retries",
        "max_size",
        "max_size_jitter",
        "name",
        "on_full",
        "partitions",
        "retry_backoff",
        "retry_backoff_max",
        "retry_on",
    )

    def __init__(
        self,
        *,
        name: str,
        partitions: int,
        dispatch: str,
        max_size: int,
        max_size_jitter: int,
        max_queued_batches: int,
        flush_interval: float,
        flush_jitter: float | None,
        flush_timeout: float,
        flush_meta: Any,
        insert_timeout: float,
        on_full: str,
        max_retries: int,
        retry_backoff: float,
        retry_backoff_max: float,
        retry_on: object,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__} {name!r}")
        self.name = name
        self.partitions = check_count(
            "partitions", partitions, 1, MAX_PARTITIONS, "each partition has its own flusher thread"
        )
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
                f"got {_show(self.max_size)} + {_show(self.max_size_jitter)}"
            )
        self.max_queued_batches = check_count(
            "max_queued_batches",
            max_queued_batches,
            0,
            MAX_QUEUED_BATCHES,
            "each queued batch takes a slot per partition; a few batches already keep producers from waiting",
        )
        self.flush_interval = check_seconds(
            "flush_interval",
            flush_interval,
            zero_ok=False,
            minimum=MIN_FLUSH_INTERVAL,
            why="the timer wakes once per interval per partition",
        )
        # The jitter in force, in seconds: what the engines draw from and info() shows.
        if flush_jitter is None:
            self.flush_jitter = self.flush_interval / DEFAULT_JITTER_DIVISOR
        else:
            self.flush_jitter = check_seconds("flush_jitter", flush_jitter, zero_ok=True)
        self.flush_timeout = check_seconds(
            "flush_timeout",
            flush_timeout,
            zero_ok=False,
            minimum=MIN_FLUSH_TIMEOUT,
            why="the timer rescans at least once per flush_timeout",
        )
        self.insert_timeout = check_seconds("insert_timeout", insert_timeout, zero_ok=False)
        if not isinstance(on_full, str):
            raise TypeError(f"on_full must be a str, not {type(on_full).__name__} {on_full!r}")
        if on_full not in ON_FULL:
            raise ValueError(f"on_full must be one of {', '.join(map(repr, ON_FULL))}, got {on_full!r}")
        self.on_full = on_full
        self.max_retries = check_count("max_retries", max_retries, 0)
        self.retry_backoff = check_seconds("retry_backoff", retry_backoff, zero_ok=True)
        self.retry_backoff_max = check_seconds("retry_backoff_max", retry_backoff_max, zero_ok=True)
        self.retry_on = check_retry_on(retry_on)
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
        name = f"{cls.__name__}()"
        spelled = (
            "async def handle_flush(self, batch, opts)"
            if needs_async
            else "def handle_flush(self, batch, opts)"
        )
        if handle_flush is None and not has_method:
            raise TypeError(
                f"{name} needs a handle_flush: pass handle_flush=fn, a function fn(batch, opts), "
                f"or define the method {spelled} in a subclass"
            )
        if handle_flush is not None and has_method:
            raise TypeError(
                f"{name} got handle_flush={_describe(handle_flush)}, but {cls.__name__} defines the "
                "method handle_flush already: use one or the other"
            )
        if handle_flush is not None and not callable(handle_flush):
            raise TypeError(
                "handle_flush must be a function fn(batch, opts), "
                f"not {type(handle_flush).__name__} {short_repr(handle_flush)}"
            )
        if handle_flush_error is not None and not callable(handle_flush_error):
            raise TypeError(
                "handle_flush_error must be a function fn(batch, opts, error), "
                f"not {type(handle_flush_error).__name__} {short_repr(handle_flush_error)}"
            )
        self.flush: Callable[..., Any] = handle_flush or front.handle_flush
        self.flush_error: Callable[..., Any] = handle_flush_error or front.handle_flush_error
        fn = self.flush
        if needs_async:
            if isinstance(fn, (types.FunctionType, types.MethodType)) and not is_async_callable(fn):
                raise TypeError(
                    f"{name} needs a coroutine function as handle_flush (async def), "
                    f"not the plain function {_describe(fn)}: define it with async def, "
                    "or use Buffer, which calls a plain one from a thread"
                )
            return
        for option, callback in (("handle_flush", fn), ("handle_flush_error", self.flush_error)):
            if is_async_callable(callback):
                raise TypeError(
                    f"{name} calls {option} from a thread and cannot await the coroutine "
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
