"""An LVM pool over two loop devices the test makes, on real LVM and QEMU via the CLI.

Only the loop devices created here are ever touched; they are detached, their files
removed and the volume group removed even when the test fails.

On a kernel without device-mapper (this build host and CI) only the refusals run here;
test_lvm_in_guest.py runs the real LVM path inside a guest whose kernel has it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.storage import lvm
from tests.integration import cli

pytestmark = pytest.mark.integration

MIB = 1 << 20
POOL = "lvmt"
VG = lvm.vg_name(POOL)


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture
def loops(short_tmp: Path) -> Iterator[list[str]]:
    """Two 96 MiB loop devices over sparse files; always cleaned up."""
    devices: list[str] = []
    files = [short_tmp / f"pv{i}.img" for i in range(2)]
    try:
        for f in files:
            with f.open("wb") as fh:
                fh.truncate(96 * MIB)
            devices.append(_sh("losetup", "--find", "--show", str(f)).stdout.strip())
        yield devices
    finally:
        if _sh("vgs", VG, check=False).returncode == 0:
            _sh("vgremove", "--yes", "--force", VG, check=False)
        for dev in devices:
            if "LVM2_member" in _sh("blkid", "-p", dev, check=False).stdout:
                _sh("pvremove", "--yes", "--force", dev, check=False)
            _sh("losetup", "-d", dev, check=False)
        for f in files:
            f.unlink(missing_ok=True)


def _guest(home: Path, vm: str, script: str) -> str:
    return cli.run(home, "exec", vm, "--", "sh", "-c", script).stdout


def _eventually(probe: object, expected: str, timeout: float = 30.0) -> None:
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while (value := probe()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected!r}, the guest shows {value!r}")
        time.sleep(0.5)


def test_lvm_pool_volume_larger_than_either_device(cloudlet_home: Path, loops: list[str]) -> None:
    home = cloudlet_home
    if not lvm.device_mapper_available():
        # The refusals still run on the real tools, and nothing is changed by them.
        _sh("pvcreate", "--yes", loops[0])
        used = cli.run(home, "pool", "create", POOL, "--lvm", *loops, check=False)
        assert used.returncode != 0
        assert f"{loops[0]} is already an LVM physical volume" in used.stderr
        _sh("pvremove", "--yes", loops[0])
        no_dm = cli.run(home, "pool", "create", POOL, "--lvm", *loops, check=False)
        assert no_dm.returncode == 2 and "no device-mapper" in no_dm.stderr
        for dev in loops:
            assert "LVM2_member" not in _sh("blkid", "-p", dev, check=False).stdout
        # This kernel cannot activate LVs: the refusals above are what a user gets here.
        return

    refused = cli.run(home, "pool", "create", POOL, "--lvm", loops[0], "/dev/null", check=False)
    assert refused.returncode == 2 and "/dev/null is not a block device" in refused.stderr
    cli.run(home, "pool", "create", POOL, "--lvm", *loops)
    (pool,) = [p for p in cli.run_json(home, "pool", "list") if p["name"] == POOL]
    assert pool["kind"] == "lvm" and 96 * MIB < pool["fs_total"] < 192 * MIB

    cli.run(home, "volume", "create", "big1", "--size", "150M", "--pool", POOL)
    (vol,) = cli.run_json(home, "volume", "list")
    assert vol["path"] == f"/dev/{VG}/vol-big1" and vol["size"] >= 150 * MIB
    size = vol["size"]

    cli.run(home, "create", "web1")
    try:
        cli.run(home, "volume", "attach", "big1", "web1")
        sectors = "cat /sys/block/vdb/size 2>/dev/null || echo absent"
        _eventually(lambda: _guest(home, "web1", sectors).strip(), str(size // 512))
        last = size // MIB - 1  # the last MiB lies beyond either device
        out = _guest(
            home,
            "web1",
            f"dd if=/dev/urandom of=/dev/vdb bs=1M count=1 seek={last} conv=fsync 2>&1"
            f" && dd if=/dev/vdb bs=1M skip={last} count=1 2>/dev/null | wc -c",
        )
        assert out.strip().endswith(str(MIB)), out
        cli.run(home, "volume", "detach", "big1")
        _eventually(lambda: _guest(home, "web1", sectors).strip(), "absent")
    finally:
        cli.run(home, "delete", "--force", "web1", check=False)

    held = cli.run(home, "pool", "delete", POOL, check=False)
    assert held.returncode == 4 and "still holds volumes" in held.stderr
    cli.run(home, "volume", "delete", "big1")
    cli.run(home, "pool", "delete", POOL)
    assert _sh("vgs", VG, check=False).returncode != 0
    report = json.loads(_sh("lvs", "--reportformat", "json", "-o", "lv_name,vg_name").stdout)
    assert not any(lv.get("vg_name") == VG for r in report["report"] for lv in r["lv"])
    for dev in loops:
        assert "LVM2_member" not in _sh("blkid", "-p", dev, check=False).stdout
