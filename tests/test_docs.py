"""The documentation site: its Python examples run, and it builds with ``mkdocs --strict``.

Conventions for the pages under ``docs/``:

- Every fenced code block opened with ```` ```python ```` is an example that
  runs as it stands: it is written to a file and run with ``sys.executable -W
  error`` in a fresh process, in an empty temporary directory, once per core
  (``DATABUFFER_NO_EXTENSIONS`` unset, then set), and must exit with status 0
  within 60 seconds.
- An HTML comment on the line right before the opening fence changes that:

  - ``<!-- no-run -->`` or ``<!-- no-run: why -->``: the block does not run as
    it stands (a fragment, or it needs a server); it must still compile;
  - ``<!-- file: NAME -->``: the block is a whole file, ``NAME``, that
    tests/test_servers.py (or another multi-process test) writes and runs
    under a real server; here it must compile;
  - ``<!-- requires: module [module ...] -->``: the block runs only where
    those modules are importable, and is skipped elsewhere;
  - ``<!-- postgres: module [module ...] -->``: the block writes to a
    PostgreSQL table ``events (id bigint, kind text, value double
    precision)`` through the DSN ``postgresql://app@localhost/app``.  It runs
    only where ``DATABUFFER_TEST_POSTGRES`` gives the DSN of a server to use
    instead (``.ci/run`` starts one) and the modules are importable; the
    table is emptied first, and afterwards must hold rows, each id once.
  - ``<!-- redis: module [module ...] -->``: the block writes to the stream
    ``events`` of the Redis server ``redis://localhost:6379/0``, each entry
    with an ``id`` field.  The test starts a ``redis-server`` of its own
    (Debian's ``redis-server``; no persistence, a free port, in the test's
    temporary directory) and gives the block its URL, or uses the server
    ``DATABUFFER_TEST_REDIS`` names; without either the block is skipped,
    saying why.  The stream is deleted first, and afterwards must hold
    entries, each id once (``XLEN`` and ``XRANGE``).
  - ``<!-- kafka: module [module ...] -->``: the block produces to the topic
    set by ``TOPIC = "events"`` of the Kafka cluster ``localhost:9092``,
    waits at most ``DELIVERY_TIMEOUT = 30.0`` seconds for delivery reports,
    and writes the items of batches that failed for good to
    ``kafka-dead-letter.jsonl``, one JSON object a line with its
    ``"error"`` and its ``"attempt"``.  Where ``DATABUFFER_TEST_KAFKA``
    names a broker, the block produces to a new topic there, which
    afterwards must hold messages, each key once, with no item
    dead-lettered.  Elsewhere (no broker can be installed from the package
    registries CI uses) the block runs twice: against librdkafka's mock
    cluster (``test.mock.num.brokers``, started in this process), checked
    the same way; and with no broker, bootstrap ``127.0.0.1:1``, where
    nothing listens, and ``DELIVERY_TIMEOUT = 1.0``, so that every delivery
    report fails with a timeout: every item must then be dead-lettered,
    after a retry, with that error.
  - ``<!-- clickhouse: module [module ...] -->``: the block connects with
    clickhouse-connect to the DSN ``http://localhost:8123``.  Where
    ``DATABUFFER_TEST_CLICKHOUSE`` gives the DSN of a server, it runs there
    (its table ``events`` dropped first); elsewhere against chDB, the
    ClickHouse engine in process (clickhouse-connect's ``chdb://`` backend,
    on a directory in the test's temporary directory).  The block checks its
    table itself.

  Any other comment in that place is an error, so that a misspelt marker
  does not go unnoticed.
- Blocks in other languages (``sh``, ``text``, ``sql``, ``elixir``) are not run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import core_env

import databuffer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
if not DOCS.is_dir():
    # Run from a copy of tests/ alone (cibuildwheel, .ci/check-dist).
    pytest.skip("no docs/ next to tests/", allow_module_level=True)
EXAMPLE_TIMEOUT = 60
BUILD_TIMEOUT = 100

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")
_NO_RUN = re.compile(r"^no-run(?::.*)?$")
_FILE = re.compile(r"^file: [\w.]+$")
_REQUIRES = re.compile(r"^requires:\s*(?P<modules>[\w. ]+)$")
# A service the block needs, and the modules it imports.
_SERVICE = re.compile(r"^(?P<service>postgres|redis|kafka|clickhouse):\s*(?P<modules>[\w. ]+)$")
# The DSN the PostgreSQL examples are written with.
_DOCS_DSN = "postgresql://app@localhost/app"
# What the Redis, Kafka and ClickHouse examples are written with.
_DOCS_REDIS = "redis://localhost:6379/0"
_DOCS_KAFKA = '"localhost:9092"'
_DOCS_KAFKA_TOPIC = 'TOPIC = "events"'
_DOCS_KAFKA_TIMEOUT = "DELIVERY_TIMEOUT = 30.0"
_KAFKA_DEAD_LETTER = "kafka-dead-letter.jsonl"
_DOCS_CLICKHOUSE = '"http://localhost:8123"'


@dataclass(frozen=True)
class Example:
    """A ``python`` code block of a page, and what its marker says."""

    page: str
    line: int
    source: str
    run: bool
    requires: tuple[str, ...]
    service: str = ""  # "postgres", "redis", "kafka", "clickhouse" or ""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _marker(line: str, where: str) -> tuple[bool, tuple[str, ...], str]:
    """``(run, requires, service)`` from the line before a fence."""
    match = _MARKER.match(line)
    if match is None:
        return True, (), ""
    body = match["body"]
    if _NO_RUN.match(body) or _FILE.match(body):
        return False, (), ""
    requires = _REQUIRES.match(body)
    if requires:
        return True, tuple(requires["modules"].split()), ""
    service = _SERVICE.match(body)
    if service:
        return True, tuple(service["modules"].split()), service["service"]
    raise ValueError(f"{where}: unknown marker before a code block: {line.strip()!r}")


def _examples(path: Path) -> list[Example]:
    page = path.relative_to(DOCS).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None or not fence["lang"]:
            i += 1
            continue
        indent, start = fence["indent"], i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start + 1}: code block not closed")
        if fence["lang"] == "python":
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[start + 1 : i]]
            previous = lines[start - 1] if start else ""
            run, requires, service = _marker(previous, f"{page}:{start + 1}")
            found.append(Example(page, start + 1, "\n".join(body) + "\n", run, requires, service))
        i += 1
    return found


def _all_examples() -> list[Example]:
    return [example for path in sorted(DOCS.rglob("*.md")) for example in _examples(path)]


EXAMPLES = _all_examples()
RUNNABLE = [example for example in EXAMPLES if example.run]


def test_the_pages_have_runnable_examples() -> None:
    pages = {example.page for example in RUNNABLE}
    for page in (
        "index.md",
        "getting-started.md",
        "recipes/sqlite.md",
        "recipes/http.md",
        "recipes/logging.md",
        "recipes/kafka.md",
        "recipes/redis-streams.md",
        "recipes/duckdb.md",
        "recipes/parquet.md",
        "recipes/clickhouse.md",
        "recipes/async-http.md",
        "telemetry.md",
        "typing.md",
    ):
        assert page in pages, f"docs/{page} has no runnable python example"


@pytest.mark.parametrize("example", [e for e in EXAMPLES if not e.run], ids=lambda e: e.id)
def test_a_no_run_example_compiles(example: Example) -> None:
    compile(example.source, example.id, "exec")


@pytest.mark.parametrize("example", RUNNABLE, ids=lambda e: e.id)
def test_an_example_runs(example: Example, core_name: str, tmp_path: Path) -> None:
    missing = [name for name in example.requires if not _importable(name)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    with contextlib.ExitStack() as stack:
        runs = [_Run(example.source, tmp_path)]
        if example.service:
            runs = _SERVICES[example.service](example, tmp_path, stack)
        for run in runs:
            run.cwd.mkdir(exist_ok=True)
            script = run.cwd / "example.py"
            script.write_text(run.source, encoding="utf-8")
            env = core_env(core_name)
            # The subprocess imports the databuffer these tests import.
            src = str(Path(databuffer.__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
            result = subprocess.run(
                [sys.executable, "-W", "error", str(script)],
                cwd=run.cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=EXAMPLE_TIMEOUT,
            )
            where = f"docs/{example.id}" + (f" ({run.label})" if run.label else "")
            assert result.returncode == 0, (
                f"{where} exited with status {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
            )
            if run.check is not None:
                run.check()


@dataclass(frozen=True)
class _Run:
    """One run of an example: its source, where it runs, what to check afterwards."""

    source: str
    cwd: Path
    check: Callable[[], None] | None = None
    label: str = ""


# A service's setup: (example, tmp_path, stack) -> its runs; stack closes the service.
_Setup = Callable[[Example, Path, contextlib.ExitStack], list[_Run]]


def _with_postgres(example: Example, tmp_path: Path, stack: contextlib.ExitStack) -> list[_Run]:
    dsn = os.environ.get("DATABUFFER_TEST_POSTGRES", "")
    if not dsn:
        pytest.skip("needs a PostgreSQL server: set DATABUFFER_TEST_POSTGRES to its DSN")
    assert _DOCS_DSN in example.source, f"docs/{example.id} does not use the DSN {_DOCS_DSN}"
    _postgres(dsn, "CREATE TABLE IF NOT EXISTS events (id bigint, kind text, value double precision)")
    _postgres(dsn, "TRUNCATE events")

    def check() -> None:
        rows, ids = _postgres(dsn, "SELECT count(*), count(DISTINCT id) FROM events")
        assert rows > 0 and rows == ids, f"docs/{example.id} wrote {rows} rows with {ids} distinct ids"

    return [_Run(example.source.replace(_DOCS_DSN, dsn), tmp_path, check)]


def _postgres(dsn: str, statement: str) -> tuple[int, ...]:
    """Run one statement on the test server (autocommit); its first row, if any."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement)
        return tuple(cur.fetchone()) if cur.description else ()


