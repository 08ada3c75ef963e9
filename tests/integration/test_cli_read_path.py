"""`cloudlet list` and `show` from the read path, beside real QEMU: the same bytes as the
full CLI's engine path for a running, a paused and a stopped VM, no SQLAlchemy, pydantic
or Typer loaded for them, and the engine's answer once a QEMU died (it records the crash)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlet.driver.qemu.runtime import read_record
from cloudlet.host import processes
from tests.integration import cli
from tests.integration.test_cli_startup import imported

pytestmark = pytest.mark.integration

READS = (
    ("list",),
    ("list", "-o", "json"),
    ("list", "-o", "wide"),
    ("show", "web1"),
    ("show", "web1", "-o", "json"),
    ("show", "cold"),
)
# The full CLI as it was: Typer parses, the engine answers (no read path).
FULL = "import sys; sys.argv[0] = 'cloudlet'; from cloudlet.cli.main import main; main()"


def full_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FULL, *args],
        env=cli.env_for(home),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def same_as_full(home: Path) -> None:
    for args in READS:
        quick = cli.run(home, *args)
        full = full_cli(home, *args)
        assert full.returncode == 0, full.stderr
        assert (quick.stdout, quick.stderr) == (full.stdout, full.stderr), args


def test_reads_match_the_engine_for_running_paused_and_dead_qemu(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "web1", "--type", "gp.micro", "--no-wait")
    cli.run(home, "create", "cold", "--no-start")
    assert cli.run_json(home, "show", "web1")["state"] == "running"
    same_as_full(home)
    proc, modules = imported(home, "list", "-o", "wide")
    assert proc.returncode == 0 and "web1" in proc.stdout
    assert not {"sqlalchemy", "pydantic", "typer"} & {m.split(".")[0] for m in modules}

    cli.run(home, "pause", "web1")
    assert cli.run_json(home, "show", "web1")["state"] == "paused"
    same_as_full(home)

    record = read_record(home / "run" / cli.run_json(home, "show", "web1")["id"])
    assert record is not None
    processes.signal_pid(record.pid, signal.SIGKILL, record.pid_start)
    assert processes.wait_gone(record.pid, 30, record.pid_start)
    proc, modules = imported(home, "show", "web1", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert '"state": "crashed"' in proc.stdout  # the engine recorded what the read saw
    assert "sqlalchemy" in modules  # the read path left the repair to the engine
    same_as_full(home)


@pytest.mark.parametrize("args", [("list",), ("show", "cold", "-o", "json")], ids=" ".join)
def test_reads_of_vms_at_rest_load_no_database_layer_pydantic_or_typer(
    cloudlet_home: Path, args: tuple[str, ...]
) -> None:
    home = cloudlet_home
    cli.run(home, "create", "cold", "--no-start")
    proc, modules = imported(home, *args)
    assert proc.returncode == 0, proc.stderr
    assert "cold" in proc.stdout
    roots = {m.split(".")[0] for m in modules}
    assert not {"sqlalchemy", "pydantic", "typer", "alembic"} & roots
    assert "cloudlet.engine.read_model" in modules and "cloudlet.store.database" not in modules
