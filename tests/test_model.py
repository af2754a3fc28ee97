"""Model-based tests: a Hypothesis state machine drives a buffer and a plain model.

The model keeps, per partition, the items still buffered and the batches
already handed to ``handle_flush``.  Only size and manual flushes happen
(``flush_interval`` is an hour), so after every rule the buffer is brought to
rest (every flush it started has finished) and compared with the model.

Waiting for rest after an insert must not flush anything by itself (a
``sync_flush`` would empty the buffer after every insert and hide what it
holds), so the insert rules wait until the buffer's counters reach the counts
the model predicts; a buffer that flushes too little times out, one that
flushes too much or the wrong items fails the comparison.
"""

from __future__ import annotations

import threading
from typing import Any

import hypothesis.strategies as st
import pytest
from conftest import wait_for
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

# Generous: this machine is slow, and a failing wait only costs time when the
# library is wrong.
REST_TIMEOUT = 20.0

SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class PoisonError(Exception):
    """Raised by the test's handle_flush for a batch holding a poison item."""


def _is_poison(item: int) -> bool:
    """Items are distinct ints, negated for poison: a batch holding one fails."""
    return item < 0


def _recording_class(Buffer: type) -> type:
    """A Buffer subclass that records every batch, result and failure."""

    class Recording(Buffer):  # type: ignore[misc, valid-type]
        def __init__(self, **options: Any) -> None:
            self.lock = threading.Lock()
            self.calls: list[tuple[int, list[Any], str, Any]] = []
            self.errors: list[tuple[int, list[Any], str, BaseException]] = []
            self.bad_opts: list[str] = []
            super().__init__(**options)

        def handle_flush(self, batch: list[Any], opts: Any) -> Any:
            if opts.size != len(batch):
                self.bad_opts.append(f"opts.size {opts.size} != len(batch) {len(batch)}")
            if opts.buffer != self.name:
                self.bad_opts.append(f"opts.buffer {opts.buffer!r}")
            if opts.meta != ("meta", 1):
                self.bad_opts.append(f"opts.meta {opts.meta!r}")
            if not isinstance(batch, list):
                self.bad_opts.append(f"batch is a {type(batch).__name__}")
            with self.lock:
                self.calls.append((opts.partition, list(batch), opts.trigger, opts))
            if any(_is_poison(item) for item in batch):
                raise PoisonError(f"poison in {batch!r}")
            return ("ok", opts.partition, tuple(batch))

        def handle_flush_error(self, batch: list[Any], opts: Any, error: BaseException) -> None:
            with self.lock:
                self.errors.append((opts.partition, list(batch), opts.trigger, error))

    return Recording


