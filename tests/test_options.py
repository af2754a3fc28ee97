"""Construction and options (SPEC sections 1 and 2), against both cores."""

from __future__ import annotations

import math
import re
import sys
import threading
from typing import Any

import pytest

from databuffer import BufferClosed, FlushOpts


def noop(batch: list[Any], opts: FlushOpts) -> None:
    return None


COUNT_OPTIONS = ("partitions", "max_size", "max_size_jitter")
SECONDS_OPTIONS = ("flush_interval", "flush_jitter", "flush_timeout", "insert_timeout")

BAD_TYPES = (
    [(option, value) for option in COUNT_OPTIONS for value in (True, False, "3", 3.0, 2.5, None, [3])]
    + [
        (option, value)
        for option in SECONDS_OPTIONS
        for value in ("1.0", "1", None, [1.0], b"1", complex(1, 0), object())
        if not (option == "flush_jitter" and value is None)  # None: 20 % of flush_interval
    ]
    + [("name", 3), ("name", b"name"), ("name", ["name"])]
    + [("dispatch", v) for v in (None, 1, b"thread", ["thread"])]
)

BAD_VALUES = (
    [("partitions", 0), ("partitions", -1), ("max_size", 0), ("max_size", -5), ("max_size_jitter", -1)]
    + [("flush_jitter", v) for v in (-0.5, -1, math.nan, math.inf)]
    + [
        (option, value)
        for option in ("flush_interval", "flush_timeout", "insert_timeout")
        for value in (0, 0.0, -1, -0.001, math.nan, math.inf, -math.inf)
    ]
    + [("dispatch", v) for v in ("", "threads", "THREAD", "round-robin", "roundrobin")]
)


def _id(value: object) -> str:
    return f"{type(value).__name__}:{value!r}"


@pytest.mark.parametrize(("option", "value"), BAD_TYPES, ids=[f"{o}={_id(v)}" for o, v in BAD_TYPES])
def test_wrong_type_raises_type_error_naming_the_option(make_buffer, option, value):
    with pytest.raises(TypeError, match=re.escape(option)):
        make_buffer(handle_flush=noop, flush_interval=3600, **{option: value})


@pytest.mark.parametrize(("option", "value"), BAD_VALUES, ids=[f"{o}={_id(v)}" for o, v in BAD_VALUES])
def test_out_of_range_raises_value_error_naming_the_option(make_buffer, option, value):
    options: dict[str, Any] = {"handle_flush": noop, "flush_interval": 3600}
    options[option] = value
    with pytest.raises(ValueError, match=re.escape(option)):
        make_buffer(**options)


def test_unknown_keyword_raises_type_error_naming_it(make_buffer):
    with pytest.raises(TypeError, match=r"\(\) got an unknown option 'bogus_option'; its options are "):
        make_buffer(handle_flush=noop, bogus_option=1)


def test_options_are_keyword_only(Buffer):
    keywords_only = r"\(\) takes its options as keywords only, but got"
    with pytest.raises(TypeError, match=f"{keywords_only} 1 positional argument"):
        Buffer(noop)
    with pytest.raises(TypeError, match=f"{keywords_only} 2 positional arguments"):
        Buffer(noop, "name")


def test_boundary_values_are_accepted_and_seconds_may_be_ints(make_buffer):
    buf = make_buffer(
        handle_flush=noop,
        partitions=1,
        max_size=1,
        max_size_jitter=0,
        flush_interval=3600,
        flush_jitter=0,
        flush_timeout=7,
        insert_timeout=1,
    )
    (info,) = buf.info()
    assert info["flush_size"] == 1
    assert info["flush_interval"] == 3600.0
    assert info["flush_jitter"] == 0.0
    assert info["flush_timeout"] == 7.0
    assert isinstance(info["flush_interval"], (int, float))


@pytest.mark.parametrize("value", ["", "threads", "round-robin"])
def test_bad_dispatch_names_the_value_and_the_choices(make_buffer, value):
    with pytest.raises(ValueError) as info:
        make_buffer(handle_flush=noop, flush_interval=3600, dispatch=value)
    message = str(info.value)
    assert "dispatch" in message
    assert repr(value) in message
    assert "'round_robin'" in message and "'thread'" in message


