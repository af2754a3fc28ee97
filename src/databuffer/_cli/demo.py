"""``python -m databuffer demo``: synthetic events through a buffer into SQLite, then a check.

``demo`` streams synthetic events, one ``insert`` each, through a partitioned
:class:`~databuffer.Buffer` into an SQLite table (one ``executemany``
transaction per batch), shows its progress on stderr, prints what it measured
and checks that the table holds exactly the events inserted.  ``demo --async``
does the same through an :class:`~databuffer.AsyncBuffer`: a coroutine inserts
the events on an event loop (asyncio's, or uvloop's with ``--uvloop``), and
each batch is written in a thread through ``asyncio.to_thread``.

:func:`run_demo` runs it and :func:`format_result` shows its
:class:`DemoResult`; :data:`DESCRIPTION`, :func:`add_arguments` and
:func:`run_command` are the command line (see :mod:`databuffer._cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .. import USING_EXTENSION, AsyncBuffer, Buffer, BufferFull, FlushOpts
from .._support import LOOPS, loop_factory

__all__ = (
    "DEFAULT_EVENTS",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_PARTITIONS",
    "DESCRIPTION",
    "KINDS",
    "LOOPS",
    "TABLE",
    "DemoError",
    "DemoResult",
    "Event",
    "Progress",
    "SQLiteSink",
    "add_arguments",
    "check_table",
    "format_result",
    "generate_events",
    "run_command",
    "run_demo",
)

#: One synthetic event: ``(id, ts_ns, kind, value)``.
Event = tuple[int, int, str, float]

DEFAULT_EVENTS = 1_000_000
DEFAULT_PARTITIONS = 4
DEFAULT_MAX_SIZE = 5000

#: The table the demo writes; it is dropped and created anew on every run.
TABLE = "demo_events"

KINDS = ("trade", "quote", "cancel", "fill")

# The demo would rather wait for a slow disk than drop events: an insert that
# still finds no room after this long, or a flush still running, is a stall
# worth reporting, not a hiccup.
DEMO_TIMEOUT = 120.0

# The producer reports progress once per this many events (a power of two,
# minus one to serve as a mask): per insert, progress costs a counter and a
# mask test, never a clock read.
_PROGRESS_MASK = 4096 - 1


class DemoError(Exception):
    """The demo could not run to the end (an insert gave up, the database failed)."""


def generate_events(count: int) -> Iterator[Event]:
    """Yield ``count`` synthetic events with ids ``0 .. count - 1``, in order.

    Args:
        count: how many events to make.

    Yields:
        ``(id, ts_ns, kind, value)``: a wall-clock timestamp in nanoseconds,
        one of :data:`KINDS` in turn, and a price-like float.
    """
    kinds = KINDS
    n_kinds = len(kinds)
    time_ns = time.time_ns
    for i in range(count):
        yield (i, time_ns(), kinds[i % n_kinds], 100.0 + (i % 1000) * 0.01)


class SQLiteSink:
    """Writes batches of events into one SQLite table: the demo's ``handle_flush``.

    :meth:`write` is called from several threads at once: the flusher
    threads of a ``Buffer``, or, for an ``AsyncBuffer``, the threads of the
    event loop's default executor, where each flusher task runs it through
    ``asyncio.to_thread``.  Every one of them writes through one connection,
    opened with ``check_same_thread=False`` and guarded by a lock, rather
    than through a connection per thread.  SQLite lets one writer at a time
    into a database anyway, so connections per thread would only queue on
    SQLite's file lock, where a waiting writer polls with sleeps (the busy
    timeout) instead of being woken when the lock is free.  A connection may
    also be closed only by the thread that opened it, while the flusher
    threads belong to the buffer (which starts a new one when a flush is
    abandoned after ``flush_timeout``) and the executor's threads to the
    event loop.  With one connection the main thread can close it and check
    the table through it.

    WAL mode with ``synchronous=NORMAL`` makes a commit an append to the
    write-ahead log without an fsync, so a transaction per batch stays cheap.

    Args:
        path: the database file; created if missing.  The table :data:`TABLE`
            in it is dropped and created anew.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False)
        except sqlite3.Error as exc:
            raise DemoError(f"cannot open the database {str(path)!r}: {exc}") from exc
        self._lock = threading.Lock()
        #: Batches and rows committed, batches per trigger; guarded by ``_lock``.
        self.batches = 0
        self.rows = 0
        self.triggers: Counter[str] = Counter()
        #: Items of batches that failed, and the first error; guarded by ``_lock``.
        self.failed_items = 0
        self.first_error: BaseException | None = None
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            self._conn.execute(
                f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, "
                "kind TEXT NOT NULL, value REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            self._conn.close()
            raise DemoError(f"cannot use the database {str(path)!r}: {exc}") from exc

    def write(self, batch: list[Event], opts: FlushOpts) -> int:
        """Insert ``batch`` in one transaction (``handle_flush``).

        Returns:
            The number of rows written.
        """
        with self._lock:
            # The connection opens a transaction before the first INSERT;
            # leaving the block commits it (or rolls it back on an error).
            with self._conn:
                self._conn.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)", batch)
            self.batches += 1
            self.rows += len(batch)
            self.triggers[opts.trigger] += 1
        return len(batch)

    def record_failure(self, batch: list[Event], opts: FlushOpts, error: BaseException) -> None:
        """Count a batch that could not be written (``handle_flush_error``)."""
        with self._lock:
            self.failed_items += len(batch)
            if self.first_error is None:
                self.first_error = error

    def check(self, expected: int) -> list[str]:
        """Compare the table with the events ``0 .. expected - 1``; see :func:`check_table`."""
        with self._lock:
            return check_table(self._conn, expected)

    def close(self) -> None:
        """Close the connection (the last one to close removes the WAL files)."""
        with self._lock:
            self._conn.close()


