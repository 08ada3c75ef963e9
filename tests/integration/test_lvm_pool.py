"""The refusals of an LVM pool on this host's kernel, on real LVM tools via the CLI.

The real LVM path (a pool over two devices, a thin volume larger than either, written
to its end, resized, refused deletion while it holds volumes, then removed with no
label left) needs device-mapper, which this build host and CI lack: it runs in
test_lvm_in_guest.py, inside a debian-12 guest whose kernel has it, on every host.

Only the loop devices created here are ever touched; they are detached, their files
removed and any volume group removed even when the test fails.
"""

from __future__ import annotations

import subprocess
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


def _labels(devices: list[str]) -> list[str]:
    return [d for d in devices if "LVM2_member" in _sh("blkid", "-p", d, check=False).stdout]


def test_lvm_pool_refusals_change_nothing(cloudlet_home: Path, loops: list[str]) -> None:
    home = cloudlet_home
    refused = cli.run(home, "pool", "create", POOL, "--lvm", loops[0], "/dev/null", check=False)
    assert refused.returncode == 2 and "/dev/null is not a block device" in refused.stderr
    _sh("pvcreate", "--yes", loops[0])
    used = cli.run(home, "pool", "create", POOL, "--lvm", *loops, check=False)
    assert used.returncode == 4, used.stderr
    assert f"{loops[0]} is already an LVM physical volume" in used.stderr
    assert _labels(loops) == [loops[0]]  # the refusal wrote nothing to the other device
    _sh("pvremove", "--yes", loops[0])
    assert [p["name"] for p in cli.run_json(home, "pool", "list")] == ["default"]

    # Two clean devices: the kernel decides. Both outcomes are asserted in full.
    made = cli.run(home, "pool", "create", POOL, "--lvm", *loops, check=False)
    if lvm.device_mapper_available():
        assert made.returncode == 0, made.stderr
        (pool,) = [p for p in cli.run_json(home, "pool", "list") if p["name"] == POOL]
        assert pool["kind"] == "lvm" and 96 * MIB < pool["fs_total"] < 192 * MIB
        cli.run(home, "pool", "delete", POOL)
        assert _sh("vgs", VG, check=False).returncode != 0
    else:
        assert made.returncode == 2 and "no device-mapper" in made.stderr, made.stderr
        assert [p["name"] for p in cli.run_json(home, "pool", "list")] == ["default"]
    assert _labels(loops) == []
