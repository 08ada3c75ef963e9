"""QEMU as a per-VM unprivileged user, and state files no other user can read.

Two real tiny VMs (TCG) share one state directory for the whole module: their QEMUs
run under different non-zero uids, one uid cannot open the other's disk, the files
that flows touch (volume hot-plug, live and memory snapshots, backups) keep working,
and nothing in the state directory is readable by other users.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_vms(shared_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="cl-", dir="/tmp"))
    base.chmod(0o711)
    home = base / "h"
    (home / "images").mkdir(parents=True)
    (home / "images" / "tiny").symlink_to(shared_state / "images" / "tiny")
    (home / "cache").symlink_to(shared_state / "cache")
    (home / "host").mkdir()
    shutil.copy(shared_state / "host" / "accel.json", home / "host" / "accel.json")
    try:
        cli.run(home, "create", "ua")
        cli.run(home, "create", "ub")
        yield home
    finally:
        for vm in ("ua", "ub"):
            cli.run(home, "delete", "--force", vm, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _vm(home: Path, name: str) -> dict[str, object]:
    view = cli.run_json(home, "show", name)
    assert isinstance(view, dict)
    return view


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            real, effective, saved, fs = (int(x) for x in line.split()[1:])
            assert real == effective == saved == fs
            return real
    raise AssertionError("no Uid line")


def _disk(home: Path, name: str) -> Path:
    paths = _vm(home, name)["paths"]
    assert isinstance(paths, dict)
    return Path(str(paths["disk"]))


def test_each_qemu_runs_as_its_own_non_root_uid(two_vms: Path) -> None:
    uids = [_uid(int(str(_vm(two_vms, vm)["pid"]))) for vm in ("ua", "ub")]
    assert 0 not in uids
    assert uids[0] != uids[1]
    host = cli.run_json(two_vms, "host")
    assert "uid per VM" in host["qemu_user"]
    argv = Path(f"/proc/{_vm(two_vms, 'ua')['pid']}/cmdline").read_bytes().split(b"\0")
    assert any(b"elevateprivileges=deny" in a for a in argv)


def _read_as(uid: int, path: Path) -> subprocess.CompletedProcess[bytes]:
    """Open ``path`` as ``uid`` (with its private gid and the QEMU group), as QEMU would."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--groups=1900000000",
         "head", "-c", "1", str(path)],
        capture_output=True,
        check=False,
    )  # fmt: skip


def test_one_vms_uid_cannot_read_another_vms_disk(two_vms: Path) -> None:
    uid_a = _uid(int(str(_vm(two_vms, "ua")["pid"])))
    uid_b = _uid(int(str(_vm(two_vms, "ub")["pid"])))
    own = _read_as(uid_a, _disk(two_vms, "ua"))
    assert own.returncode == 0, own.stderr  # the check can tell a refusal from a failure
    other = _read_as(uid_a, _disk(two_vms, "ub"))
    assert other.returncode != 0
    assert b"Permission denied" in other.stderr
    assert _read_as(uid_b, _disk(two_vms, "ua")).returncode != 0
    assert _read_as(uid_a, two_vms / "cloudlet.db").returncode != 0
    b_paths = _vm(two_vms, "ub")["paths"]
    assert isinstance(b_paths, dict)
    run_b = Path(str(b_paths["runtime"]))
    for secret in (Path(str(b_paths["serial_log"])), run_b / "runtime.json"):
        assert _read_as(uid_a, secret).returncode != 0, secret
    planted = subprocess.run(
        ["setpriv", f"--reuid={uid_a}", f"--regid={uid_a}", "--groups=1900000000",
         "ln", "-s", "/etc/shadow", str(run_b / "x")],
        capture_output=True,
        check=False,
    )  # fmt: skip
    assert planted.returncode != 0 and not (run_b / "x").exists()


def test_volume_hotplug_is_given_then_taken_back(two_vms: Path) -> None:
    uid_a = _uid(int(str(_vm(two_vms, "ua")["pid"])))
    cli.run(two_vms, "volume", "create", "uv", "--size", "32M")
    cli.run(two_vms, "volume", "attach", "uv", "ua")
    volume = next((two_vms / "pools").rglob("uv.qcow2"))
    assert volume.stat().st_uid == uid_a
    written = cli.run(two_vms, "exec", "ua", "--", "sh", "-c", "echo hi > /dev/vdb && echo ok")
    assert written.stdout.strip() == "ok"
    cli.run(two_vms, "volume", "detach", "uv")
    assert volume.stat().st_uid == 0
    assert stat.S_IMODE(volume.stat().st_mode) == 0o600


def test_live_and_memory_snapshots_and_a_backup_work(two_vms: Path) -> None:
    uid_b = _uid(int(str(_vm(two_vms, "ub")["pid"])))
    cli.run(two_vms, "snapshot", "create", "ub", "live1")
    assert _disk(two_vms, "ub").stat().st_uid == uid_b  # QEMU made the new layer
    cli.run(two_vms, "snapshot", "create", "ub", "mem1", "--memory")
    cli.run(two_vms, "backup", "create", "ub")
    chunks = [p for p in (two_vms / "backups").rglob("*") if p.is_file()]
    assert chunks
    assert all(p.stat().st_uid == 0 for p in chunks)
    cli.run(two_vms, "stop", "ub", "--force")
    cli.run(two_vms, "snapshot", "revert", "ub", "mem1")
    cli.run(two_vms, "start", "ub")
    assert _vm(two_vms, "ub")["state"] == "running"
    assert _uid(int(str(_vm(two_vms, "ub")["pid"]))) == uid_b


def test_nothing_in_the_state_directory_is_for_other_users(two_vms: Path) -> None:
    cli.run(two_vms, "backup", "create", "ua")
    assert not stat.S_IMODE(two_vms.stat().st_mode) & 0o007
    exposed = []
    for root, dirs, files in os.walk(two_vms):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink() or stat.S_ISSOCK(path.lstat().st_mode):
                continue
            if path.lstat().st_mode & (stat.S_IROTH | stat.S_IWOTH):
                exposed.append(path)
    assert exposed == []
    serial = Path(str(_vm(two_vms, "ua")["paths"]["serial_log"]))  # type: ignore[index]
    assert serial.exists()
    assert not serial.stat().st_mode & 0o077


def test_a_host_that_opts_out_keeps_qemu_root_and_says_so(two_vms: Path) -> None:
    env = {**cli.env_for(two_vms), "CLOUDLET_QEMU_USER": "root"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli.argv(*args), env=env, capture_output=True, text=True, timeout=300, check=False
        )

    host = run("host", "-o", "json")
    assert host.returncode == 0, host.stderr
    assert "QEMU runs as root: CLOUDLET_QEMU_USER=root is set" in host.stdout
    created = run("create", "uc")
    try:
        assert created.returncode == 0, created.stderr
        assert "QEMU runs as root: CLOUDLET_QEMU_USER=root is set" in created.stderr
        assert _uid(int(str(_vm(two_vms, "uc")["pid"]))) == 0
    finally:
        cli.run(two_vms, "delete", "--force", "uc", check=False)