def test_defaults(make_buffer):
    calls = []
    buf = make_buffer(handle_flush=lambda batch, opts: calls.append(opts))
    info = buf.info()
    assert len(info) == 1  # partitions=1
    (part,) = info
    assert part["flush_size"] == 5000
    assert part["flush_interval"] == 10.0
    assert part["flush_jitter"] == 2.0
    assert part["flush_timeout"] == 60.0
    buf.insert("x")
    buf.sync_flush(timeout=30)
    assert calls and calls[0].meta is None


JITTERS = [
    # (flush_interval, flush_jitter given (or not), the jitter in force)
    (10.0, {}, 2.0),
    (0.05, {}, 0.01),
    (3600, {}, 720.0),
    (7, {"flush_jitter": None}, 1.4),
    # An explicit number keeps its meaning, whatever the interval.
    (0.05, {"flush_jitter": 2.0}, 2.0),
    (3600, {"flush_jitter": 0}, 0.0),
    (10.0, {"flush_jitter": 3}, 3.0),
]


@pytest.mark.parametrize(("interval", "given", "in_force"), JITTERS, ids=[f"{i}-{g}" for i, g, _ in JITTERS])
def test_flush_jitter_defaults_to_a_fifth_of_flush_interval_and_info_shows_it(
    make_buffer, AsyncBuffer, interval, given, in_force
):
    async def anoop(batch, opts):
        return None

    for buf in (
        make_buffer(handle_flush=noop, partitions=2, flush_interval=interval, **given),
        AsyncBuffer(handle_flush=anoop, partitions=2, flush_interval=interval, **given),  # never started
    ):
        for part in buf.info():
            assert part["flush_jitter"] == in_force
            assert type(part["flush_jitter"]) is float


def test_no_handle_flush_raises_type_error(Buffer):
    with pytest.raises(TypeError, match="handle_flush"):
        Buffer()
    with pytest.raises(TypeError, match="handle_flush"):
        Buffer(name="x", max_size=3)

    class NoMethod(Buffer):
        pass

    with pytest.raises(TypeError, match="handle_flush"):
        NoMethod()


def test_method_and_keyword_both_raise_type_error(Buffer):
    class WithMethod(Buffer):
        def handle_flush(self, batch, opts):
            return None

    with pytest.raises(TypeError, match="handle_flush"):
        WithMethod(handle_flush=noop)


def test_non_callable_callbacks_raise_type_error(Buffer):
    with pytest.raises(TypeError, match="handle_flush"):
        Buffer(handle_flush="not callable")
    with pytest.raises(TypeError, match="handle_flush_error"):
        Buffer(handle_flush=noop, handle_flush_error=42)


def test_callback_style(make_buffer):
    calls = []
    meta = {"table": "events"}

    def fn(batch, opts):
        calls.append((list(batch), opts))
        return ("ok", len(batch))

    buf = make_buffer(handle_flush=fn, name="callback-buf", flush_meta=meta, flush_interval=3600)
    buf.insert("a")
    buf.insert("b")
    assert buf.sync_flush(timeout=30) == [("ok", 2)]
    assert len(calls) == 1
    batch, opts = calls[0]
    assert batch == ["a", "b"]
    assert isinstance(opts, FlushOpts)
    assert opts.meta is meta
    assert opts.size == 2
    assert opts.partition == 0
    assert opts.buffer == "callback-buf"
    assert opts.trigger == "manual"


def test_subclass_style(make_buffer, Buffer):
    class EventBuffer(Buffer):
        def __init__(self, sink, **options):
            self.sink = sink
            super().__init__(**options)

        def handle_flush(self, batch, opts):
            self.sink.append((list(batch), opts))
            return len(batch)

    sink: list = []
    buf = make_buffer(EventBuffer, sink=sink, partitions=2, max_size=10, flush_interval=3600)
    assert isinstance(buf, Buffer)
    buf.insert_batch([1, 2, 3])
    buf.insert_batch([4])
    assert buf.sync_flush(timeout=30) == [3, 1]
    assert sorted(sink, key=lambda call: call[1].partition)[0][0] == [1, 2, 3]
    assert {opts.buffer for _, opts in sink} == {"EventBuffer"}


