"""`list` at 80 columns, create's phases in a terminal, the TCG note once, and a create
cancelled on real QEMU (tiny guests, TCG here) leaving nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pexpect
import pytest

from cloudlet.config import Settings
from cloudlet.engine.factory import open_engine
from cloudlet.errors import Cancelled
from cloudlet.progress import CancelToken, ProgressEvent
from cloudlet.spec.document import VMBody
from tests.integration import cli

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONGEST = "n" * 63  # the longest VM name there is
TCG_NOTE = "runs under TCG software emulation"


def listing(home: Path, *args: str) -> list[str]:
    env = {**cli.env_for(home), "COLUMNS": "80"}
    proc = subprocess.run(
        cli.argv("list", *args), env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def in_a_terminal(home: Path, *args: str) -> tuple[int, str]:
    """Run the CLI in an 80-column pseudo-terminal: its exit code and all it drew."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cloudlet", *args],
        env={**cli.env_for(home), "COLUMNS": "80"},
        timeout=300,
        dimensions=(24, 80),
        encoding="utf-8",
        codec_errors="replace",
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None
    return child.exitstatus, ANSI.sub("", child.before or "")


def test_list_fits_80_columns_and_wide_has_the_rest(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "web-frontend-01", "--type", "gp.micro")
    cli.run(home, "create", "dark", "--network", "none", "--no-start")
    lines = listing(home)
    assert lines[0].split() == ["NAME", "STATE", "TYPE", "IMAGE", "ADDRESSES"]
    assert all(len(line.rstrip()) <= 80 for line in lines), "\n".join(lines)
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["web-frontend-01"] == ["web-frontend-01", "running", "gp.micro", "tiny",
                                       "10.0.2.15", "(nat)"]  # fmt: skip
    assert rows["dark"] == ["dark", "stopped", "gp.small", "tiny", "-"]
    assert "127.0.0.1" not in "\n".join(lines)  # tiny has a forward but no SSH

    wide = listing(home, "-o", "wide")
    assert wide[0].split() == [
        "NAME", "STATE", "TYPE", "VCPUS", "MEMORY", "DISK", "IMAGE", "ARCH", "ADDRESSES",
        "SSH", "ACCEL",
    ]  # fmt: skip
    web = next(line for line in wide if line.startswith("web-frontend-01 "))
    accel = cli.run_json(home, "show", "web-frontend-01")["accel"]
    assert web.split() == ["web-frontend-01", "running", "gp.micro", "1", "vCPU", "512", "MiB",
                           *web.split()[7:9], "tiny", "x86_64", "10.0.2.15", "(nat)", "-",
                           accel]  # fmt: skip
    show = cli.run(home, "show", "web-frontend-01").stdout
    assert re.search(r"^SSH forward\s+none \(image has no SSH\)$", show, re.M), show

    # A name wider than the table allows runs long: never cut, never wrapped.
    cli.run(home, "create", LONGEST, "--no-start")
    lines = listing(home)
    row = next(line for line in lines if line.startswith(LONGEST))
    assert row.split() == [LONGEST, "stopped", "gp.small", "tiny", "10.0.2.15", "(nat)"]
    assert "…" not in "\n".join(lines)
    cli.run(home, "delete", "--force", "web-frontend-01", "dark", LONGEST)


def test_create_in_a_terminal_shows_its_phases_and_the_tcg_note_once(cloudlet_home: Path) -> None:
    home = cloudlet_home
    code, drawn = in_a_terminal(home, "create", "p1", "--type", "gp.micro", "--wait")
    assert code == 0, drawn
    for phase in ("disk", "boot", "agent"):
        assert re.search(rf"creating p1: {phase} \(\d+ s\)", drawn), drawn
    assert drawn.index("creating p1: boot") < drawn.index("creating p1: agent")
    host = cli.run_json(home, "host")
    if host["accel"] == "tcg":  # said on the first start since this host booted ...
        assert TCG_NOTE in drawn and host["accel_reason"] in drawn
    code, drawn = in_a_terminal(home, "create", "p2", "--type", "gp.micro")
    assert code == 0, drawn
    assert "creating p2: agent (" in drawn
    assert TCG_NOTE not in drawn  # ... and not again until the next boot
    code, drawn = in_a_terminal(home, "restart", "p2", "--force")
    assert code == 0 and "restarting p2: agent (" in drawn and TCG_NOTE not in drawn
    if host["accel"] == "tcg":  # the host's details always say it
        for _ in range(2):
            assert "VMs here run under TCG software emulation" in cli.run(home, "host").stdout
    # Not a terminal: no status line at all.
    quiet = cli.run(home, "create", "p3", "--type", "gp.micro")
    assert "creating p3:" not in quiet.stderr
    cli.run(home, "delete", "--force", "p1", "p2", "p3")


def test_a_create_cancelled_during_boot_leaves_nothing(
    cloudlet_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = cloudlet_home
    cli.in_process_env(home, monkeypatch)
    engine = open_engine(Settings.load())
    try:
        token = CancelToken()
        stages: list[str] = []
        qemus: list[int] = []

        def sink(event: ProgressEvent) -> None:
            stages.append(event.stage)
            if event.stage == "agent":  # QEMU runs; the guest is still booting
                qemus.extend(cli.our_processes(str(home)))
                threading.Timer(0.5, token.cancel, args=("the client went away",)).start()

        with pytest.raises(Cancelled, match="the client went away"):
            engine.create(
                "gone", VMBody(type="gp.micro", restrict_network=True), progress=sink, cancel=token
            )
        assert stages == ["disk", "boot", "agent"] and qemus  # it was cancelled mid-boot
        assert engine.instances(include_process=True) == []
        assert cli.our_processes(str(home)) == []
        assert list((home / "instances").iterdir()) == []
        assert not any((home / "run").iterdir())
        # The name is free again and the same VM boots.
        assert engine.create("gone", VMBody(type="gp.micro")).state == "running"
        engine.delete("gone", force=True)
    finally:
        engine.db.close()
