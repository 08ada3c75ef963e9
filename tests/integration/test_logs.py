"""cloudlet's log on real QEMU and real host commands, and runtime records of the previous
format adopted by a new engine."""

from __future__ import annotations

import json
import stat
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from cloudlet import logs
from cloudlet.driver.base import RuntimeInfo
from cloudlet.driver.qemu import qmp
from cloudlet.driver.qemu.runtime import RECORD_NAME, read_record
from cloudlet.errors import MissingDependency
from cloudlet.host import processes
from cloudlet.host import run as host_run
from tests.integration import cli

pytestmark = pytest.mark.integration

SECRET = "hunter2-Sekrit"  # passed as arguments
STDIN_SECRET = "stdin-Sekrit-42"  # passed on stdin
QMP_SECRET = "qmp-Sekrit-7"  # a QEMU secret object's data


def log_text(home: Path) -> str:
    """The log and every rotated file, all of it."""
    return "".join(p.read_text() for p in sorted((home / "logs").iterdir()))


def assert_private(home: Path) -> None:
    assert stat.S_IMODE((home / "logs").stat().st_mode) == 0o700
    for path in (home / "logs").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_host_commands_are_logged_with_exit_code_duration_and_no_secret(short_tmp: Path) -> None:
    home = short_tmp / "h"
    home.mkdir()
    assert logs.to_file(home) is not None
    try:
        argv = ["sh", "-c", "cat >/dev/null; exit 3", "sh", "--password", SECRET]
        host_run.run([*argv, f"TOKEN={SECRET}", f"secret,id=s0,data={SECRET}"],
                     input=STDIN_SECRET.encode(), check=False)  # fmt: skip
        host_run.run(["true", f"https://user:{SECRET}@example.org/"])
        with pytest.raises(MissingDependency):
            host_run.run(["/nonexistent/tool", "--token", SECRET])
        host_run.spawn(["true", "--api-key", SECRET]).wait()
    finally:
        logs.stop()
    lines = log_text(home).splitlines()
    failed = next(line for line in lines if "exit 3 in" in line)
    assert f"stdin {len(STDIN_SECRET)} bytes" in failed
    assert "--password '<redacted>' 'TOKEN=<redacted>' 'secret,id=s0,data=<redacted>'" in failed
    assert any("exit 0 in" in line and "https://<redacted>@example.org/" in line for line in lines)
    assert any(
        "not found in" in line and line.endswith(": /nonexistent/tool --token '<redacted>'")
        for line in lines
    )
    assert any("started pid" in line and "--api-key '<redacted>'" in line for line in lines)
    text = log_text(home)
    assert SECRET not in text and STDIN_SECRET not in text
    assert_private(home)


