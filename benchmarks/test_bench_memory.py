"""Memory held per buffered item, beside a list holding the same ``None``s.

Not a timing: each figure comes from a fresh subprocess (``_memory_child.py``),
once with tracemalloc (Python allocations only: the compiled core's ring is
``malloc``'d and invisible to it) and once by RSS (``/proc/self/statm``,
without tracemalloc).  Both are taken from before the buffer is constructed
(``partitions=1``, ``max_size=N+1``, ``flush_interval=3600``: nothing is
flushed) to after N ``insert(None)`` calls.  The results go to the summary
table; correctness is asserted (the buffer held N items and flushed exactly
N on close).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _bench import COMPILED, MEMORY_ITEMS, TIMEOUT, Results

pytestmark = pytest.mark.timeout(TIMEOUT)

CHILD = Path(__file__).with_name("_memory_child.py")
SUBJECTS = {
    "list-mul": "list [None]*N",
    "list-append": "list built by append",
    "pure": "databuffer, pure-Python core",
    "compiled": "databuffer, compiled core",
}


def _child(subject: str, mode: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONTRACEMALLOC", None)
    proc = subprocess.run(
        [sys.executable, str(CHILD), subject, mode, str(MEMORY_ITEMS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_memory(results: Results, subject: str) -> None:
    if subject == "compiled" and not COMPILED:
        pytest.skip("compiled core unavailable")
    figures: dict[str, Any] = {}
    for mode in ("tracemalloc", "rss"):
        out = _child(subject, mode)
        assert out["size"] == MEMORY_ITEMS
        if "flushed" in out:
            assert out["flushed"] == MEMORY_ITEMS
        figures[mode] = out["bytes"] / MEMORY_ITEMS
    results.memory[SUBJECTS[subject]] = figures
