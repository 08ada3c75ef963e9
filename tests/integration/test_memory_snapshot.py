"""Memory snapshots on real QEMU (TCG here): a revert resumes the guest where it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import cli

pytestmark = pytest.mark.integration


def guest(home: Path, vm: str, script: str, *, check: bool = True) -> str:
    return cli.run(home, "exec", vm, "--", "sh", "-c", script, check=check).stdout


def test_memory_snapshot_revert_brings_back_a_running_process(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "web1", "--image", "tiny")
    # /tmp in tiny is tmpfs: the pid file, like the process, lives in RAM only.
    guest(home, "web1", "sleep 100000 >/dev/null 2>&1 & echo $! > /tmp/pid")
    pid = guest(home, "web1", "cat /tmp/pid").strip()
    assert pid.isdigit()

    cli.run(home, "snapshot", "create", "web1", "pre-patch", "--memory")
    (snap,) = cli.run_json(home, "snapshot", "list", "web1")
    assert snap["memory"] is True and snap["live"] is True
    assert cli.run_json(home, "show", "web1")["state"] == "running"

    guest(home, "web1", f"kill {pid}; rm /tmp/pid")
    gone = guest(home, "web1", f"test -e /proc/{pid} || echo gone; test -e /tmp/pid || echo no")
    assert gone.split() == ["gone", "no"]

    out = cli.run(home, "snapshot", "revert", "web1", "pre-patch", "--force").stderr
    assert "resumed from its memory state" in out
    assert cli.run_json(home, "show", "web1")["state"] == "running"
    back = guest(home, "web1", f"cat /tmp/pid; cat /proc/{pid}/cmdline | tr '\\0' ' '")
    assert back.split() == [pid, "sleep", "100000"]

    # a disk-only snapshot of a stopped VM is fine; --memory is refused in one line
    cli.run(home, "stop", "web1", "--force")
    refused = cli.run(home, "snapshot", "create", "web1", "cold", "--memory", check=False)
    assert refused.returncode != 0 and "it is stopped" in refused.stderr
    cli.run(home, "snapshot", "delete", "web1", "pre-patch")
    assert cli.run_json(home, "snapshot", "list", "web1") == []
    assert not list((home / "instances").rglob("*.vmstate*"))