def test_a_vm_leaves_its_qemu_command_qmp_agent_and_operations_in_the_log(
    cloudlet_home: Path,
) -> None:
    home = cloudlet_home
    created = cli.run_json(home, "create", "logvm", "--type", "gp.micro")
    vm_id = str(created["id"])
    # a command with a password-like argument and a secret on stdin, through the agent
    execed = subprocess.run(
        cli.argv("exec", "-i", "logvm", "--", "sh", "-c", "cat", "sh", "--password", SECRET),
        input=STDIN_SECRET,
        env=cli.env_for(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (execed.returncode, execed.stdout) == (0, STDIN_SECRET), execed.stderr
    # a QEMU secret object (what an encrypted disk would need), over QMP from this process
    info = read_record(home / "run" / vm_id)
    assert info is not None
    assert logs.to_file(home) is not None
    try:
        qmp.execute(info.qmp_socket, "object-add",
                    {"qom-type": "secret", "id": "s0", "data": QMP_SECRET})  # fmt: skip
    finally:
        logs.stop()
    # --debug shows the log on stderr; without it stderr stays as it was
    quiet = cli.run(home, "show", "logvm")
    assert "operation" not in quiet.stderr and "QMP" not in quiet.stderr
    stopped = cli.run(home, "--debug", "stop", "logvm")
    assert "stop of VM logvm started" in stopped.stderr
    assert "system_powerdown" in stopped.stderr
    assert not processes.is_alive(info.pid, info.pid_start)

    text = log_text(home)
    lines = text.splitlines()
    qemu = [line for line in lines if "QEMU command line:" in line]
    assert len(qemu) == 1
    assert f"VM logvm ({vm_id}): QEMU command line: " in qemu[0]
    for part in ("qemu-system-x86_64", " -name guest=logvm", " -mon chardev=qmp", "restrict=on"):
        assert part in qemu[0], qemu[0]
    assert any(
        f"VM {vm_id}: query-status" in line and '"status":"running"' in line for line in lines
    )
    assert any(f"VM {vm_id}: system_powerdown" in line for line in lines)
    assert any(f"VM {vm_id}: agent guest-exec " in line for line in lines)
    for outcome in ("create of VM logvm started", "create of VM logvm done",
                    "stop of VM logvm started", "stop of VM logvm done"):  # fmt: skip
        assert outcome in text
    assert any("qemu-img" in line and "exit 0 in" in line for line in lines)
    object_add = next(line for line in lines if "object-add" in line)
    assert '"data":"<redacted>"' in object_add
    for secret in (SECRET, STDIN_SECRET, QMP_SECRET):
        assert secret not in text, secret
    assert_private(home)


def write_previous_format(run_dir: Path, info: RuntimeInfo) -> None:
    """The record as cloudlet wrote it before records had a version (git show
    d5fd735:src/cloudlet/driver/qemu/runtime.py): asdict, paths as text, indent 2."""
    data = asdict(info)
    for key, value in data.items():
        if isinstance(value, Path):
            data[key] = str(value)
    (run_dir / RECORD_NAME).write_text(json.dumps(data, indent=2))


def test_a_vm_started_under_the_previous_record_format_is_adopted_and_stopped(
    cloudlet_home: Path,
) -> None:
    home = cloudlet_home
    created = cli.run_json(home, "create", "oldrec", "--type", "gp.micro")
    run_dir = home / "run" / str(created["id"])
    info = read_record(run_dir)
    assert info is not None and processes.is_alive(info.pid, info.pid_start)
    assert json.loads((run_dir / RECORD_NAME).read_text())["version"] == 2
    write_previous_format(run_dir, info)
    previous = (run_dir / RECORD_NAME).read_text()
    assert '"version"' not in previous

    # a new engine (a new CLI process) adopts it
    shown = cli.run_json(home, "show", "oldrec")
    assert (shown["state"], shown["pid"]) == ("running", info.pid)

    # a record of a newer format is refused in one line, and the VM is left untouched
    newer = {**json.loads(previous), "version": 3}
    (run_dir / RECORD_NAME).write_text(json.dumps(newer))
    try:
        for command in (("show", "oldrec"), ("list",), ("stop", "oldrec")):
            refused = cli.run(home, *command, check=False)
            assert refused.returncode == 4, (command, refused.stderr)
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert "runtime record of format 3" in refused.stderr and "upgrade" in refused.stderr
        assert processes.is_alive(info.pid, info.pid_start)
        assert json.loads((run_dir / RECORD_NAME).read_text()) == newer
    finally:  # the leftover-VM sweep after each test reads the record: leave it readable
        (run_dir / RECORD_NAME).write_text(previous)

    # back to the previous format: stopped cleanly, its QEMU process gone
    cli.run(home, "stop", "oldrec")
    assert cli.run_json(home, "show", "oldrec")["state"] == "stopped"
    assert not processes.is_alive(info.pid, info.pid_start)
    assert not Path(f"/proc/{info.pid}").exists() or processes.start_time(info.pid) != (
        info.pid_start
    )
    assert not run_dir.exists()
