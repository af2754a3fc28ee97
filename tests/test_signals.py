"""SIGTERM: what a killed process flushes, with and without flush_on_sigterm()."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import core_env

import databuffer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCRIPT = textwrap.dedent(
    """
    import json, signal, sys, threading
    import databuffer
    from databuffer import Buffer

    path, mode = sys.argv[1], sys.argv[2]

    def previous(signum, frame):
        with open(path, "a") as f:
            f.write(json.dumps({"previous handler": signum}) + "\\n")

    if mode == "chained":
        signal.signal(signal.SIGTERM, previous)
    if mode in ("helper", "chained"):
        databuffer.flush_on_sigterm()

    def write(batch, opts):
        with open(path, "a") as f:
            f.write(json.dumps({"trigger": opts.trigger, "batch": batch}) + "\\n")

    buf = Buffer(name="killed", handle_flush=write, partitions=2, max_size=1000, flush_interval=3600)
    buf.insert_batch(range(10))
    buf.insert_batch(range(10, 15))
    try:
        print("ready", flush=True)
        # The main thread is blocked when SIGTERM comes.  In steps: CPython
        # 3.13t can miss a signal that arrives just as an untimed wait starts.
        idle = threading.Event()
        while not idle.wait(0.2):
            pass
    finally:
        with open(path, "a") as f:
            f.write(json.dumps({"finally": True}) + "\\n")
    """
)


def _kill(core_name: str, tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(out), mode],
        env=core_env(core_name),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), records


def test_by_default_sigterm_kills_the_process_and_buffered_items_are_lost(
    core_name: str, tmp_path: Path
) -> None:
    proc, records = _kill(core_name, tmp_path, "default")
    # Python's default for SIGTERM: the process ends at once, no finally
    # block and no atexit function runs, so nothing is flushed.
    assert proc.returncode == -signal.SIGTERM
    assert records == []


@pytest.mark.parametrize("mode", ["helper", "chained"])
def test_flush_on_sigterm_flushes_every_buffer_and_exits_with_143(
    core_name: str, tmp_path: Path, mode: str
) -> None:
    proc, records = _kill(core_name, tmp_path, mode)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    batches = [r for r in records if "batch" in r]
    assert sorted(item for r in batches for item in r["batch"]) == list(range(15))
    assert {r["trigger"] for r in batches} == {"close"}
    # The main thread unwound (its finally ran) before the exit flush.
    assert records.index({"finally": True}) < records.index(batches[0])
    if mode == "chained":
        assert records[0] == {"previous handler": signal.SIGTERM}
    assert "Traceback" not in proc.stderr


def test_flush_on_sigterm_checks_its_arguments_and_returns_the_previous_handler() -> None:
    with pytest.raises(TypeError, match="exit_code must be an int, not str '1'"):
        databuffer.flush_on_sigterm("1")  # type: ignore[arg-type]
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert databuffer.flush_on_sigterm() == previous
        assert signal.getsignal(signal.SIGTERM) is not previous
    finally:
        signal.signal(signal.SIGTERM, previous)
    errors: list[BaseException] = []

    def from_a_thread() -> None:
        try:
            databuffer.flush_on_sigterm()
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=from_a_thread)
    thread.start()
    thread.join(30)
    assert len(errors) == 1
    assert signal.getsignal(signal.SIGTERM) == previous
