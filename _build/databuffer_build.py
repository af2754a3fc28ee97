"""databuffer's PEP 517 build backend: setuptools', asking for Cython only when it runs.

``pyproject.toml`` names it (``build-backend = "databuffer_build"``,
``backend-path = ["_build"]``) and lists setuptools alone in
``[build-system] requires``: a static list cannot say "Cython, unless ...".
The ``get_requires_for_build_*`` hooks add Cython for a build that runs it
(``databuffer_sources``): a wheel or an editable install from a git
checkout, an sdist from a git checkout.  A wheel built from an sdist
compiles the C shipped in it, and ``DATABUFFER_NO_EXTENSIONS=1`` builds the
pure-Python wheel: neither asks for Cython, so both build offline with
setuptools alone.  Everything else is ``setuptools.build_meta``.
"""

from __future__ import annotations

from pathlib import Path

from databuffer_sources import CYTHON_REQUIREMENT, cython_needed_for_sdist, cython_needed_for_wheel
from setuptools import build_meta as _setuptools
from setuptools.build_meta import (
    build_editable,
    build_sdist,
    build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

ConfigSettings = dict[str, str | list[str]] | None


def _cython_if(needed: bool) -> list[str]:
    return [CYTHON_REQUIREMENT] if needed else []


# Build frontends run the hooks with the project's root as the working directory.


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    return requires + _cython_if(cython_needed_for_wheel(Path.cwd()))


def get_requires_for_build_editable(config_settings: ConfigSettings = None) -> list[str]:
    requires: list[str] = _setuptools.get_requires_for_build_editable(config_settings)
    return requires + _cython_if(cython_needed_for_wheel(Path.cwd()))


def get_requires_for_build_sdist(config_settings: ConfigSettings = None) -> list[str]:
    requires: list[str] = _setuptools.get_requires_for_build_sdist(config_settings)
    return requires + _cython_if(cython_needed_for_sdist(Path.cwd()))
