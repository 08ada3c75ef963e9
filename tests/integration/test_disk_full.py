"""A full file system under a backup or a snapshot, on real QEMU and a small loop-mounted
ext4: one clear line and the CapacityExceeded exit code, nothing half made, earlier
backups and the VM untouched, and everything works again once there is space."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cloudlet.host.processes import cmdline as processes_cmdline
from tests.conftest import _kill_leftover_vms
from tests.integration import cli

pytestmark = pytest.mark.integration

MIB = 1 << 20
CAPACITY_EXCEEDED = 5


@contextmanager
def loop_fs(image: Path, size: int, mount_point: Path, home: Path) -> Iterator[Path]:
    """A fresh ext4 of ``size`` on a loop device, mounted at ``mount_point``; afterwards
    the VMs of ``home`` are stopped, and exactly this mount and this device go away."""
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", device, str(mount_point)], check=True)
        try:
            yield mount_point
        finally:
            _kill_leftover_vms(home)  # their open files would keep the mount busy
            unmount(mount_point)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def unmount(mount_point: Path, timeout: float = 30.0) -> None:
    """Unmount once the last file on it is closed: a killed QEMU's files close as the
    kernel finishes tearing it down, a moment after it is reaped."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{mount_point} stays busy: {done.stderr} {holders(mount_point)}")
        time.sleep(0.2)


