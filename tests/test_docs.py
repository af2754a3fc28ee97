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
  - ``<!-- requires: module [module ...] -->``: the block runs only where
    those modules are importable, and is skipped elsewhere;
  - ``<!-- postgres: module [module ...] -->``: the block writes to a
    PostgreSQL table ``events (id bigint, kind text, value double
    precision)`` through the DSN ``postgresql://app@localhost/app``.  It runs
    only where ``DATABUFFER_TEST_POSTGRES`` gives the DSN of a server to use
    instead (``.ci/run`` starts one) and the modules are importable; the
    table is emptied first, and afterwards must hold rows, each id once.

  Any other comment in that place is an error, so that a misspelt marker
  does not go unnoticed.
- Blocks in other languages (``sh``, ``text``, ``sql``, ``elixir``) are not run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
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
_REQUIRES = re.compile(r"^requires:\s*(?P<modules>[\w. ]+)$")
_POSTGRES = re.compile(r"^postgres:\s*(?P<modules>[\w. ]+)$")
# The DSN the PostgreSQL examples are written with.
_DOCS_DSN = "postgresql://app@localhost/app"


@dataclass(frozen=True)
class Example:
    """A ``python`` code block of a page, and what its marker says."""

    page: str
    line: int
    source: str
    run: bool
    requires: tuple[str, ...]
    postgres: bool = False

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _marker(line: str, where: str) -> tuple[bool, tuple[str, ...], bool]:
    """``(run, requires, postgres)`` from the line before a fence."""
    match = _MARKER.match(line)
    if match is None:
        return True, (), False
    body = match["body"]
    if _NO_RUN.match(body):
        return False, (), False
    requires = _REQUIRES.match(body) or _POSTGRES.match(body)
    if requires:
        return True, tuple(requires["modules"].split()), body.startswith("postgres")
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
            run, requires, postgres = _marker(previous, f"{page}:{start + 1}")
            found.append(Example(page, start + 1, "\n".join(body) + "\n", run, requires, postgres))
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
    source = example.source
    dsn = os.environ.get("DATABUFFER_TEST_POSTGRES", "")
    if example.postgres:
        if not dsn:
            pytest.skip("needs a PostgreSQL server: set DATABUFFER_TEST_POSTGRES to its DSN")
        assert _DOCS_DSN in source, f"docs/{example.id} does not use the DSN {_DOCS_DSN}"
        source = source.replace(_DOCS_DSN, dsn)
        _postgres(dsn, "CREATE TABLE IF NOT EXISTS events (id bigint, kind text, value double precision)")
        _postgres(dsn, "TRUNCATE events")
    script = tmp_path / "example.py"
    script.write_text(source, encoding="utf-8")
    env = core_env(core_name)
    # The subprocess imports the databuffer these tests import.
    src = str(Path(databuffer.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"docs/{example.id} exited with status {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    if example.postgres:
        rows, ids = _postgres(dsn, "SELECT count(*), count(DISTINCT id) FROM events")
        assert rows > 0 and rows == ids, f"docs/{example.id} wrote {rows} rows with {ids} distinct ids"


def _postgres(dsn: str, statement: str) -> tuple[int, ...]:
    """Run one statement on the test server (autocommit); its first row, if any."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement)
        return tuple(cur.fetchone()) if cur.description else ()


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
