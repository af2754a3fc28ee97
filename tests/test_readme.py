"""README.md: short, the two commands first, links that work on PyPI, examples that run.

The README is also the package's long description on PyPI, where a relative
link resolves against pypi.org and breaks: every link is absolute.  Links to
the repository's own files (the docs pages, CHANGELOG.md, ...) all start with
``REPOSITORY`` and name files that exist in this checkout, so that moving a
docs page fails here rather than on the package index.  Everything that does
not fit in a short README lives in ``docs/`` or CONTRIBUTING.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import core_env

import databuffer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
if not README.is_file():
    # Run from a copy of tests/ alone (cibuildwheel, .ci/check-dist).
    pytest.skip("no README.md next to tests/", allow_module_level=True)

MAX_BYTES = 10_000
# The two commands that open the README: a newcomer's first run, and what CI
# runs (.ci/run and ci.yml name their steps after them).
COMMANDS = [
    "pip install . && python -m databuffer demo",
    "pip install '.[test]' && python -m pytest",
]
# Where the repository's files are linked from (the README names no docs
# site: the docs pages are linked as rendered by GitHub).
REPOSITORY = "https://github.com/databuffer/databuffer"
BLOB = f"{REPOSITORY}/blob/main/"

TEXT = README.read_text(encoding="utf-8")
_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
# [text](target "title"), ![alt](target), [label]: target, <target>, href="target".
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?(?P<target>[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s|$)", re.M)
_AUTOLINK = re.compile(r"<(?P<target>[a-zA-Z][\w+.-]*:[^>\s]*)>")
_HTML = re.compile(r"""\b(?:href|src)\s*=\s*["'](?P<target>[^"']*)["']""", re.I)


def _prose() -> str:
    """The README without its code blocks (a link is not looked for in code)."""
    return _FENCE.sub("", TEXT)


def _links() -> list[str]:
    prose = _prose()
    patterns = (_INLINE, _REFERENCE, _AUTOLINK, _HTML)
    return [m["target"] for pattern in patterns for m in pattern.finditer(prose)]


def test_the_readme_is_at_most_10_kb() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_BYTES, f"README.md is {size} bytes, over {MAX_BYTES}: move the detail to docs/"


def test_the_two_commands_come_first() -> None:
    first = _FENCE.search(TEXT)
    assert first is not None, "README.md has no code block"
    assert first["lang"] == "sh", f"the first code block is {first['lang']!r}, not the two sh commands"
    assert first["body"].splitlines() == COMMANDS
    before = TEXT[: first.start()]
    assert "`pip " not in before and "`python " not in before, "a command comes before the two commands"
    assert before.count("\n## ") == 0, "a section comes before the two commands"


def test_the_readme_has_links() -> None:
    # The patterns below would pass a README whose links they do not see.
    links = _links()
    assert len(links) >= 10, links
    assert any(link.startswith(BLOB + "docs/") for link in links)


@pytest.mark.parametrize("link", sorted(set(_links())))
def test_every_link_is_absolute(link: str) -> None:
    assert re.match(r"https?://[^/\s]+", link), (
        f"README.md links to {link!r}: relative links break on the package index; "
        f"link {BLOB}... or the docs site instead"
    )


@pytest.mark.parametrize(
    "link", sorted({link for link in _links() if link.startswith("https://github.com/")})
)
def test_links_into_the_repository_name_files_that_exist(link: str) -> None:
    assert link.startswith(REPOSITORY + "/"), f"{link!r}: the repository's files are linked from {REPOSITORY}"
    assert link.startswith(BLOB) or link.startswith(f"{REPOSITORY}/tree/main/"), link
    path = link.split("/main/", 1)[1].split("#", 1)[0]
    assert (ROOT / path).exists(), f"README.md links to {path}, which is not in the repository"


def _examples() -> list[str]:
    return [m["body"] for m in _FENCE.finditer(TEXT) if m["lang"] == "python"]


def test_the_readme_has_a_quick_start_for_each_buffer() -> None:
    examples = _examples()
    assert any("Buffer(" in source and "AsyncBuffer" not in source for source in examples)
    assert any("AsyncBuffer(" in source for source in examples)


@pytest.mark.parametrize("index", range(len(_examples())), ids=lambda i: f"example{i + 1}")
def test_a_readme_example_runs(index: int, core_name: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_examples()[index], encoding="utf-8")
    env = core_env(core_name)
    src = str(Path(databuffer.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
