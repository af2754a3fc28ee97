"""``python -m databuffer demo``: the command line, the run and its check."""

from __future__ import annotations

import importlib.util
import io
import re
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, run_python

from databuffer import FlushOpts
from databuffer._cli import main
from databuffer._cli.demo import (
    TABLE,
    Progress,
    SQLiteSink,
    check_table,
    generate_events,
    run_demo,
)

EVENTS = 20_000

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")

# The demo's modes: its options, and the start of its report's "buffer" line.
MODES = [
    pytest.param([], "Buffer, a flusher thread per partition", id="threads"),
    pytest.param(["--async"], "AsyncBuffer on the asyncio event loop", id="async"),
    pytest.param(["--uvloop"], "AsyncBuffer on the uvloop event loop", id="uvloop", marks=needs_uvloop),
]


def report_value(stdout: str, label: str) -> str:
    match = re.search(rf"^{label}:\s+(.*)$", stdout, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{stdout}"
    return match.group(1)


@pytest.mark.parametrize(("mode", "buffer"), MODES)
def test_demo_runs_and_checks_the_table(core_name: str, tmp_path: Path, mode: list[str], buffer: str) -> None:
    db = tmp_path / "demo.sqlite3"
    proc = run_cli(
        "demo",
        *mode,
        "--events",
        str(EVENTS),
        "--partitions",
        "4",
        "--max-size",
        "1000",
        "--db",
        str(db),
        core=core_name,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout

    assert report_value(out, "check") == f"OK: {EVENTS:,} rows, ids 0 to {EVENTS - 1:,} each once"
    expected_core = "compiled (Cython)" if core_name == "c" else "pure Python"
    assert report_value(out, "core").startswith(expected_core)
    assert report_value(out, "buffer").startswith(buffer)
    assert float(report_value(out, "throughput").split()[0].replace(",", "")) > 0
    batches = re.fullmatch(r"([\d,]+), mean size ([\d,.]+) \(by trigger: .*\)", report_value(out, "batches"))
    assert batches, out
    count, mean = int(batches[1].replace(",", "")), float(batches[2].replace(",", ""))
    # 5,000 items per partition: 5 full batches each, unless a timed flush
    # split one on a very slow run.  With --async, an event that a plain
    # insert found no room for is stored by ainsert, which picks the next
    # partition round-robin: the partitions end uneven, each with a smaller
    # last batch.  The mean is printed to one decimal.
    assert count >= EVENTS // 1000
    assert mean <= 1000
    assert count * mean == pytest.approx(EVENTS, abs=0.05 * count)
    assert report_value(out, "database") == str(db)

    # Progress went to stderr as a few whole lines (stderr is a pipe here).
    assert f"{EVENTS:,}/{EVENTS:,} events inserted (100%), {EVENTS:,} written" in proc.stderr
    assert "\r" not in proc.stderr
    assert len(proc.stderr.splitlines()) <= 12

    # The table, read independently of the demo's own check.
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(f"SELECT COUNT(*), COUNT(DISTINCT id), SUM(id) FROM {TABLE}").fetchone()
    assert rows == (EVENTS, EVENTS, EVENTS * (EVENTS - 1) // 2)


def test_help_explains_the_commands_and_options() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "demo" in top.stdout

    demo = run_cli("demo", "--help")
    assert demo.returncode == 0
    for option in ("--events", "--partitions", "--max-size", "--db", "--async", "--uvloop"):
        assert option in demo.stdout
    assert "default: 1000000" in demo.stdout


@pytest.mark.parametrize(
    "loop", [None, "asyncio", pytest.param("uvloop", marks=needs_uvloop)], ids=["threads", "async", "uvloop"]
)
def test_run_demo_in_process(tmp_path: Path, loop: str | None) -> None:
    result = run_demo(events=1000, partitions=3, max_size=64, db=tmp_path / "d.sqlite3", loop=loop)
    assert result.ok, result.problems
    assert result.loop == loop
    assert result.rows == 1000
    assert result.failed_items == 0
    assert result.batches >= 3 * (334 // 64)
    assert result.mean_batch_size <= 64
    assert sum(result.triggers.values()) == result.batches


@pytest.mark.parametrize("loop", [None, "asyncio"], ids=["threads", "async"])
def test_run_demo_uses_a_temporary_database_by_default(loop: str | None) -> None:
    result = run_demo(events=10, partitions=2, max_size=4, loop=loop)
    assert result.ok
    assert result.db_path is None


def test_run_demo_refuses_an_unknown_loop() -> None:
    with pytest.raises(ValueError, match="loop must be None or one of"):
        run_demo(events=10, loop="trio")


def test_uvloop_missing_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    db = tmp_path / "d.sqlite3"
    status = main(["demo", "--uvloop", "--events", "10", "--db", str(db)])
    captured = capsys.readouterr()
    assert status == 1
    assert "databuffer demo: error: uvloop is not installed" in captured.err
    assert "pip install uvloop" in captured.err
    assert captured.out == ""
    assert not db.exists()  # refused before the database was made


@pytest.mark.parametrize("mode", [[], ["--async"]], ids=["threads", "async"])
def test_failed_batches_fail_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mode: list[str]
) -> None:
    original = SQLiteSink.write

    def flaky(self: SQLiteSink, batch: list[Any], opts: FlushOpts) -> int:
        if opts.partition == 1:
            raise OSError("disk on fire")
        return original(self, batch, opts)

    monkeypatch.setattr(SQLiteSink, "write", flaky)
    status = main(["demo", *mode, "--events", "400", "--partitions", "2", "--max-size", "100"])
    captured = capsys.readouterr()
    assert status == 1
    assert "check:      FAILED" in captured.out
    assert "check failed: 200 events failed to be written: OSError('disk on fire')" in captured.err
    assert "check failed: the table holds 200 rows, expected 400" in captured.err


# The same failure in a child interpreter, on each core: SQLiteSink.write
# drops partition 1's batches without raising, so only the table check can
# notice that rows are missing.
_LOSSY_DEMO = """
import sys
from databuffer._cli import main
from databuffer._cli.demo import SQLiteSink

original = SQLiteSink.write


def lossy(self, batch, opts):
    if opts.partition == 1:
        return len(batch)  # claims the rows were written
    return original(self, batch, opts)


SQLiteSink.write = lossy
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("mode", [[], ["--async"]], ids=["threads", "async"])
def test_missing_rows_fail_the_check(core_name: str, tmp_path: Path, mode: list[str]) -> None:
    proc = run_python(
        _LOSSY_DEMO,
        "demo",
        *mode,
        "--events",
        "400",
        "--partitions",
        "2",
        "--max-size",
        "100",
        core=core_name,
        cwd=tmp_path,
        timeout=100,
    )
    assert proc.returncode == 1, proc.stderr
    assert "check:      FAILED" in proc.stdout
    assert "check failed: the table holds 200 rows, expected 400" in proc.stderr
    assert "failed to be written" not in proc.stderr
    expected_core = "compiled (Cython)" if core_name == "c" else "pure Python"
    assert report_value(proc.stdout, "core").startswith(expected_core)
    assert report_value(proc.stdout, "buffer").startswith("AsyncBuffer" if mode else "Buffer")


def test_check_table_finds_missing_and_foreign_ids(tmp_path: Path) -> None:
    sink = SQLiteSink(tmp_path / "d.sqlite3")
    try:
        events = [e for e in generate_events(10) if e[0] != 5]
        sink.write([*events, (10, 0, "trade", 1.0)], FlushOpts(None, 10, 0, "demo", "manual"))
        problems = sink.check(10)
    finally:
        sink.close()
    assert problems == [
        "the ids sum to 50, expected 45",
        "the ids run from 0 to 10, expected 0 to 9",
    ]
    with closing(sqlite3.connect(tmp_path / "d.sqlite3")) as conn:
        assert check_table(conn, 11) == [
            "the table holds 10 rows, expected 11",
            "the ids sum to 50, expected 55",
        ]


def test_progress_without_a_terminal_writes_at_most_ten_lines() -> None:
    stream = io.StringIO()
    progress = Progress(1000, stream)
    assert not progress.interactive
    for done in range(1, 1001):
        progress.update(done, done)
    assert len(stream.getvalue().splitlines()) == 10
    progress.finish(1000, 1000)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[-1].startswith("1,000/1,000 events inserted (100%), 1,000 written")


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    stream = io.StringIO()
    progress = Progress(1000, stream, interactive=True)
    progress.update(500, 0)
    progress.finish(1000, 1000)
    text = stream.getvalue()
    assert text.startswith("\r500/1,000 events inserted (50%)")
    assert text.count("\n") == 1
    assert text.endswith("\n")
    assert "\r1,000/1,000 events inserted (100%)" in text