def test_subclasses_keep_their_own_insert_overrides(make_buffer, Buffer, core_name):
    """Each subclass gets insert descriptors of its own (compiled core), never over an override."""
    calls: list = []

    class EventBuffer(Buffer):
        def handle_flush(self, batch, opts):
            return None

    class Logged(EventBuffer):
        def insert(self, item, timeout=None):
            calls.append(item)
            super().insert(item, timeout)

    class MoreLogged(Logged):
        pass

    core = next(c for c in Buffer.__mro__ if c.__name__ == "BufferCore")
    if core_name == "c":
        for cls in (Buffer, EventBuffer):
            for name in ("insert", "insert_batch"):
                own = cls.__dict__[name]
                # The same C method, in a descriptor made for this class.
                assert type(own) is type(core.__dict__[name])
                assert own.__objclass__ is cls
                assert own.__doc__ == core.__dict__[name].__doc__
        with pytest.raises(TypeError, match="subclass of BufferCore"):
            sys.modules[core.__module__].own_methods(dict)
    assert "insert" not in MoreLogged.__dict__
    assert MoreLogged.insert is Logged.insert
    buf = make_buffer(MoreLogged, partitions=2, max_size=10, flush_interval=3600)
    buf.insert("a")
    buf.insert_batch(["b", "c"])
    assert calls == ["a"]
    assert sorted(buf.dump()) == ["a", "b", "c"]
    plain = make_buffer(EventBuffer, max_size=10, flush_interval=3600)
    plain.insert(1)
    plain.insert_batch([2, 3])
    assert plain.dump() == [1, 2, 3]


def test_default_name_is_the_class_name(make_buffer, Buffer):
    class EventBuffer(Buffer):
        def handle_flush(self, batch, opts):
            return opts.buffer

    sub = make_buffer(EventBuffer, flush_interval=3600)
    assert [p["name"] for p in sub.info()] == ["EventBuffer"]
    sub.insert(1)
    assert sub.sync_flush(timeout=30) == ["EventBuffer"]

    plain = make_buffer(handle_flush=lambda batch, opts: opts.buffer, flush_interval=3600)
    assert plain.info()[0]["name"] == Buffer.__name__
    plain.insert(1)
    assert plain.sync_flush(timeout=30) == [Buffer.__name__]

    named = make_buffer(EventBuffer, name="custom", partitions=2, flush_interval=3600)
    assert [p["name"] for p in named.info()] == ["custom", "custom"]


def test_name_appears_in_thread_names(make_buffer):
    buf = make_buffer(handle_flush=noop, name="threadnamecheck", partitions=2, flush_interval=3600)
    names = [t.name for t in threading.enumerate() if t.is_alive()]
    assert any("threadnamecheck" in name for name in names), names
    buf.close(timeout=30)


def test_context_manager_returns_buffer_and_closes(make_buffer):
    calls = []
    buf = make_buffer(
        handle_flush=lambda batch, opts: calls.append((list(batch), opts.trigger)),
        max_size=100,
        flush_interval=3600,
    )
    with buf as entered:
        assert entered is buf
        buf.insert("x")
        buf.insert("y")
        assert calls == []
    assert calls == [(["x", "y"], "close")]
    with pytest.raises(BufferClosed):
        buf.insert("z")


def test_context_manager_closes_on_exception(make_buffer):
    calls = []
    buf = make_buffer(
        handle_flush=lambda batch, opts: calls.append((list(batch), opts.trigger)),
        flush_interval=3600,
    )
    with pytest.raises(KeyError):
        with buf:
            buf.insert(1)
            raise KeyError("inside")
    assert calls == [([1], "close")]
    with pytest.raises(BufferClosed):
        buf.insert(2)


def test_many_buffers_of_same_and_different_classes_run_at_once(make_buffer, Buffer):
    class A(Buffer):
        def handle_flush(self, batch, opts):
            return ("A", opts.buffer, list(batch))

    class B(Buffer):
        def handle_flush(self, batch, opts):
            return ("B", opts.buffer, list(batch))

    a1 = make_buffer(A, name="a1", flush_interval=3600)
    a2 = make_buffer(A, name="a2", flush_interval=3600)
    b1 = make_buffer(B, name="b1", flush_interval=3600)
    c1 = make_buffer(
        handle_flush=lambda batch, opts: ("C", opts.buffer, list(batch)), name="c1", flush_interval=3600
    )
    for i, buf in enumerate((a1, a2, b1, c1)):
        buf.insert(i)
    assert b1.sync_flush(timeout=30) == [("B", "b1", [2])]
    assert a2.sync_flush(timeout=30) == [("A", "a2", [1])]
    assert c1.sync_flush(timeout=30) == [("C", "c1", [3])]
    assert a1.sync_flush(timeout=30) == [("A", "a1", [0])]
