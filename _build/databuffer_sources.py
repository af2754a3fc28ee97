"""Which source databuffer's compiled core is built from, and whether Cython is needed.

The compiled core (``databuffer._core``) is built from one of:

- nothing: ``DATABUFFER_NO_EXTENSIONS`` is set (to anything but ``""``), or
  the interpreter is not CPython; the wheel is the pure-Python
  ``py3-none-any`` one, and neither a compiler nor Cython is needed;
- ``src/_core/_core.c``, the C that Cython generated when the sdist was
  made: when building from an sdist (a ``PKG-INFO`` at the root) whose
  ``_core.c`` ends with the stamp of the Cython sources it came from, and
  those sources are unchanged.  A C compiler is needed, Cython is not;
- ``src/_core/_core.pyx`` through Cython, otherwise: a git checkout (where a
  ``_core.c`` is only a leftover of an earlier build, never used as it is),
  or an sdist whose ``.pyx``/``.pxd`` were edited after it was made.

Every sdist ships the generated C, stamped (``setup.py``'s sdist command).
Standard library only: ``setup.py``, the build backend
(``databuffer_build.py``) and ``.ci/check-contents`` (which checks an
sdist's stamp, with or without setuptools installed) all import it.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterable
from pathlib import Path

#: The Cython that compiles ``_core.pyx`` (asked for only when it runs).
CYTHON_REQUIREMENT = "Cython>=3.1,<4"
CORE_DIR = "src/_core"
PYX = f"{CORE_DIR}/_core.pyx"
GENERATED_C = f"{CORE_DIR}/_core.c"
#: The sources whose text Cython reads: the generated C depends on these.
#: (The ``.h`` headers are #included by the C compiler, not read by Cython.)
CYTHON_SOURCE_SUFFIXES = (".pyx", ".pxd", ".pxi")
STAMP_PREFIX = "/* databuffer: generated from Cython sources sha256:"


def no_extensions() -> bool:
    """Whether to build no compiled core (the pure-Python wheel)."""
    return bool(os.environ.get("DATABUFFER_NO_EXTENSIONS")) or platform.python_implementation() != "CPython"


def sources_digest(sources: Iterable[tuple[str, bytes]]) -> str:
    """sha256 of the Cython sources, given as ``(file name, content)`` pairs.

    Only the ``.pyx``/``.pxd``/``.pxi`` files count, by base name, in sorted
    order, with line endings normalized (a checkout with CRLF endings makes
    the same digest).
    """
    digest = hashlib.sha256()
    named = sorted((Path(n).name, d) for n, d in sources if n.endswith(CYTHON_SOURCE_SUFFIXES))
    for name, data in named:
        body = data.replace(b"\r\n", b"\n")
        digest.update(f"{name}\0{len(body)}\0".encode())
        digest.update(body)
    return digest.hexdigest()


def core_sources_digest(root: Path) -> str:
    """The digest of the Cython sources in ``root/src/_core``."""
    core = root / CORE_DIR
    return sources_digest((p.name, p.read_bytes()) for p in core.iterdir() if p.is_file())


def stamp(digest: str) -> str:
    """The last line of a shipped ``_core.c``: the digest of its sources."""
    return f"{STAMP_PREFIX} {digest} */\n"


def stamp_of(c_tail: bytes) -> str | None:
    """The digest in the stamp that ends a generated C file (its tail suffices), or None."""
    lines = c_tail.rstrip().splitlines()
    last = lines[-1].decode("ascii", "replace") if lines else ""
    if not last.startswith(STAMP_PREFIX):
        return None
    return last[len(STAMP_PREFIX) :].strip().removesuffix("*/").strip()


def in_sdist(root: Path) -> bool:
    """An unpacked sdist has PKG-INFO at its root; a git checkout has not."""
    return (root / "PKG-INFO").is_file()


def shipped_c(root: Path) -> Path | None:
    """The sdist's generated ``_core.c``, when it matches the Cython sources.

    None in a git checkout, when the sdist has no ``_core.c``, when the C has
    no stamp, or when the ``.pyx``/``.pxd`` changed since it was generated.
    """
    c_file = root / GENERATED_C
    if not in_sdist(root) or not c_file.is_file():
        return None
    with c_file.open("rb") as f:
        f.seek(max(0, c_file.stat().st_size - 512))
        digest = stamp_of(f.read())
    return c_file if digest is not None and digest == core_sources_digest(root) else None


def cython_needed_for_wheel(root: Path) -> bool:
    """Whether a wheel (or an editable install) built in ``root`` runs Cython."""
    return not no_extensions() and shipped_c(root) is None


def cython_needed_for_sdist(root: Path) -> bool:
    """Whether an sdist made from ``root`` runs Cython.

    Every sdist ships the generated C, whatever ``DATABUFFER_NO_EXTENSIONS``
    says: one made from a git checkout runs Cython; one made from an sdist
    copies that sdist's C when it still matches.
    """
    return shipped_c(root) is None
