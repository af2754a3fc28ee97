"""Command line of databuffer: ``python -m databuffer demo`` and ``bench``.

``demo`` streams synthetic events through a :class:`~databuffer.Buffer` (or,
with ``--async``, an :class:`~databuffer.AsyncBuffer`) into an SQLite table
and checks that the table holds exactly the events inserted (see
:mod:`databuffer._cli.demo`).

``bench`` times databuffer against baselines measured in the same run and
prints the ratios (see :mod:`databuffer._cli.bench`).

Each command lives in its own module, which provides ``DESCRIPTION``,
``add_arguments(parser)`` and ``run_command(args)``.  That module is imported
only when its command is parsed (or its help shown), so that
``python -m databuffer --version`` imports neither sqlite3 nor the bench.

Exit status: 0 when the check passes, 1 when it fails (or the demo could not
run), 2 for a bad command line, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from .. import __version__

__all__ = ("build_parser", "main")

#: The commands, in the order ``--help`` lists them: name and one-line help.
#: The module of each is ``databuffer._cli.<name>``.
_COMMANDS = (
    ("demo", "stream synthetic events through a Buffer (or an AsyncBuffer) into SQLite and check them"),
    ("bench", "time databuffer against baselines measured in the same run, print the ratios"),
)


class _CommandParser(argparse.ArgumentParser):
    """The parser of one command, completed from the command's module on first use.

    The module gives the parser its description and options, and the
    ``handler`` default (its ``run_command``), when the parser first parses
    or formats its help or usage.
    """

    #: The module still to load (``databuffer._cli.<command>``), ``None`` once loaded.
    command_module: str | None = None

    def _load(self) -> None:
        name, self.command_module = self.command_module, None
        if name is None:
            return
        module = importlib.import_module(name)
        self.description = module.DESCRIPTION
        module.add_arguments(self)
        self.set_defaults(handler=module.run_command)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        self._load()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._load()
        return super().format_usage()

    def format_help(self) -> str:
        self._load()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The command line: a parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m databuffer",
        description="Command-line tools of databuffer.",
    )
    parser.add_argument("--version", action="version", version=f"databuffer {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )
    for name, help in _COMMANDS:
        command = commands.add_parser(name, help=help)
        command.command_module = f"{__name__}.{name}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` by default.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        print("\ndatabuffer: interrupted", file=sys.stderr)
        return 130
    return status
