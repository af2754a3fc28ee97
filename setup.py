"""Build the compiled core; all metadata lives in pyproject.toml."""

import os
import platform
import sys

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("DATABUFFER_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
DEBUG_BUILD = bool(os.environ.get("DATABUFFER_DEBUG_BUILD"))

if NO_EXTENSIONS:
    print("*********************", file=sys.stderr)
    print("* Pure Python build *", file=sys.stderr)
    print("*********************", file=sys.stderr)
    ext_modules = []
else:
    from Cython.Build import cythonize

    if DEBUG_BUILD:
        extra_compile_args = ["-O0", "-g3", "-UNDEBUG"]
        undef_macros = ["NDEBUG"]
        print("* Debug build of databuffer._core (-O0 -g3, asserts on) *", file=sys.stderr)
    else:
        extra_compile_args = ["-O3"]
        undef_macros = []
        print("* Optimized build of databuffer._core *", file=sys.stderr)
    ext_modules = cythonize(
        [
            Extension(
                "databuffer._core",
                ["src/_core/_core.pyx"],
                include_dirs=["src/_core"],
                extra_compile_args=extra_compile_args,
                undef_macros=undef_macros,
            )
        ],
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=bool(os.environ.get("DATABUFFER_ANNOTATE")),
    )

setup(ext_modules=ext_modules)
