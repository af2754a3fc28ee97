"""Fork safety: around fork() the parent quiesces its buffers; in the child
every buffer starts empty with fresh locks and threads and works; nothing is
delivered twice.  Each test runs in a fresh interpreter: forking the test
process itself (which has threads) is deprecated from Python 3.12."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import run_python

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

PRELUDE = textwrap.dedent(
    """
    import json, os, sys, threading, time, warnings
    import databuffer
    from databuffer import Buffer, BufferClosed, telemetry

    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
    path = sys.argv[1]
    lock = threading.Lock()

    def record(**fields):
        fields["pid"] = os.getpid()
        with lock, open(path, "a") as f:
            f.write(json.dumps(fields) + "\\n")

    def wait_child(pid, seconds=30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, 9)
        raise SystemExit("the child did not finish: deadlocked after fork?")
    """
)

FORK_SCRIPT = PRELUDE + textwrap.dedent(
    """
    release = threading.Event()

    def flush(batch, opts):
        if "stuck" in batch:
            release.wait(30)
        record(kind="flush", batch=batch, trigger=opts.trigger)

    buf = Buffer(name="forked", handle_flush=flush, partitions=2, max_size=3, flush_interval=3600)
    buf.insert_batch(["p0", "p1", "stuck"])    # sealed: in flight in the parent
    buf.insert_batch(["p2"])                   # buffered in the other partition
    buf.insert_batch(["p3", "p4"])             # buffered behind the stuck batch
    pid = os.fork()
    if pid == 0:
        try:
            record(kind="child-start", stats=buf.stats(), dump=buf.dump(), closed=buf.closed)
            for i in range(7):
                buf.insert(f"c{i}")
            results = buf.sync_flush(timeout=10)
            record(kind="child-synced", n=len(results))
            buf.insert_batch(["c7"])
            buf.close(timeout=10)
            record(kind="child-end", stats=buf.stats())
        finally:
            os._exit(0)
    status = wait_child(pid)
    release.set()
    buf.close(timeout=30)
    record(kind="parent-end", stats=buf.stats(), child_status=status)
    """
)


def _records(core_name: str, script: str, out: Path, timeout: float = 60) -> list[dict[str, Any]]:
    """Run ``script`` (given ``out``) with the core; what it recorded in ``out``, once it exited cleanly."""
    proc = run_python(script, str(out), core=core_name, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_the_child_starts_empty_and_works_and_nothing_is_delivered_twice(
    core_name: str, tmp_path: Path
) -> None:
    records = _records(core_name, FORK_SCRIPT, tmp_path / "out.jsonl")
    (parent_end,) = [r for r in records if r["kind"] == "parent-end"]
    parent, child_status = parent_end["pid"], parent_end["child_status"]
    assert child_status == 0
    (start,) = [r for r in records if r["kind"] == "child-start"]
    child = start["pid"]
    assert child != parent
    # The child starts empty: the parent's items, buffered or in flight, are not its own.
    assert start["dump"] == []
    assert start["closed"] is False
    assert all(v == 0 for k, v in start["stats"].items() if k not in ("name", "partitions", "closed"))

    flushed = {
        pid: [item for r in records if r["kind"] == "flush" and r["pid"] == pid for item in r["batch"]]
        for pid in (parent, child)
    }
    assert sorted(flushed[parent]) == sorted(["p0", "p1", "stuck", "p2", "p3", "p4"])
    assert sorted(flushed[child]) == sorted(f"c{i}" for i in range(8))
    everything = flushed[parent] + flushed[child]
    assert len(everything) == len(set(everything))

    (child_end,) = [r for r in records if r["kind"] == "child-end"]
    assert (child_end["stats"]["inserted"], child_end["stats"]["flushed"]) == (8, 8)
    assert (parent_end["stats"]["inserted"], parent_end["stats"]["flushed"]) == (6, 6)


HAMMER_SCRIPT = PRELUDE + textwrap.dedent(
    """
    delivered = []
    buf = Buffer(name="busy", handle_flush=lambda b, o: delivered.extend(b),
                 partitions=4, max_size=50, flush_interval=0.01, flush_jitter=0)
    telemetry.attach("count", telemetry.FLUSH_STOP, lambda *a: None)
    stop = threading.Event()
    counts = [0] * 3

    def produce(n):
        while not stop.is_set():
            buf.insert((n, counts[n]))
            counts[n] += 1
            if counts[n] % 97 == 0:
                buf.flush()

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    statuses = []
    for round in range(15):
        time.sleep(0.01)   # let the producers get going between forks
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                buf.insert_batch(range(120))
                telemetry.detach("count")
                telemetry.attach("again", telemetry.FLUSH_STOP, lambda *a: None)
                buf.sync_flush(timeout=10)
                buf.close(timeout=10)
                s = buf.stats()
                code = 0 if (s["inserted"], s["flushed"], s["size"]) == (120, 120, 0) else 2
            finally:
                os._exit(code)
        statuses.append(wait_child(pid, seconds=20))
    stop.set()
    for t in threads:
        t.join(30)
    buf.close(timeout=30)
    s = buf.stats()
    record(kind="end", statuses=statuses, inserted=s["inserted"], flushed=s["flushed"],
           produced=sum(counts), delivered=len(delivered), unique=len(set(delivered)))
    """
)


def test_forking_while_threads_insert_and_flush_never_deadlocks_the_child(
    core_name: str, tmp_path: Path
) -> None:
    (end,) = _records(core_name, HAMMER_SCRIPT, tmp_path / "out.jsonl", timeout=120)
    assert end["statuses"] == [0] * 15
    assert end["inserted"] == end["flushed"] == end["produced"] == end["delivered"] == end["unique"]


MULTIPROCESSING_SCRIPT = PRELUDE + textwrap.dedent(
    """
    import multiprocessing

    def flush(batch, opts):
        record(kind="flush", batch=batch, trigger=opts.trigger)

    buf = Buffer(name="mp", handle_flush=flush, max_size=1000, flush_interval=3600)
    buf.insert_batch(["parent"])

    def work(n):
        # Returns without closing: the child ends with os._exit(), and the
        # buffer is still flushed.
        buf.insert_batch([f"child{n}-a", f"child{n}-b"])

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=work, args=(n,)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    closed = Buffer(name="closed", handle_flush=flush, max_size=10, flush_interval=3600)
    closed.close()

    def after_close():
        try:
            closed.insert(1)
        except BufferClosed:
            record(kind="refused", closed=closed.closed, size=closed.size())
        closed.close()

    p = ctx.Process(target=after_close)
    p.start()
    p.join(30)
    record(kind="exitcodes", codes=[q.exitcode for q in procs] + [p.exitcode])
    buf.close(timeout=30)
    """
)


def test_multiprocessing_fork_children_flush_at_exit_and_closed_buffers_stay_closed(
    core_name: str, tmp_path: Path
) -> None:
    records = _records(core_name, MULTIPROCESSING_SCRIPT, tmp_path / "out.jsonl")
    (codes,) = [r["codes"] for r in records if r["kind"] == "exitcodes"]
    assert codes == [0, 0, 0]
    flushes = [r for r in records if r["kind"] == "flush"]
    items = sorted(item for r in flushes for item in r["batch"])
    assert items == sorted(["parent", "child0-a", "child0-b", "child1-a", "child1-b"])
    assert {r["trigger"] for r in flushes} == {"close"}
    by_pid = {r["pid"]: r["batch"] for r in flushes}
    assert len(by_pid) == 3  # the parent and each child flushed their own
    (refused,) = [r for r in records if r["kind"] == "refused"]
    assert (refused["closed"], refused["size"]) == (True, 0)


JITTER_SCRIPT = PRELUDE + textwrap.dedent(
    """
    from databuffer._front import engine_of

    buf = Buffer(name="jittered", handle_flush=lambda b, o: None, flush_interval=3600, max_retries=3)
    engine = engine_of(buf)
    pid = os.fork()
    # The draws behind the flush-interval jitter and the retry backoff.
    record(kind="draws", draws=[engine.random.random() for _ in range(5)], child=pid == 0)
    if pid == 0:
        os._exit(0)
    wait_child(pid)
    buf.close(timeout=30)
    """
)


def test_a_forked_child_draws_its_own_jitter_and_backoff(core_name: str, tmp_path: Path) -> None:
    """Pre-fork workers must not flush and retry in step with their parent."""
    records = _records(core_name, JITTER_SCRIPT, tmp_path / "out.jsonl")
    (parent,) = [r["draws"] for r in records if not r["child"]]
    (child,) = [r["draws"] for r in records if r["child"]]
    assert len(set(parent) | set(child)) == 10


POOL_TASKS = textwrap.dedent(
    """
    import os

    from databuffer import Buffer

    OUT = os.environ["POOL_OUT"]


    def write(batch, opts):
        with open(os.path.join(OUT, f"{os.getpid()}.txt"), "a") as f:
            f.writelines(f"{item}\\n" for item in batch)


    def make():
        return Buffer(name="pool", handle_flush=write, flush_interval=3600)  # flushed at exit only


    # Made at import: in the parent, and in each spawned or forkserver worker
    # while it unpickles its task, before multiprocessing starts it.
    events = make() if os.environ["POOL_MADE_AT"] == "import" else None


    def start():
        global events
        if events is None:
            events = make()


    def record(item):
        events.insert(item)
    """
)

POOL_SCRIPT = """
import multiprocessing, os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
sys.path.insert(0, os.getcwd())
import pool_tasks
ctx = multiprocessing.get_context(sys.argv[1])
with ctx.Pool(2, initializer=pool_tasks.start, maxtasksperchild=5) as pool:
    pool.map(pool_tasks.record, range(100), chunksize=5)
    pool.close()  # the workers end normally: what they buffered is flushed
    pool.join()
"""


@pytest.mark.parametrize("made_at", ["initializer", "import"])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_workers_flush_at_exit_whatever_the_start_method(
    method: str, made_at: str, core_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each worker runs 5 tasks of 5 items, then ends (maxtasksperchild) and
    # another takes its place; a worker started by forkserver ends with
    # os._exit(), like a forked one, and a spawned one with a normal exit.
    (tmp_path / "pool_tasks.py").write_text(POOL_TASKS)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("POOL_OUT", str(out))
    monkeypatch.setenv("POOL_MADE_AT", made_at)
    proc = run_python(POOL_SCRIPT, method, core=core_name, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = list(out.iterdir())
    stored = sorted(int(line) for path in files for line in path.read_text().splitlines())
    assert stored == list(range(100)), f"{len(stored)} of 100 items stored by {len(files)} workers"
    assert len(files) >= 4, f"only {len(files)} workers flushed"
