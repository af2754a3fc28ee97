"""What the multi-process tests share: the files of docs/processes.md, PostgreSQL, HTTP load.

The page ``docs/processes.md`` gives whole files (an app module, a server's
configuration), each in a ``python`` block right after a ``<!-- file: NAME
-->`` comment; the tests write them to a temporary directory and run the
servers on them, so what the page shows is what is tested.  Those files read
the database's DSN from ``DATABASE_URL``; the tests set it to the server
``DATABUFFER_TEST_POSTGRES`` names (``.ci/run`` starts one) and skip without
it.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

import databuffer

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "processes.md"
# The table the files write to (the recipes' table).
TABLE = "CREATE TABLE IF NOT EXISTS events (id bigint, kind text, value double precision)"

_FILE = re.compile(r"^<!-- file: (?P<name>[\w.]+) -->\n```python\n(?P<body>.*?)^```$", re.M | re.S)


def page() -> str:
    """The text of docs/processes.md; skips where tests/ was copied without docs/."""
    if not PAGE.is_file():
        pytest.skip("no docs/ next to tests/")
    return PAGE.read_text(encoding="utf-8")


def docs_files() -> dict[str, str]:
    """The files of docs/processes.md, by name."""
    return {match["name"]: match["body"] for match in _FILE.finditer(page())}


def write_docs_files(directory: Path, *names: str) -> None:
    files = docs_files()
    for name in names:
        assert name in files, f"docs/processes.md has no <!-- file: {name} --> block"
        (directory / name).write_text(files[name], encoding="utf-8")


def need(*modules: str) -> None:
    """Skip unless each module is importable."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the servers extra: pip install -e '.[servers]')")


def postgres_dsn() -> str:
    """The test server's DSN; skips without one."""
    need("psycopg")
    dsn = os.environ.get("DATABUFFER_TEST_POSTGRES", "")
    if not dsn:
        pytest.skip("needs a PostgreSQL server: set DATABUFFER_TEST_POSTGRES to its DSN")
    return dsn