def _with_redis(example: Example, tmp_path: Path, stack: contextlib.ExitStack) -> list[_Run]:
    import redis

    assert _DOCS_REDIS in example.source, f"docs/{example.id} does not use the URL {_DOCS_REDIS}"
    url = os.environ.get("DATABUFFER_TEST_REDIS", "") or _start_redis(tmp_path, stack)
    client = redis.Redis.from_url(url)
    stack.callback(client.close)
    client.delete("events")

    def check() -> None:
        entries = client.xrange("events")
        length = client.xlen("events")
        ids = [fields.get(b"id") for _, fields in entries]
        assert entries, f"docs/{example.id} added nothing to the stream events"
        assert length == len(entries), f"docs/{example.id}: XLEN {length}, XRANGE {len(entries)} entries"
        assert None not in ids, f"docs/{example.id} added an entry without an id field"
        duplicated = len(ids) - len(set(ids))
        assert not duplicated, f"docs/{example.id} added {duplicated} ids twice to the stream events"

    return [_Run(example.source.replace(_DOCS_REDIS, url), tmp_path, check)]


def _start_redis(tmp_path: Path, stack: contextlib.ExitStack) -> str:
    """Start Debian's ``redis-server`` (no persistence, a free port) until ``stack`` closes; its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip(
            "needs a Redis server: no redis-server on PATH (Debian: apt-get install redis-server)"
            " and DATABUFFER_TEST_REDIS unset"
        )
    workdir = tmp_path / "redis-server"
    workdir.mkdir()
    log = workdir / "redis.log"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        + ["--dir", str(workdir), "--logfile", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    stack.callback(stop)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"redis-server did not start (exit status {server.poll()}):\n{text}")
        time.sleep(0.05)


def _with_kafka(example: Example, tmp_path: Path, stack: contextlib.ExitStack) -> list[_Run]:
    source = example.source
    for literal in (_DOCS_KAFKA, _DOCS_KAFKA_TOPIC, _DOCS_KAFKA_TIMEOUT):
        assert literal in source, f"docs/{example.id} has no {literal}"
    bootstrap = os.environ.get("DATABUFFER_TEST_KAFKA", "")
    if bootstrap:
        return [_kafka_delivered(example, bootstrap, tmp_path / "broker", stack, mock=False)]
    mock = _kafka_mock_cluster(stack)
    return [
        _kafka_delivered(example, mock, tmp_path / "mock-cluster", stack, mock=True),
        _kafka_undelivered(example, tmp_path / "no-broker"),
    ]


def _kafka_delivered(
    example: Example, bootstrap: str, cwd: Path, stack: contextlib.ExitStack, *, mock: bool
) -> _Run:
    """The example against a broker: every event delivered, each key once, nothing dead-lettered."""
    label = "librdkafka's mock cluster" if mock else f"broker {bootstrap}"
    topic = _kafka_topic(bootstrap, stack, create=not mock)

    def check() -> None:
        dead_letter = cwd / _KAFKA_DEAD_LETTER
        spooled = dead_letter.read_text(encoding="utf-8") if dead_letter.exists() else ""
        assert not spooled, f"docs/{example.id} dead-lettered items ({label}):\n{spooled[:2000]}"
        keys = _kafka_keys(bootstrap, topic)
        assert keys, f"docs/{example.id} produced nothing to {topic} ({label})"
        duplicated = len(keys) - len(set(keys))
        assert not duplicated, f"docs/{example.id} produced {duplicated} keys twice to {topic} ({label})"

    source = example.source.replace(_DOCS_KAFKA, repr(bootstrap))
    return _Run(source.replace(_DOCS_KAFKA_TOPIC, f"TOPIC = {topic!r}"), cwd, check, label)


def _kafka_undelivered(example: Example, cwd: Path) -> _Run:
    """The example with no broker: every batch retried, then dead-lettered with the delivery timeout."""

    def check() -> None:
        dead_letter = cwd / _KAFKA_DEAD_LETTER
        assert dead_letter.exists(), f"docs/{example.id} wrote no {_KAFKA_DEAD_LETTER} without a broker"
        records = [json.loads(line) for line in dead_letter.read_text(encoding="utf-8").splitlines()]
        assert records, f"docs/{example.id} dead-lettered nothing without a broker"
        for record in records:
            assert "_MSG_TIMED_OUT" in record["error"], f"docs/{example.id}: not a delivery timeout: {record}"
            assert record["attempt"] > 1, f"docs/{example.id}: dead-lettered without a retry: {record}"
        items = {json.dumps(record["item"], sort_keys=True) for record in records}
        assert len(items) == len(records), f"docs/{example.id} dead-lettered an item twice"

    source = example.source.replace(_DOCS_KAFKA, '"127.0.0.1:1"')  # nothing listens there
    source = source.replace(_DOCS_KAFKA_TIMEOUT, "DELIVERY_TIMEOUT = 1.0")
    return _Run(source, cwd, check, "no broker: delivery reports time out")


def _kafka_mock_cluster(stack: contextlib.ExitStack) -> str:
    """Start librdkafka's mock cluster (``test.mock.num.brokers``) in this process; its address.

    The cluster belongs to a producer created for it, and lives until
    ``stack`` closes; librdkafka logs the address it listens on.
    """
    import logging

    from confluent_kafka import Producer

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"databuffer-test-kafka-mock-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(Collect())
    holder = Producer({"bootstrap.servers": "127.0.0.1:1", "test.mock.num.brokers": 1, "logger": logger})
    stack.callback(holder.flush, 10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        holder.poll(0.05)
        for line in lines:
            found = re.search(r"Mock cluster enabled: .* replaced with (\S+)", line)
            if found:
                return found[1]
    pytest.fail(f"librdkafka's mock cluster did not say where it listens: {lines}")


def _kafka_topic(bootstrap: str, stack: contextlib.ExitStack, create: bool) -> str:
    """A new topic's name; created on a broker with one partition, and deleted when ``stack`` closes.

    librdkafka's mock cluster creates a topic when it is first produced to.
    """
    topic = f"databuffer-docs-{uuid.uuid4().hex[:12]}"
    if create:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
        stack.callback(lambda: admin.delete_topics([topic])[topic].result(30))
    return topic


def _kafka_keys(bootstrap: str, topic: str) -> list[bytes | None]:
    """The keys of every message in the topic, partition by partition."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        keys: list[bytes | None] = []
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            consumer.assign([TopicPartition(topic, partition, low)])
            read = 0
            deadline = time.monotonic() + 60
            while read < high - low and time.monotonic() < deadline:
                message = consumer.poll(1.0)
                if message is None:
                    continue
                if message.error():
                    raise KafkaException(message.error())
                keys.append(message.key())
                read += 1
            assert read == high - low, f"read {read} of the {high - low} messages of {topic}[{partition}]"
        return keys
    finally:
        consumer.close()


def _with_clickhouse(example: Example, tmp_path: Path, stack: contextlib.ExitStack) -> list[_Run]:
    assert _DOCS_CLICKHOUSE in example.source, f"docs/{example.id} does not use the DSN {_DOCS_CLICKHOUSE}"
    dsn = os.environ.get("DATABUFFER_TEST_CLICKHOUSE", "")
    if dsn:
        import clickhouse_connect

        client = clickhouse_connect.get_client(dsn=dsn)
        client.command("DROP TABLE IF EXISTS events")
        client.close()
    else:
        dsn = f"chdb://{tmp_path / 'chdb'}"  # chdb:///abs/path: a chDB engine on that directory
    return [_Run(example.source.replace(_DOCS_CLICKHOUSE, repr(dsn)), tmp_path)]


_SERVICES: dict[str, _Setup] = {
    "postgres": _with_postgres,
    "redis": _with_redis,
    "kafka": _with_kafka,
    "clickhouse": _with_clickhouse,
}


def test_the_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        # The snippets extension reads CHANGELOG.md relative to the working directory.
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "reference" / "index.html").is_file()


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False