def check_table(conn: sqlite3.Connection, expected: int) -> list[str]:
    """Check that :data:`TABLE` holds exactly the events with ids ``0 .. expected - 1``.

    ``id`` is the table's primary key, so its values are distinct; ``expected``
    distinct integers from 0 to ``expected - 1`` are exactly those ids.  The
    sum of the ids is checked as well.

    Args:
        conn: a connection to the demo's database.
        expected: the number of events inserted.

    Returns:
        What is wrong, one message per problem; empty when the table is right.
    """
    count, total, lowest, highest = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM(id), 0), MIN(id), MAX(id) FROM {TABLE}"
    ).fetchone()
    problems = []
    if count != expected:
        problems.append(f"the table holds {count:,} rows, expected {expected:,}")
    want_total = expected * (expected - 1) // 2
    if total != want_total:
        problems.append(f"the ids sum to {total:,}, expected {want_total:,}")
    if count and (lowest != 0 or highest != expected - 1):
        problems.append(f"the ids run from {lowest:,} to {highest:,}, expected 0 to {expected - 1:,}")
    return problems


class Progress:
    """Reports how far the demo has got, on a stream (stderr by default).

    On a terminal one line is rewritten in place, at most ten times a second.
    Otherwise (a pipe, a CI log) a line is written each time another tenth of
    the events has been inserted: at most ten lines, however long the run.

    Args:
        total: the number of events the demo inserts.
        stream: where to write; ``None`` writes nothing.
        interactive: rewrite one line in place; by default, whether
            ``stream`` is a terminal.
    """

    REFRESH = 0.1

    def __init__(self, total: int, stream: TextIO | None, *, interactive: bool | None = None) -> None:
        self.total = total
        self.stream = stream
        self.interactive = (
            interactive if interactive is not None else bool(stream is not None and stream.isatty())
        )
        self._start = time.monotonic()
        self._last_refresh = -float("inf")
        self._tenths = 0
        self._width = 0

    def update(self, inserted: int, written: int) -> None:
        """Report ``inserted`` events stored in the buffer and ``written`` rows committed."""
        if self.stream is None:
            return
        if self.interactive:
            now = time.monotonic()
            if now - self._last_refresh >= self.REFRESH:
                self._last_refresh = now
                self._rewrite(self._line(inserted, written))
        else:
            tenths = inserted * 10 // self.total
            if tenths > self._tenths:
                self._tenths = tenths
                self._print(self._line(inserted, written))

    def finish(self, inserted: int, written: int) -> None:
        """Write the final state and end the line."""
        if self.stream is None:
            return
        line = self._line(inserted, written)
        if self.interactive:
            self._rewrite(line)
            self.stream.write("\n")
            self.stream.flush()
        else:
            self._print(line)

    def _line(self, inserted: int, written: int) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return (
            f"{inserted:,}/{self.total:,} events inserted ({100 * inserted // self.total}%), "
            f"{written:,} written, {inserted / elapsed:,.0f}/s"
        )

    def _rewrite(self, line: str) -> None:
        assert self.stream is not None
        # A line longer than the terminal would wrap, and "\r" would then
        # rewrite only its last row.
        line = line[: shutil.get_terminal_size().columns - 1]
        # Pad with spaces to wipe the tail of a longer previous line.
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def _print(self, line: str) -> None:
        assert self.stream is not None
        self.stream.write(line + "\n")
        self.stream.flush()


