"""``python -m databuffer bench``: the command line, its table, JSON and checks (tiny sizes, no timing)."""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import pytest
from conftest import run_cli

from databuffer import _bench
from databuffer.__main__ import build_parser, main

ITEMS = 20_000
# The smallest run: one round of each interleaved figure, one end-to-end run.
TINY = ["--items", str(ITEMS), "--memory-items", str(ITEMS), "--rounds", "1", "--repeat", "1"]

HANDOFF = "thread hand-off per 1,000-item batch"
FIGURES = [
    "insert: call (best block)",
    "insert: amortized",
    HANDOFF,
    "insert_batch(1,000): call (best block)",
    "insert_batch(1,000): amortized",
    "end to end, insert_batch(1,000)",
    "end to end, insert",
    f"memory, {ITEMS:,} buffered Nones",
]
ROW = re.compile(
    r"^(?P<figure>.+?)\s{2,}(?P<unit>ns/item|items/s|bytes/item)\s+(?P<databuffer>[\d,.]+)\s+"
    r"(?P<baseline>[\d,.]+)\s+(?P<ratio>[\d.]+)x\s+(?P<versus>.+)$"
)


def table_rows(stdout: str) -> list[dict[str, str]]:
    return [m.groupdict() for line in stdout.splitlines() if (m := ROW.match(line))]


def positive_finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_prints_the_table(core_name: str) -> None:
    proc = run_cli("bench", *TINY, core=core_name)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    header = out.splitlines()[0]
    assert "Python" in header or "CPython" in header
    assert f"USING_EXTENSION={core_name == 'c'}" in header
    assert re.search(r"GIL (enabled|disabled)", header)

    rows = table_rows(out)
    figures = [row["figure"] for row in rows]
    if core_name == "c":
        # The compiled core is also compared with the pure-Python one.
        expected = FIGURES[:3] + FIGURES[:2] + FIGURES[3:]
        assert [row["versus"] for row in rows[3:5]] == ["same, pure-Python core"] * 2
        assert "ring not seen by tracemalloc" in rows[-1]["versus"]
        assert "skipped" not in out
    else:
        expected = FIGURES
        assert "insert vs the pure-Python core: skipped" in out
    assert figures == expected, out
    for row in rows:
        for column in ("databuffer", "baseline", "ratio"):
            assert positive_finite(float(row[column].replace(",", ""))), row
    assert rows[0]["versus"] == "deque.append"
    assert rows[2]["versus"].startswith("deque.append; with the GIL")
    assert "flushes" in rows[-2]["versus"]
    assert "check: OK, every item flushed exactly once" in out
    # Progress went to stderr, one line per figure.
    assert "databuffer bench: memory" in proc.stderr


def test_bench_json_parses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", *TINY]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["ok"] is True
    assert data["problems"] == []
    env = data["environment"]
    assert env["using_extension"] is _bench.USING_EXTENSION
    assert isinstance(env["gil_enabled"], bool)
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert data["settings"] == {"rounds": 1, "items": ITEMS, "repeat": 1, "memory_items": ITEMS}
    assert len(data["rows"]) == len(FIGURES) + (2 if _bench.USING_EXTENSION else 0)
    for row in data["rows"]:
        for key in ("databuffer", "baseline", "ratio"):
            assert positive_finite(row[key]), row
    results = data["results"]
    assert [r["mode"] for r in results["end_to_end"]] == ["insert_batch", "insert"]
    assert all(r["flushed"] == ITEMS and r["flushes"] >= ITEMS // 1000 for r in results["end_to_end"])
    assert results["memory"]["items"] == ITEMS


def test_count_mismatch_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def lossy(self: Any, batch: list[Any], opts: Any) -> None:
        if opts.partition == 0:  # the batches of the other partitions are lost
            self.items[0] += len(batch)
            self.batches[0] += 1

    monkeypatch.setattr(_bench._Counter, "handle_flush", lossy)
    status = main(["bench", *TINY])
    captured = capsys.readouterr()
    assert status == 1
    assert "check: FAILED" in captured.out
    assert (
        f"check failed: end to end (insert): handle_flush got {ITEMS // 4:,} items, expected {ITEMS:,}"
        in captured.err
    )
    assert f"end to end (insert_batch): handle_flush got {ITEMS // 4:,} items" in captured.err


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"]])
def test_help_lists_the_commands_and_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    if argv == ["--help"]:
        assert "bench" in out and "demo" in out
    else:
        for option in ("--items", "--memory-items", "--rounds", "--repeat", "--json"):
            assert option in out
        assert "default: 2000000" in out


def test_bench_functions_with_tiny_sizes() -> None:
    insert = _bench.bench_insert(rounds=1, blocks=4, pure=True, pure_blocks=4)
    assert insert.problems == []
    assert insert.pure is not None
    assert insert.handoff is not None
    # A round trip counts as one batch of MAX_SIZE items.
    assert insert.handoff.items == _bench.HANDOFF_TRIPS * _bench.MAX_SIZE
    assert 0 < insert.handoff.best <= insert.handoff.total
    for timing in (insert.buffer, insert.deque, insert.pure):
        assert timing.items == _bench.BLOCK
        assert timing.total_items == 4 * _bench.BLOCK
        assert 0 < timing.best <= timing.total
        assert positive_finite(timing.call_ns) and timing.call_ns <= timing.amortized_ns

    batch = _bench.bench_insert_batch(rounds=2, blocks=1)
    assert batch.problems == []
    assert batch.buffer.items == batch.extend.items == _bench.BATCH_CALLS * _bench.BLOCK
    assert batch.buffer.total_items == 2 * _bench.BATCH_CALLS * _bench.BLOCK

    e2e = _bench.bench_end_to_end("insert_batch", items=2_500, repeat=2)
    assert e2e.problems == [] and e2e.flushed == 2_500
    assert e2e.flushes >= 3  # two full batches and the rest, at least
    assert positive_finite(e2e.items_per_second) and positive_finite(e2e.baseline_items_per_second)

    with pytest.raises(ValueError, match="mode"):
        _bench.bench_end_to_end("append", items=10)


def test_bench_memory_counts_the_buffered_items(Buffer: type) -> None:
    result = _bench.bench_memory(ITEMS, buffer_class=Buffer)
    assert result.problems == []
    pointer = 8 if sys.maxsize > 2**32 else 4
    # A list of N Nones holds N pointers, over-allocated a little.
    assert pointer <= result.list_bytes_per_item < 2 * pointer
    assert result.bytes_per_item >= pointer
    if _bench._is_compiled(Buffer):
        assert result.untraced_ring_bytes == (ITEMS + 1) * pointer
    else:
        assert result.untraced_ring_bytes == 0
    with pytest.raises(ValueError, match="items"):
        _bench.bench_memory(10)
