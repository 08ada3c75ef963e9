"""Volumes, snapshots and clones on real QEMU (TCG here), driven through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cloudlet.driver.qemu.runtime import read_record
from cloudlet.host import processes
from cloudlet.host.qemu_binaries import qemu_img
from tests.integration import cli

pytestmark = pytest.mark.integration

MIB = 1 << 20


def guest(home: Path, vm: str, script: str, *, check: bool = True) -> str:
    """Run a shell script in the guest through its agent; its stdout."""
    return cli.run(home, "exec", vm, "--", "sh", "-c", script, check=check).stdout


def eventually(probe: object, expected: str, timeout: float = 60.0) -> None:
    """Hot-plug reaches the guest asynchronously: poll until it shows ``expected``."""
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected!r}, the guest still shows {value!r}")
        time.sleep(0.5)


def vdb_sectors(home: Path, vm: str) -> str:
    return guest(home, vm, "cat /sys/block/vdb/size 2>/dev/null || echo absent").strip()


def qcow2_check(path: Path) -> dict[str, object]:
    proc = subprocess.run(
        [qemu_img(), "check", "-f", "qcow2", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 3), proc.stderr  # 3: leaked clusters only, no corruption
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_volume_hotplug_grow_detach_boot_attach_and_kill9(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "web1")
    cli.run(home, "volume", "create", "data1", "--size", "64M")
    (pool,) = cli.run_json(home, "pool", "list")
    assert pool["name"] == "default" and pool["path"] == str(home / "pools" / "default")
    assert pool["committed"] == 64 * MIB and pool["fs_total"] > 0

    # hot-plug into the running guest, grow it online, unplug it
    cli.run(home, "volume", "attach", "data1", "web1")
    eventually(lambda: vdb_sectors(home, "web1"), str(64 * MIB // 512))
    assert guest(home, "web1", "cat /sys/block/vdb/serial").strip() == "data1"
    cli.run(home, "volume", "resize", "data1", "96M")
    eventually(lambda: vdb_sectors(home, "web1"), str(96 * MIB // 512))
    shrink = cli.run(home, "volume", "resize", "data1", "32M", check=False)
    assert shrink.returncode == 2 and "shrinking" in shrink.stderr
    refused = cli.run(home, "volume", "delete", "data1", check=False)
    assert refused.returncode == 4 and "detach it first" in refused.stderr
    cli.run(home, "volume", "detach", "data1")
    eventually(lambda: vdb_sectors(home, "web1"), "absent")
    assert cli.run_json(home, "volume", "list")[0]["attached_to"] is None

    # attached while stopped: the next boot has it
    cli.run(home, "stop", "web1")
    cli.run(home, "volume", "attach", "data1", "web1")
    cli.run(home, "start", "web1")
    assert vdb_sectors(home, "web1") == str(96 * MIB // 512)

    # QEMU killed -9 in the middle of writes to the volume and the root disk
    volume_file = Path(cli.run_json(home, "volume", "list")[0]["path"])
    blocks_before = volume_file.stat().st_blocks
    guest(
        home,
        "web1",
        "(dd if=/dev/urandom of=/dev/vdb bs=64k count=1200 conv=fsync;"
        " dd if=/dev/urandom of=/root/big bs=64k count=800 conv=fsync) >/dev/null 2>&1 &",
    )
    # the kill lands once the guest's writes reach the volume on the host, not after a guess
    deadline = time.monotonic() + 120
    while volume_file.stat().st_blocks < blocks_before + MIB // 512:
        assert time.monotonic() < deadline, "the guest's writes never reached the volume"
        time.sleep(0.05)
    vm = cli.run_json(home, "show", "web1")
    info = read_record(home / "run" / vm["id"])
    assert info is not None
    os.kill(info.pid, signal.SIGKILL)
    processes.wait_gone(info.pid, 10.0)
    assert cli.run_json(home, "show", "web1")["state"] == "crashed"
    volume = cli.run_json(home, "volume", "list")[0]
    for path in (Path(volume["path"]), Path(vm["paths"]["disk"])):
        result = qcow2_check(path)
        assert result.get("corruptions", 0) == 0 and result.get("check-errors", 0) == 0, result
    refused = cli.run(home, "volume", "delete", "data1", check=False)
    assert refused.returncode == 4 and "attached to web1" in refused.stderr


CLONES: dict[str, tuple[str, ...]] = {"copy": (), "linked": ("--linked",)}


def test_snapshots_revert_merge_and_clones(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "web1")
    guest(home, "web1", "echo precious > /root/keep && sync")
    first = cli.run_json(home, "snapshot", "create", "web1", "s1")
    assert first["live"] and first["frozen"]  # tiny's agent froze its ext4 root
    guest(home, "web1", "echo second > /root/second && sync")
    cli.run(home, "snapshot", "create", "web1", "s2")
    chain = cli.run_json(home, "snapshot", "list", "web1")
    assert [(s["name"], s["parent"]) for s in chain] == [("s1", None), ("s2", "s1")]

    # deleting the oldest snapshot while running merges its layer: the data stays, and
    # QEMU lets go of the merged file (its space comes back now, not at the next boot)
    cli.run(home, "snapshot", "delete", "web1", "s1")
    assert [s["name"] for s in cli.run_json(home, "snapshot", "list", "web1")] == ["s2"]
    info = read_record(home / "run" / cli.run_json(home, "show", "web1")["id"])
    assert info is not None
    held = [os.readlink(fd) for fd in Path(f"/proc/{info.pid}/fd").iterdir()]
    assert not [p for p in held if p.endswith(" (deleted)")], held
    reread = "echo 3 > /proc/sys/vm/drop_caches; cat /root/keep /root/second"
    assert guest(home, "web1", reread) == "precious\nsecond\n"

    # revert brings back a deleted file
    guest(home, "web1", "rm /root/keep && sync")
    running = cli.run(home, "snapshot", "revert", "web1", "s2", check=False)
    assert running.returncode == 4 and "--force" in running.stderr
    cli.run(home, "snapshot", "revert", "web1", "s2", "--force")
    unknown = cli.run(home, "snapshot", "revert", "web1", "nope", check=False)
    assert unknown.returncode == 3 and "no snapshot 'nope'" in unknown.stderr
    vm = cli.run_json(home, "show", "web1")
    layers = sorted((home / "instances" / vm["id"] / "layers").iterdir())
    for layer in layers:
        result = qcow2_check(layer)
        assert result.get("corruptions", 0) == 0, result

    # a full clone of the stopped VM and a linked clone of its snapshot both boot with the data
    ids = {cli.run_json(home, "clone", "web1", n, *flags)["id"] for n, flags in CLONES.items()}
    assert len(ids) == 2 and vm["id"] not in ids
    blocked = cli.run(home, "snapshot", "delete", "web1", "s2", check=False)
    assert blocked.returncode == 4 and "linked clone" in blocked.stderr
    for name in ("copy", "linked"):
        cli.run(home, "start", name)
        assert guest(home, name, "cat /root/keep; hostname") == f"precious\n{name}\n"
        cli.run(home, "stop", name, "--force")
    cli.run(home, "delete", "linked")
    cli.run(home, "snapshot", "delete", "web1", "s2")  # offline: qemu-img rebase
    cli.run(home, "start", "web1")
    assert guest(home, "web1", "cat /root/keep /root/second") == "precious\nsecond\n"