@dataclass(frozen=True)
class DemoResult:
    """What a demo run measured and found.

    Attributes:
        events: events inserted.
        partitions: the buffer's partitions.
        max_size: the buffer's ``max_size``.
        seconds: wall time from just before the buffer (and, for an
            ``AsyncBuffer``, its event loop) was made until ``close()`` or
            ``aclose()`` returned, every batch committed.
        batches: batches committed.
        rows: rows committed.
        triggers: batches committed per flush trigger (``"size"``, ...).
        failed_items: items of batches that failed to be written.
        first_error: the first of those failures, if any.
        using_extension: whether the compiled core ran
            (``databuffer.USING_EXTENSION``).
        db_path: the database file, or ``None`` for a temporary one, removed.
        problems: what the check of the table found wrong; empty if nothing.
        loop: ``None`` for a run through a ``Buffer``; for a run through an
            ``AsyncBuffer``, the event loop it ran on: the package its class
            comes from, ``"asyncio"`` or ``"uvloop"``.
    """

    events: int
    partitions: int
    max_size: int
    seconds: float
    batches: int
    rows: int
    triggers: dict[str, int]
    failed_items: int
    first_error: BaseException | None
    using_extension: bool
    db_path: Path | None
    problems: list[str] = field(default_factory=list)
    loop: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the table holds exactly the events inserted."""
        return not self.problems

    @property
    def events_per_second(self) -> float:
        """Events inserted and committed per second of wall time."""
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mean_batch_size(self) -> float:
        """Mean number of rows in a committed batch."""
        return self.rows / self.batches if self.batches else 0.0


def run_demo(
    events: int = DEFAULT_EVENTS,
    partitions: int = DEFAULT_PARTITIONS,
    max_size: int = DEFAULT_MAX_SIZE,
    db: Path | None = None,
    progress: TextIO | None = None,
    *,
    loop: str | None = None,
) -> DemoResult:
    """Stream ``events`` synthetic events through a buffer into SQLite and check the table.

    Args:
        events: how many events to insert (>= 1).
        partitions: the buffer's ``partitions``.
        max_size: the buffer's ``max_size``: rows per batch, per transaction.
        db: the database file; by default a file in a temporary directory,
            removed afterwards.  The table :data:`TABLE` in it is replaced.
        progress: where to report progress (see :class:`Progress`);
            ``None`` reports nothing.
        loop: ``None`` (the default) streams the events through a
            :class:`~databuffer.Buffer`, a flusher thread per partition.
            ``"asyncio"`` or ``"uvloop"`` (see :data:`LOOPS`) streams them
            through an :class:`~databuffer.AsyncBuffer` on a new event loop
            of that kind: a coroutine inserts them (``insert``, and ``await
            ainsert`` when a partition is full), and each flusher task writes
            its batches through ``asyncio.to_thread``.

    Returns:
        What was measured, and the problems the check found (if any).

    Raises:
        ValueError: ``events`` < 1, or ``loop`` is not ``None`` nor one of
            :data:`LOOPS` (other bad values are refused by the buffer).
        DemoError: the database could not be opened, an insert gave up
            under backpressure, or ``loop="uvloop"`` and uvloop is not
            installed.
        sqlite3.Error: the table could not be read back.
    """
    if events < 1:
        raise ValueError(f"events must be >= 1, got {events!r}")
    if loop is not None and loop not in LOOPS:
        raise ValueError(f"loop must be None or one of {LOOPS}, got {loop!r}")
    # Before the database is made: a missing uvloop fails at once.
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop is not None:
        try:
            factory = loop_factory(loop)
        except ImportError as exc:
            raise DemoError(f"uvloop is not installed ({exc}); install it with `pip install uvloop`") from exc
    if db is not None:
        return _run(events, partitions, max_size, db, progress, keep=True, loop=loop, factory=factory)
    with tempfile.TemporaryDirectory(prefix="databuffer-demo-") as tmp:
        path = Path(tmp) / "demo.sqlite3"
        return _run(events, partitions, max_size, path, progress, keep=False, loop=loop, factory=factory)


class _Tally:
    """What a producer got through, kept when it raises."""

    __slots__ = ("inserted", "loop")

    def __init__(self) -> None:
        self.inserted = 0
        #: The package of the event loop the events were inserted on.
        self.loop: str | None = None


def _run(
    events: int,
    partitions: int,
    max_size: int,
    path: Path,
    stream: TextIO | None,
    *,
    keep: bool,
    loop: str | None,
    factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> DemoResult:
    sink = SQLiteSink(path)
    try:
        report = Progress(events, stream)
        tally = _Tally()
        # Both buffers take the same options.
        options: dict[str, Any] = {
            "name": "demo",
            "handle_flush_error": sink.record_failure,
            "partitions": partitions,
            "max_size": max_size,
            "flush_timeout": DEMO_TIMEOUT,
            "insert_timeout": DEMO_TIMEOUT,
        }
        start = time.perf_counter()
        try:
            # Timed until the buffer is closed, every batch committed.
            if loop is None:
                _stream_threads(sink, report, tally, events, options)
                seconds = time.perf_counter() - start
            else:
                with asyncio.Runner(loop_factory=factory) as runner:
                    runner.run(_stream_async(sink, report, tally, events, options))
                    seconds = time.perf_counter() - start  # not counting the loop's shutdown
        finally:
            report.finish(tally.inserted, sink.rows)
        problems = sink.check(events)
        if sink.failed_items:
            problems.insert(0, f"{sink.failed_items:,} events failed to be written: {sink.first_error!r}")
        return DemoResult(
            events=events,
            partitions=partitions,
            max_size=max_size,
            seconds=seconds,
            batches=sink.batches,
            rows=sink.rows,
            triggers=dict(sink.triggers),
            failed_items=sink.failed_items,
            first_error=sink.first_error,
            using_extension=USING_EXTENSION,
            db_path=path if keep else None,
            problems=problems,
            loop=tally.loop,
        )
    finally:
        sink.close()


def _stream_threads(
    sink: SQLiteSink, report: Progress, tally: _Tally, events: int, options: dict[str, Any]
) -> None:
    """Insert the events into a ``Buffer`` and close it: its flusher threads call ``sink.write``."""
    inserted = 0
    try:
        with Buffer(handle_flush=sink.write, **options) as buffer:
            insert = buffer.insert
            try:
                for event in generate_events(events):
                    insert(event)
                    inserted += 1
                    if not inserted & _PROGRESS_MASK:
                        report.update(inserted, sink.rows)
            except BufferFull as exc:
                raise DemoError(f"event {inserted:,} could not be inserted: {exc}") from exc
    finally:
        tally.inserted = inserted


async def _stream_async(
    sink: SQLiteSink, report: Progress, tally: _Tally, events: int, options: dict[str, Any]
) -> None:
    """Insert the events into an ``AsyncBuffer`` on the running loop and close it."""
    tally.loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]

    async def write(batch: list[Event], opts: FlushOpts) -> int:
        # sqlite3 blocks: the write runs in a thread of the loop's default
        # executor, and the loop goes on meanwhile.
        return await asyncio.to_thread(sink.write, batch, opts)

    inserted = 0
    try:
        async with AsyncBuffer[Event](handle_flush=write, **options) as buffer:
            insert, ainsert = buffer.insert, buffer.ainsert
            try:
                for event in generate_events(events):
                    try:
                        insert(event)  # never waits
                    except BufferFull:
                        # The partition is full while its previous batch is
                        # flushing: wait for room, letting the flushers run.
                        await ainsert(event)
                    inserted += 1
                    if not inserted & _PROGRESS_MASK:
                        report.update(inserted, sink.rows)
            except BufferFull as exc:
                raise DemoError(f"event {inserted:,} could not be inserted: {exc}") from exc
    finally:
        tally.inserted = inserted


def format_result(result: DemoResult) -> str:
    """The demo's report, one ``label: value`` line per measure."""
    core = "compiled (Cython)" if result.using_extension else "pure Python"
    triggers = ", ".join(f"{name} {count:,}" for name, count in sorted(result.triggers.items()))
    where = str(result.db_path) if result.db_path is not None else "temporary file, removed"
    if result.loop is None:
        buffer = "Buffer, a flusher thread per partition"
    else:
        buffer = (
            f"AsyncBuffer on the {result.loop} event loop, a flusher task per partition "
            "(each batch written through asyncio.to_thread)"
        )
    if result.ok:
        check = f"OK: {result.events:,} rows, ids 0 to {result.events - 1:,} each once"
    else:
        check = "FAILED"
    lines = [
        (
            f"events:     {result.events:,} through {result.partitions} partitions, "
            f"max_size {result.max_size:,}"
        ),
        f"buffer:     {buffer}",
        f"core:       {core} (databuffer.USING_EXTENSION = {result.using_extension})",
        f"time:       {result.seconds:.2f} s",
        f"throughput: {result.events_per_second:,.0f} events/s (inserted and committed)",
        (
            f"batches:    {result.batches:,}, mean size {result.mean_batch_size:,.1f} "
            f"(by trigger: {triggers or 'none'})"
        ),
        f"database:   {where}",
        f"check:      {check}",
    ]
    return "\n".join(lines)