def _subsequence(small: list[Any], big: list[Any]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def _exact_machine(Buffer: type) -> type[RuleBasedStateMachine]:
    Recording = _recording_class(Buffer)

    class ExactModel(RuleBasedStateMachine):
        """``max_size_jitter=0``: every batch is predicted exactly."""

        def __init__(self) -> None:
            super().__init__()
            self.buf: Any = None
            self.next_item = 1

        @initialize(partitions=st.integers(1, 4), max_size=st.integers(1, 6))
        def start(self, partitions: int, max_size: int) -> None:
            self.P = partitions
            self.T = max_size
            self.buf = Recording(
                name="model",
                partitions=partitions,
                max_size=max_size,
                max_size_jitter=0,
                flush_interval=3600.0,
                flush_jitter=0.0,
                flush_timeout=60.0,
                flush_meta=("meta", 1),
                insert_timeout=60.0,
            )
            self.rr = 0
            self.buffered: list[list[int]] = [[] for _ in range(partitions)]
            # Expected batches per partition: (items, trigger).
            self.batches: list[list[tuple[list[int], str]]] = [[] for _ in range(partitions)]
            self.inserted = [0] * partitions

        # -- model helpers ------------------------------------------------

        def _new_items(self, poison: list[bool]) -> list[int]:
            out = []
            for bad in poison:
                out.append(-self.next_item if bad else self.next_item)
                self.next_item += 1
            return out

        def _store(self, items: list[int]) -> None:
            """One insert call: one round-robin step, size flushes at T."""
            if not items:
                return
            p = self.rr % self.P
            self.rr += 1
            self.inserted[p] += len(items)
            for item in items:
                self.buffered[p].append(item)
                if len(self.buffered[p]) >= self.T:
                    self.batches[p].append((self.buffered[p][: self.T], "size"))
                    del self.buffered[p][: self.T]

        def _flush_all(self, trigger: str) -> list[tuple[int, list[int]]]:
            out = []
            for p in range(self.P):
                if self.buffered[p]:
                    assert len(self.buffered[p]) < self.T
                    self.batches[p].append((self.buffered[p], trigger))
                    out.append((p, self.buffered[p]))
                    self.buffered[p] = []
            return out

        def _expected_done(self, p: int) -> tuple[int, int]:
            flushed = failed = 0
            for items, _trigger in self.batches[p]:
                if any(_is_poison(i) for i in items):
                    failed += len(items)
                else:
                    flushed += len(items)
            return flushed, failed

        def _wait_rest(self) -> None:
            """Wait until every flush the model predicts has finished."""
            want = [self._expected_done(p) for p in range(self.P)]

            def done() -> bool:
                info = self.buf.info()
                return all(info[p]["flushed"] + info[p]["failed"] >= sum(want[p]) for p in range(self.P))

            wait_for(done, timeout=REST_TIMEOUT)

        def _compare(self) -> None:
            buf = self.buf
            assert buf.bad_opts == []
            # Batches handed to handle_flush, per partition, in order.
            with buf.lock:
                calls = list(buf.calls)
                errors = list(buf.errors)
            for p in range(self.P):
                got = [(items, trigger) for q, items, trigger, _ in calls if q == p]
                assert got == self.batches[p], f"partition {p}: batches differ"
                for items, _trigger in got:
                    assert 0 < len(items) <= self.T
                want_errors = [
                    (items, trigger)
                    for items, trigger in self.batches[p]
                    if any(_is_poison(i) for i in items)
                ]
                got_errors = [(items, trigger) for q, items, trigger, _ in errors if q == p]
                assert got_errors == want_errors, f"partition {p}: failed batches differ"
                for _q, _items, _trigger, error in errors:
                    assert isinstance(error, PoisonError)
            # Buffered items.
            expected_dump = [item for part in self.buffered for item in part]
            assert buf.dump() == expected_dump
            assert buf.size() == len(expected_dump)
            info = buf.info()
            assert [d["partition"] for d in info] == list(range(self.P))
            for p, d in enumerate(info):
                flushed, failed = self._expected_done(p)
                assert d["name"] == "model"
                assert d["size"] == len(self.buffered[p])
                assert d["flush_size"] == self.T
                assert d["inserted"] == self.inserted[p]
                assert d["flushed"] == flushed
                assert d["failed"] == failed
                assert d["inserted"] == d["size"] + d["flushed"] + d["failed"]

        def _settle_with_sync_flush(self) -> None:
            try:
                self.buf.sync_flush(timeout=REST_TIMEOUT)
            except ExceptionGroup as group:
                assert all(isinstance(e, PoisonError) for e in group.exceptions)

        # -- rules --------------------------------------------------------

        @rule(poison=st.booleans())
        def insert(self, poison: bool) -> None:
            (item,) = self._new_items([poison])
            self.buf.insert(item)
            self._store([item])
            self._wait_rest()
            self._compare()

        @rule(poison=st.lists(st.integers(0, 9).map(lambda n: n == 0), max_size=16))
        def insert_batch(self, poison: list[bool]) -> None:
            items = self._new_items(poison)
            self.buf.insert_batch(list(items))
            self._store(items)
            self._wait_rest()
            self._compare()

        @rule(poison=st.lists(st.integers(0, 9).map(lambda n: n == 0), max_size=16))
        def insert_batch_generator(self, poison: list[bool]) -> None:
            items = self._new_items(poison)
            self.buf.insert_batch(item for item in items)
            self._store(items)
            self._wait_rest()
            self._compare()

        @rule()
        def flush(self) -> None:
            self.buf.flush()
            self._flush_all("manual")
            # flush() alone must bring every buffered item to handle_flush.
            self._wait_rest()
            self._compare()
            # Nothing left: a sync_flush at rest flushes nothing.
            assert self.buf.sync_flush(timeout=REST_TIMEOUT) == []
            self._compare()

        @rule()
        def flush_then_sync_flush(self) -> None:
            self.buf.flush()
            flushed = self._flush_all("manual")
            ok = [("ok", p, tuple(items)) for p, items in flushed if not any(map(_is_poison, items))]
            try:
                result = self.buf.sync_flush(timeout=REST_TIMEOUT)
            except ExceptionGroup as group:
                assert all(isinstance(e, PoisonError) for e in group.exceptions)
                assert len(group.exceptions) <= len(flushed) - len(ok)
            else:
                # The batches flush() started may or may not count as this
                # call's, but nothing else can.
                assert _subsequence(result, ok), (result, ok)
            self._wait_rest()
            self._compare()

        @rule()
        def sync_flush(self) -> None:
            flushed = self._flush_all("manual")
            ok = [("ok", p, tuple(items)) for p, items in flushed if not any(map(_is_poison, items))]
            n_bad = len(flushed) - len(ok)
            if n_bad:
                with pytest.raises(ExceptionGroup) as info:
                    self.buf.sync_flush(timeout=REST_TIMEOUT)
                assert len(info.value.exceptions) == n_bad
                assert all(isinstance(e, PoisonError) for e in info.value.exceptions)
            else:
                assert self.buf.sync_flush(timeout=REST_TIMEOUT) == ok
            self._compare()

        @rule()
        def dump(self) -> None:
            first = self.buf.dump()
            assert first == [item for part in self.buffered for item in part]
            first.append("junk")  # a copy: changing it changes nothing
            assert self.buf.dump() == first[:-1]
            self._compare()

        @rule()
        def size(self) -> None:
            assert self.buf.size() == sum(map(len, self.buffered))

        @rule()
        def info(self) -> None:
            info = self.buf.info()
            assert len(info) == self.P
            for p, d in enumerate(info):
                assert d["partition"] == p
                assert d["size"] == len(self.buffered[p])
                assert d["flush_size"] == self.T
                assert d["flush_interval"] == 3600.0
                assert d["flush_jitter"] == 0.0
                assert d["flush_timeout"] == 60.0
                assert isinstance(d["flushing"], bool)
            # At rest no partition is flushing (give the flusher thread a
            # moment to notice it is idle).
            wait_for(lambda: not any(d["flushing"] for d in self.buf.info()), timeout=REST_TIMEOUT)

        @invariant()
        def counters_add_up(self) -> None:
            if self.buf is None:
                return
            for d in self.buf.info():
                assert d["inserted"] == d["size"] + d["flushed"] + d["failed"]

        def teardown(self) -> None:
            if self.buf is None:
                return
            try:
                self.buf.close(timeout=REST_TIMEOUT)
                self._flush_all("close")
                self._compare()
                assert self.buf.size() == 0
                assert self.buf.dump() == []
                self.buf.close()  # idempotent
                self._compare()
            finally:
                self.buf.close(timeout=REST_TIMEOUT)

    return ExactModel


def _jitter_machine(Buffer: type) -> type[RuleBasedStateMachine]:
    Recording = _recording_class(Buffer)

    class JitterModel(RuleBasedStateMachine):
        """``max_size_jitter > 0``: only bounds and order can be checked."""

        def __init__(self) -> None:
            super().__init__()
            self.buf: Any = None
            self.next_item = 1

        @initialize(
            partitions=st.integers(1, 3),
            max_size=st.integers(1, 5),
            jitter=st.integers(1, 4),
        )
        def start(self, partitions: int, max_size: int, jitter: int) -> None:
            self.P = partitions
            self.lo = max_size
            self.hi = max_size + jitter
            self.buf = Recording(
                name="model",
                partitions=partitions,
                max_size=max_size,
                max_size_jitter=jitter,
                flush_interval=3600.0,
                flush_jitter=0.0,
                flush_meta=("meta", 1),
                insert_timeout=60.0,
            )
            self.rr = 0
            self.inserted: list[list[int]] = [[] for _ in range(partitions)]

        def _at_rest(self) -> bool:
            for d in self.buf.info():
                if d["inserted"] != d["size"] + d["flushed"] + d["failed"]:
                    return False
                if d["size"] >= d["flush_size"]:
                    return False
            return True

        def _check(self) -> None:
            wait_for(self._at_rest, timeout=REST_TIMEOUT)
            buf = self.buf
            assert buf.bad_opts == []
            with buf.lock:
                calls = list(buf.calls)
            info = buf.info()
            dumped = buf.dump()
            offset = 0
            for p in range(self.P):
                batches = [(items, trigger) for q, items, trigger, _ in calls if q == p]
                for items, trigger in batches:
                    assert 0 < len(items) <= self.hi
                    if trigger == "size":
                        assert self.lo <= len(items) <= self.hi
                    else:
                        assert trigger in ("manual", "close")
                d = info[p]
                assert self.lo <= d["flush_size"] <= self.hi
                assert d["size"] < d["flush_size"]
                held = dumped[offset : offset + d["size"]]
                offset += d["size"]
                delivered = [item for items, _ in batches for item in items]
                assert delivered + held == self.inserted[p]
                assert d["inserted"] == len(self.inserted[p])
                assert d["flushed"] == len(delivered)
                assert d["failed"] == 0
            assert offset == len(dumped) == buf.size()

        def _store(self, items: list[int]) -> None:
            if items:
                self.inserted[self.rr % self.P].extend(items)
                self.rr += 1

        @rule(n=st.integers(0, 14))
        def insert_batch(self, n: int) -> None:
            items = list(range(self.next_item, self.next_item + n))
            self.next_item += n
            self.buf.insert_batch(items)
            self._store(items)
            self._check()

        @rule()
        def insert(self) -> None:
            item = self.next_item
            self.next_item += 1
            self.buf.insert(item)
            self._store([item])
            self._check()

        @rule()
        def sync_flush(self) -> None:
            self.buf.sync_flush(timeout=REST_TIMEOUT)
            assert self.buf.size() == 0
            self._check()

        @precondition(lambda self: self.buf is not None)
        @rule()
        def flush(self) -> None:
            self.buf.flush()
            wait_for(lambda: self.buf.size() == 0, timeout=REST_TIMEOUT)
            self._check()

        def teardown(self) -> None:
            if self.buf is None:
                return
            try:
                self.buf.close(timeout=REST_TIMEOUT)
                self._check()
                assert self.buf.size() == 0
            finally:
                self.buf.close(timeout=REST_TIMEOUT)

    return JitterModel


def test_exact_model(Buffer: type) -> None:
    run_state_machine_as_test(_exact_machine(Buffer), settings=SETTINGS)


def test_jitter_model(Buffer: type) -> None:
    run_state_machine_as_test(
        _jitter_machine(Buffer),
        settings=settings(SETTINGS, max_examples=40, stateful_step_count=30),
    )
