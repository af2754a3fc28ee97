"""Forked children draw their own jitter: none repeats its parent's sequence or a sibling's.

Pre-fork servers fork identical workers; if a child inherited its parent's
generator state, every worker would draw the same flush-interval jitter
(and retry backoff) and the same size thresholds (``max_size_jitter``), so
the jitter would not spread them at all.  Checked for a parent that made a
buffer before forking (the child's copy is reseeded) and for one that made
none (each child makes its own).  Each case runs in a fresh interpreter
(forking the test process, which has threads, is deprecated from 3.12).
``benchmarks/jitter_processes.py`` measures the effect on flush times.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import run_python

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

CHILDREN = 3
FLUSHES = 6

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time, warnings
    from databuffer import Buffer
    from databuffer._front import engine_of

    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with the parent's buffer threads running
    path, mode, children, flushes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def make():
        return Buffer(
            handle_flush=lambda batch, opts: None,
            partitions=2,
            max_size=10,
            max_size_jitter=1000,
            flush_interval=3600,
            max_retries=3,
        )

    def draws(buf, role):
        # Before any flush here: the size thresholds in force now.
        initial = [p["flush_size"] for p in buf.info()]
        # The generator behind the flush-interval jitter and the retry backoff.
        engine = [engine_of(buf).random.random() for _ in range(5)]
        # The compiled or pure core's per-partition generators, seen through the
        # threshold drawn after each flush (an item in each partition, then a flush).
        thresholds = []
        for k in range(flushes):
            buf.insert(k)  # round-robin: one item in each partition
            buf.insert(k)
            buf.sync_flush(timeout=10)
            thresholds.append([p["flush_size"] for p in buf.info()])
        buf.close(timeout=10)
        line = json.dumps(
            {"role": role, "pid": os.getpid(), "initial": initial, "engine": engine, "thresholds": thresholds}
        )
        with open(path, "a") as f:
            f.write(line + "\\n")

    buf = make() if mode == "parent-made" else None
    pids = []
    for i in range(children):
        pid = os.fork()
        if pid == 0:
            try:
                draws(buf if buf is not None else make(), f"child{i}")
            finally:
                os._exit(0)
        pids.append(pid)
    # The parent draws only after every fork: its sequence is the one each
    # child would repeat if the fork did not reseed it.
    draws(buf if buf is not None else make(), "parent")
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    """
)


def _draws(core_name: str, mode: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    out = tmp_path / "draws.jsonl"
    proc = run_python(SCRIPT, str(out), mode, str(CHILDREN), str(FLUSHES), core=core_name, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_role = {r["role"]: r for r in records}
    assert sorted(by_role) == sorted(["parent", *(f"child{i}" for i in range(CHILDREN))])
    assert len({r["pid"] for r in records}) == CHILDREN + 1
    return by_role


@pytest.mark.parametrize("mode", ["parent-made", "child-made"])
def test_forked_children_draw_their_own_jitter_and_thresholds(
    core_name: str, mode: str, tmp_path: Path
) -> None:
    by_role = _draws(core_name, mode, tmp_path)
    processes = CHILDREN + 1
    # The engine's generator (interval jitter, backoff): no draw shared by two processes.
    engine = [x for r in by_role.values() for x in r["engine"]]
    assert len(set(engine)) == len(engine) == 5 * processes
    # The cores' partition generators, through the thresholds drawn after
    # each flush.  A child that kept its parent's state would repeat the
    # parent's thresholds, possibly shifted by the draws made at the fork: so
    # no run of 3 consecutive thresholds of a partition may occur in two
    # processes (each one of 1001 values: a repeat by chance has probability
    # about 1e-7).
    owner: dict[tuple[int, ...], str] = {}
    for role, r in by_role.items():
        for column in zip(*r["thresholds"], strict=True):
            for i in range(len(column) - 2):
                run = tuple(column[i : i + 3])
                assert owner.setdefault(run, role) == role, f"{role} repeats {owner[run]}'s thresholds {run}"
    for r in by_role.values():
        # Within a process the partitions draw differently too (not one shared seed).
        columns = list(zip(*r["thresholds"], strict=True))
        assert columns[0] != columns[1], r
        # Every threshold is in max_size .. max_size + max_size_jitter.
        assert all(10 <= t <= 1010 for row in r["thresholds"] for t in row), r
