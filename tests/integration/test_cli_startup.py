"""What `cloudlet --help` and `--version` import: nothing of the engine, the database,
pydantic or Rich (behaviour, not timing; bench/cli.py measures the time)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.integration import cli

pytestmark = pytest.mark.integration

HEAVY = ("sqlalchemy", "pydantic", "rich", "cloudlet.engine", "cloudlet.store", "cloudlet.driver")


def imported(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The run of `python -X importtime -m cloudlet ARGS` and every module it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cloudlet", *args],
        env=cli.env_for(home),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "cloudlet.cli.entry" in modules  # cloudlet ran: the checks on modules mean something
    return proc, modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("args", [("--version",), ("--help",)], ids=" ".join)
def test_help_and_version_import_no_engine_database_pydantic_or_rich(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    proc, modules = imported(tmp_path / "home", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert heavy(modules) == []
    if args == ("--version",):
        assert proc.stdout == f"cloudlet {metadata.version('cloudlet')}\n"
        assert not [m for m in modules if m.split(".")[0] in ("typer", "click")]
    else:
        assert "Usage:" in proc.stdout
    assert not (tmp_path / "home").exists()  # nothing done before parsing: no state made


def test_a_commands_help_imports_no_engine_or_database(tmp_path: Path) -> None:
    """Typer itself brings pydantic in to coerce a command's parameters; the engine and
    the database still stay out."""
    proc, modules = imported(tmp_path / "home", "delete", "--help")
    assert proc.returncode == 0 and "--force" in proc.stdout
    assert [m for m in heavy(modules) if not m.startswith("pydantic")] == []


def test_a_command_still_imports_what_it_uses(short_tmp: Path) -> None:
    proc, modules = imported(short_tmp / "home", "list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"sqlalchemy", "rich", "cloudlet.engine.engine"} <= modules
    assert "no VMs yet" in proc.stderr
