"""``python -m databuffer``: bad command lines, for every subcommand (exit status 2)."""

from __future__ import annotations

import pytest
from conftest import run_cli

from databuffer._cli import build_parser


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["demo", "--events", "0"], "--events"),
        (["demo", "--async", "--partitions", "0"], "--partitions"),
        (["bench", "--items", "0"], "--items"),
    ],
)
def test_bad_option_is_an_argparse_error(argv: list[str], option: str) -> None:
    proc = run_cli(*argv)
    assert proc.returncode == 2
    assert f"argument {option}" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["demo", "--events", "0"], "--events"),
        (["demo", "--events", "-5"], "--events"),
        (["demo", "--events", "1e6"], "--events"),
        (["demo", "--partitions", "0"], "--partitions"),
        (["demo", "--max-size", "many"], "--max-size"),
        (["demo", "--async", "--events", "0"], "--events"),
        (["demo", "--async=yes"], "--async"),
        (["demo", "--uvloop=no"], "--uvloop"),
        ([], "COMMAND"),
        (["bench", "--items", "0"], "--items"),
        (["bench", "--items", "many"], "--items"),
        (["bench", "--memory-items", "100"], "--memory-items"),
        (["bench", "--rounds", "-1"], "--rounds"),
        (["bench", "--repeat", "1.5"], "--repeat"),
        (["bench", "--json=yes"], "--json"),
        (["bench", "--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_values_name_the_option(argv: list[str], option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert option in capsys.readouterr().err