# -- the command line -----------------------------------------------------


def _positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (underscores allowed: ``1_000_000``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


DESCRIPTION = (
    "Stream synthetic events (id, ts_ns, kind, value), one insert() each, "
    "through a partitioned databuffer.Buffer into an SQLite table, one "
    "executemany() transaction per batch. With --async, a coroutine inserts them "
    "into a databuffer.AsyncBuffer on an event loop (awaiting ainsert() when a "
    "partition is full), and each batch is written through asyncio.to_thread(). "
    "Progress goes to stderr; the report (events per second, batches and their "
    "mean size, which buffer and core ran) goes to stdout. Finally the table is "
    "checked to hold exactly the events inserted; the exit status is 1 if it does not."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``demo`` to ``parser``."""
    parser.add_argument(
        "--events",
        type=_positive_int,
        default=DEFAULT_EVENTS,
        metavar="N",
        help="number of events to insert (default: %(default)s)",
    )
    parser.add_argument(
        "--partitions",
        type=_positive_int,
        default=DEFAULT_PARTITIONS,
        metavar="N",
        help="partitions of the buffer, each flushed by its own thread (with --async, its own task) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-size",
        type=_positive_int,
        default=DEFAULT_MAX_SIZE,
        metavar="N",
        help="items in a partition that trigger a flush, i.e. rows per transaction (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help=f"SQLite database file to write and keep; its table {TABLE} is dropped and "
        "created anew (default: a file in a temporary directory, removed afterwards)",
    )
    parser.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="stream the events through an AsyncBuffer on an asyncio event loop instead of a Buffer",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="run the --async demo on uvloop's event loop (implies --async; needs uvloop installed)",
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``demo`` with parsed options; return the exit status."""
    loop = "uvloop" if args.uvloop else "asyncio" if args.use_async else None
    print(
        f"databuffer demo: events={args.events:,} partitions={args.partitions} max_size={args.max_size:,}"
        + (f" buffer=AsyncBuffer loop={loop}" if loop is not None else ""),
        file=sys.stderr,
        flush=True,
    )
    try:
        result = run_demo(
            args.events, args.partitions, args.max_size, args.db, progress=sys.stderr, loop=loop
        )
    except (DemoError, sqlite3.Error) as exc:
        print(f"databuffer demo: error: {exc}", file=sys.stderr)
        return 1
    print(format_result(result), flush=True)
    if not result.ok:
        for problem in result.problems:
            print(f"databuffer demo: check failed: {problem}", file=sys.stderr)
        return 1
    return 0