def holders(mount_point: Path) -> list[str]:
    """Which processes hold a file below ``mount_point`` (for the failure message)."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(f"{mount_point}/"):
            pid = fd.parent.parent.name
            found.append(f"{pid} ({' '.join(processes_cmdline(int(pid))[:3])}): {target}")
    return found


def fill(mount_point: Path, leave: int) -> Path:
    """A filler file that leaves ``leave`` bytes free on the file system."""
    filler = mount_point / "filler"
    filler.unlink(missing_ok=True)
    free = os.statvfs(mount_point).f_bavail * os.statvfs(mount_point).f_frsize
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(free - leave, 1))
    finally:
        os.close(fd)
    return filler


def fill_up(mount_point: Path) -> None:
    """No byte left: the filler leaves 1 MiB (fallocate needs room for its own
    metadata), which a second file then takes 4 KiB at a time until ENOSPC."""
    fill(mount_point, leave=MIB)
    with open(mount_point / "filler-rest", "wb", buffering=0) as rest:
        try:
            while True:
                rest.write(bytes(4096))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def guest(home: Path, vm: str, script: str) -> str:
    return cli.run(home, "exec", vm, "--", "sh", "-c", script).stdout


def refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    """One line, the CapacityExceeded exit code, and what the user must read in it."""
    assert proc.returncode == CAPACITY_EXCEEDED, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_backup_store_full(cloudlet_home: Path, short_tmp: Path) -> None:
    home = cloudlet_home
    with loop_fs(short_tmp / "store.img", 160 * MIB, short_tmp / "mnt", home) as mnt:
        store = mnt / "store"
        (home / "config.toml").write_text(f'[backup]\npath = "{store}"\n')
        cli.run(home, "create", "web1", "--image", "tiny")
        first = cli.run_json(home, "backup", "create", "web1")
        before = files(store)
        assert any(p.startswith("chunks/") for p in before)
        # 40 MiB the store has never seen (random: nothing deduplicates)
        guest(home, "web1", "dd if=/dev/urandom of=/data bs=1M count=40 conv=fsync 2>/dev/null")

        # 1. no room for QEMU's copy of the dirty clusters (the work file in the store)
        filler = fill(mnt, leave=20 * MIB)
        out = cli.run(home, "backup", "create", "web1", check=False)
        refused(out, f"the backup store {store} is full", "earlier backups are untouched", "prune")
        assert files(store) == before  # no work file, no orphan chunk, no manifest

        # 2. the copy fits, its new chunks do not
        fill(mnt, leave=60 * MIB)
        out = cli.run(home, "backup", "create", "web1", check=False)
        refused(out, f"the backup store {store} is full")
        assert files(store) == before

        # 3. a directory pool on the same full file system: a volume is refused in one
        # line naming the pool, and no file is left
        (mnt / "pool").mkdir()
        cli.run(home, "pool", "create", "small", "--path", str(mnt / "pool"))
        fill_up(mnt)
        out = cli.run(home, "volume", "create", "v1", "--size", "64M", "--pool", "small",
                      check=False)  # fmt: skip
        refused(out, "pool small is full", "another pool")
        assert not list((mnt / "pool").iterdir())
        assert cli.run_json(home, "volume", "list") == []

        (backup,) = cli.run_json(home, "backup", "list", "web1")
        assert backup["id"] == first["id"]
        cli.run(home, "backup", "verify", "web1")
        assert cli.run_json(home, "show", "web1")["state"] == "running"
        assert guest(home, "web1", "echo still here").strip() == "still here"

        # space again: the next backup builds on the first one's dirty bitmap
        filler.unlink()
        (mnt / "filler-rest").unlink()
        second = cli.run_json(home, "backup", "create", "web1")
        assert second["kind"] == "incremental", second
        assert 40 * MIB <= second["stored"] < 60 * MIB
        cli.run(home, "backup", "verify", "web1")
        assert not list((store / "tmp").iterdir())
        cli.run(home, "volume", "create", "v1", "--size", "64M", "--pool", "small")
        cli.run(home, "volume", "delete", "v1")
        cli.run(home, "delete", "--force", "web1")


def test_a_guest_writing_through_a_backup_that_runs_out_of_room_keeps_running(
    cloudlet_home: Path, short_tmp: Path
) -> None:
    """A first backup reads the whole disk, so nothing can tell in advance that it will
    not fit. While QEMU copies (slowly: 2 MiB/s), the guest keeps rewriting clusters not
    copied yet; once the store is full, such a write fails inside the copy-before-write
    and QEMU pauses the guest for want of space. The failed backup must resume it."""
    home = cloudlet_home
    with loop_fs(short_tmp / "store.img", 48 * MIB, short_tmp / "mnt", home) as mnt:
        store = mnt / "store"
        (home / "config.toml").write_text(f'[backup]\npath = "{store}"\nspeed = "2M"\n')
        cli.run(home, "create", "web1", "--image", "tiny")
        guest(home, "web1", "dd if=/dev/urandom of=/data bs=1M count=80 conv=fsync 2>/dev/null")
        guest(
            home,
            "web1",
            "(while :; do dd if=/dev/urandom of=/data bs=64k count=1280 conv=notrunc,fsync;"
            " done) >/dev/null 2>&1 &",
        )
        out = cli.run(home, "backup", "create", "web1", check=False)
        refused(out, f"the backup store {store} is full", "earlier backups are untouched")
        assert cli.run_json(home, "show", "web1")["state"] == "running"
        assert guest(home, "web1", "echo still here").strip() == "still here"
        assert cli.run_json(home, "backup", "list", "web1") == []
        assert not list((store / "tmp").iterdir())
        cli.run(home, "delete", "--force", "web1")


def wait_state(home: Path, vm: str, state: str, timeout: float = 180) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, object] = cli.run_json(home, "show", vm)
        if view["state"] == state or time.monotonic() > deadline:
            return view
        time.sleep(0.5)


def qemu_img_check(instance_dir: Path) -> None:
    for layer in instance_dir.rglob("*.qcow2"):
        proc = subprocess.run(
            ["qemu-img", "check", "-f", "qcow2", "--output=json", str(layer)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, (layer, proc.stdout, proc.stderr)
        report = json.loads(proc.stdout)
        assert not report.get("corruptions") and not report.get("leaks"), report


def test_instance_directory_full(cloudlet_home: Path, short_tmp: Path) -> None:
    home = cloudlet_home
    # The VMs' disks, layers and memory states live under instances/; the state
    # database stays beside it (a full database fails every command alike).
    with loop_fs(short_tmp / "pool.img", 256 * MIB, home / "instances", home) as mnt:
        cli.run(home, "create", "web1", "--image", "tiny")
        vm_dir = Path(str(cli.run_json(home, "show", "web1")["paths"]["disk"])).parent
        filler = fill(mnt, leave=16 * MIB)
        before = files(vm_dir)

        # a memory state (100+ MiB) cannot fit: no half snapshot, the guest runs on
        out = cli.run(home, "snapshot", "create", "web1", "m1", "--memory", check=False)
        refused(
            out,
            "snapshot m1 of web1 was not taken",
            "no space left",
            "snapshot the disk only (cloudlet snapshot create web1 m1)",
        )
        assert cli.run_json(home, "snapshot", "list", "web1") == []
        assert files(vm_dir) == before
        assert cli.run_json(home, "show", "web1")["state"] == "running"
        assert guest(home, "web1", "echo still here").strip() == "still here"

        # a disk-only snapshot needs a few hundred KiB: it is taken, the guest runs on
        cli.run(home, "snapshot", "create", "web1", "d1")
        assert [s["name"] for s in cli.run_json(home, "snapshot", "list", "web1")] == ["d1"]

        # the guest writes more than is left: QEMU pauses it (werror=enospc), and
        # cloudlet says so instead of calling it a crash
        data = "/tmp/src"  # tmpfs: the guest's RAM
        guest(home, "web1", f"dd if=/dev/urandom of={data} bs=1M count=32 2>/dev/null")
        want = guest(home, "web1", f"md5sum < {data}").split()[0]
        guest(home, "web1", f"(cp {data} /data; sync) >/dev/null 2>&1 &")
        view = wait_state(home, "web1", "paused")
        assert view["state"] == "paused", view
        assert "no space left" in str(view["last_error"]), view
        assert "paused" in cli.run(home, "list").stdout

        filler.unlink()
        cli.run(home, "resume", "web1")
        assert cli.run_json(home, "show", "web1")["state"] == "running"
        got = guest(home, "web1", "sync; echo 3 > /proc/sys/vm/drop_caches; md5sum < /data")
        assert got.split()[0] == want

        cli.run(home, "stop", "web1")
        qemu_img_check(vm_dir)
        cli.run(home, "delete", "web1")
