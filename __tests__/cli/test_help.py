"""`cryptomarket --help` and every command's help: short, complete, readable in 80 columns."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from cryptomarket.cli import app

CRYPTOMARKET = Path(sys.executable).parent / "cryptomarket"  # the console script users run
COMMANDS = ["serve", "ingest", "migrate", "backfill", "rotate-keys", "simulate"]  # SPEC 3, #15


def run_help(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # our own command, with fixed arguments
        [CRYPTOMARKET, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin"), "COLUMNS": "80", "TERM": "dumb"},
    )


def test_every_command_has_a_one_line_summary_and_every_option_a_help() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    assert list(group.commands) == COMMANDS
    for name, command in group.commands.items():
        summary = (command.help or "").split("\n\n")[0]
        assert summary.endswith("."), name
        assert "\n" not in summary and len(summary) <= 90, f"{name}: {summary!r}"
        for parameter in command.params:
            assert getattr(parameter, "help", None), f"{name} {parameter.name}: no help"


def test_the_overview_lists_the_commands_and_where_settings_come_from() -> None:
    result = run_help("--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "Usage: cryptomarket [OPTIONS] COMMAND [ARGS]..." in result.stdout
    listed = [line.split()[1] for line in lines if line.startswith("│ ") and len(line.split()) > 2]
    assert [word for word in listed if word in COMMANDS] == COMMANDS
    assert ".env.example" in result.stdout


def test_no_command_shows_the_overview() -> None:
    result = run_help()
    assert result.returncode == 2  # a usage error, with the help to fix it
    assert "Usage: cryptomarket [OPTIONS] COMMAND [ARGS]..." in result.stdout + result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_says_what_it_does(command: str) -> None:
    result = run_help(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: cryptomarket {command} [OPTIONS]" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    summary = (group.commands[command].help or "").split("\n\n")[0]
    assert " ".join(summary.split()[:5]) in " ".join(result.stdout.split())