def sql(dsn: str, statement: str) -> list[tuple[object, ...]]:
    """Run one statement on the test server (autocommit); its rows."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement.encode())
        return [tuple(row) for row in cur.fetchall()] if cur.description else []


def reset_events(dsn: str) -> None:
    sql(dsn, TABLE)
    sql(dsn, "TRUNCATE events")


def stored_ids(dsn: str) -> collections.Counter[int]:
    """How many rows of ``events`` hold each id."""
    return collections.Counter(
        {int(i): int(n) for i, n in sql(dsn, "SELECT id, count(*) FROM events GROUP BY id")}
    )


def child_env(dsn: str, directory: Path) -> dict[str, str]:
    """The environment of a server run on the files in ``directory``."""
    env = dict(os.environ, DATABASE_URL=dsn)
    # The servers import the databuffer these tests import, and the app from directory.
    src = str(Path(databuffer.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), src, env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a connection of its own: ``(status, body)``; ``OSError`` if it broke."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP response: {head[:80]!r}")
    return int(parts[1]), body


class Process:
    """A server or worker started by a test, in a session of its own, its output in a log file."""

    def __init__(self, argv: Sequence[str], directory: Path, env: dict[str, str], log: str) -> None:
        self.log_path = directory / log
        with open(self.log_path, "wb") as out:
            # A session of its own: kill() reaches the processes it starts too.
            self.proc = subprocess.Popen(
                list(argv),
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def log(self, tail: int | None = None) -> str:
        """Its output so far (the last ``tail`` characters)."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text if tail is None else text[-tail:]

    def check_running(self) -> None:
        assert self.proc.poll() is None, f"it exited with {self.proc.returncode}:\n{self.log(6000)}"

    def stop(self, timeout: float = 90.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig``, then wait for the exit; its status."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            name = signal.Signals(sig).name
            raise AssertionError(f"it did not stop within {timeout} s of {name}:\n{self.log(6000)}") from None

    def kill(self) -> None:
        """SIGKILL to it and every process it started (left over by a failed test)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Server(Process):
    """An HTTP server on 127.0.0.1:``port``."""

    def __init__(self, argv: Sequence[str], directory: Path, env: dict[str, str], port: int) -> None:
        super().__init__(argv, directory, env, "server.log")
        self.port = port

    def wait_ready(self, marker: str = "", count: int = 0, timeout: float = 60.0) -> None:
        """Until the server answers a request (any status) and its log holds ``marker`` ``count`` times."""
        deadline = time.monotonic() + timeout
        while True:
            if self.log().count(marker) >= count:
                try:
                    http_get(self.port, "/ready", timeout=2)
                    return
                except OSError:
                    pass
            self.check_running()
            assert time.monotonic() < deadline, f"the server did not answer in {timeout} s:\n{self.log(6000)}"
            time.sleep(0.05)


class Load:
    """``GET /event?id=N`` for each id, from ``threads`` client threads, a connection each request.

    A request is acknowledged when it is answered 200 with ``recorded by
    PID``: ``acked`` maps its id to that worker's pid.  Ids whose request
    failed (refused, reset, another status) are in ``failed``; each id is
    sent once, never retried, so that a request the server saw but could not
    answer is never sent twice.
    """

    def __init__(self, port: int, ids: Iterable[int], threads: int = 8) -> None:
        self.port = port
        self._ids = iter(ids)
        # Guarded by _lock: the client threads take ids and record answers.
        self._lock = threading.Lock()
        self.acked: dict[int, int] = {}
        self.failed: dict[int, str] = {}
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._stopped = threading.Event()

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), (
            f"the load did not finish within {timeout} s: {self.done()} requests answered or failed"
        )

    def stop(self) -> None:
        """No more requests (a test failed): each thread ends after its current one."""
        self._stopped.set()

    def done(self) -> int:
        with self._lock:
            return len(self.acked) + len(self.failed)

    def pids(self) -> list[int]:
        with self._lock:
            return list(dict.fromkeys(reversed(self.acked.values())))  # the latest first

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                event_id = next(self._ids, None)
            if event_id is None:
                return
            try:
                status, body = http_get(self.port, f"/event?id={event_id}")
                words = body.split()
                if status != 200 or len(words) != 3 or words[:2] != [b"recorded", b"by"]:
                    raise ConnectionError(f"{status} {body[:80]!r}")
                pid = int(words[2])
            except (OSError, ValueError) as exc:
                with self._lock:
                    self.failed[event_id] = f"{type(exc).__name__}: {exc}"
            else:
                with self._lock:
                    self.acked[event_id] = pid


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def check_exactly_once(
    dsn: str, load: Load, sent: range, killed: int | None = None, bound: int = 0
) -> dict[str, int]:
    """Every acknowledged event stored once (the killed worker's: at most ``bound`` lost).

    No id is stored twice, none that was not sent.  Returns the figures.
    """
    stored = stored_ids(dsn)
    twice = sorted(i for i, n in stored.items() if n > 1)
    assert not twice, f"{len(twice)} events stored more than once, e.g. {twice[:10]}"
    unknown = sorted(set(stored) - set(sent))
    assert not unknown, f"{len(unknown)} events stored that were never sent, e.g. {unknown[:10]}"
    lost = collections.Counter(pid for i, pid in load.acked.items() if i not in stored)
    from_others = {pid: n for pid, n in lost.items() if pid != killed}
    assert not from_others, (
        f"acknowledged events lost by workers that were not killed (pid: count): {from_others}"
    )
    figures = {
        "sent": len(sent),
        "acknowledged": len(load.acked),
        "failed": len(load.failed),
        "stored": len(stored),
        "workers": len(set(load.acked.values())),
    }
    if killed is not None:
        figures["killed_acknowledged"] = sum(pid == killed for pid in load.acked.values())
        figures["killed_lost"] = lost[killed]
        figures["bound"] = bound
        assert lost[killed] <= bound, (
            f"the killed worker lost {lost[killed]} acknowledged events, more than the bound of {bound}"
        )
    return figures


def loss_bound(info: Sequence[dict[str, object]]) -> int:
    """What a buffer holds at most, from its ``info()``: per partition (queued + 2) batches.

    ``flush_size`` is the partition's batch size, its jitter drawn: the
    docs' files set no ``max_size_jitter``, so it is ``max_size``.
    """
    return sum((int(p["max_queued_batches"]) + 2) * int(p["flush_size"]) for p in info)  # type: ignore[call-overload]
