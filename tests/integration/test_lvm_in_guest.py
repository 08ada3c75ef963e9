"""The real LVM path, inside a debian-12 guest whose kernel has device-mapper.

This host's kernel (and CI's) has no device-mapper, so test_lvm_pool.py can only check
the refusals here. This test runs cloudlet's own CLI inside a process VM instead: the
lvm2 userland comes in as .debs fetched on the host with apt (cached, checked against
apt's SHA256) and shared read-only, together with cloudlet's source and this venv's
site-packages; the guest has no network. Loop devices exist only inside the guest.
"""

from __future__ import annotations

import compileall
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

import cloudlet
from cloudlet.images.tiny.debs import Apt, depends_closure
from tests.integration import cli

pytestmark = pytest.mark.integration

MIB = 1 << 20
VG = "cloudlet-big"
ROOTS = ["lvm2", "thin-provisioning-tools"]
GUEST_SCRIPT = Path(__file__).with_name("lvm_guest.py")


def fetch_lvm_debs(cache: Path, dest: Path) -> list[str]:
    """lvm2, thin-provisioning-tools and their dependencies, as the host's apt resolves
    them (the image's own release), into ``dest``; downloads are cached in ``cache``."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    apt = Apt(arch.stdout.strip())  # the guest runs this host's architecture
    names = depends_closure(apt.depends_graph(ROOTS), ROOTS)
    dest.mkdir()
    for path in apt.fetch(apt.resolve(names), cache).values():
        shutil.copy(path, dest / path.name)
    return names


def stage_source(dest: Path) -> Path:
    """cloudlet's source, byte-compiled (the guest's share is read-only and compiling
    it there under TCG costs seconds), plus the guest script."""
    src = Path(cloudlet.__file__).parent
    shutil.copytree(src, dest / "cloudlet", ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(dest / "cloudlet", quiet=1)
    shutil.copy(GUEST_SCRIPT, dest / GUEST_SCRIPT.name)
    return dest


def run_in_guest(home: Path, stage: Path, site: str) -> dict[str, Any]:
    argv = cli.argv(
        "run", "--cpus", "2", "--memory", "1G", "--timeout", "8m",
        "--share", f"{stage}:/cl:ro", "--share", f"{site}:/cl-site:ro",
        "debian-12", "--",
        "env", "PYTHONPATH=/cl:/cl-site", "PYTHONDONTWRITEBYTECODE=1",
        "python3", f"/cl/{GUEST_SCRIPT.name}", "/cl/debs",
    )  # fmt: skip
    proc = subprocess.run(
        argv, env=cli.env_for(home), capture_output=True, text=True, timeout=600,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, (
        f"guest run exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    print(proc.stderr)  # the guest's timed log of each step (shown when the test fails)
    facts: dict[str, Any] = json.loads(results[-1].removeprefix("RESULT "))
    print(json.dumps(facts, indent=1))
    return facts


def by_name(rows: list[dict[str, Any]], key: str = "lv_name") -> dict[str, dict[str, Any]]:
    return {str(r[key]): r for r in rows}


def test_lvm_pool_over_two_loop_devices_in_a_guest(cloudlet_home: Path, short_tmp: Path) -> None:
    started = time.monotonic()
    stage = stage_source(short_tmp / "cl")
    packages = fetch_lvm_debs(cloudlet_home / "cache" / "debs", stage / "debs")
    site = sysconfig.get_paths()["purelib"]
    assert sysconfig.get_paths()["platlib"] == site  # compiled wheels are in the share too

    facts = run_in_guest(cloudlet_home, stage, site)
    print(f"guest run done after {time.monotonic() - started:.0f}s")

    # The venv's cp311 wheels suit the guest's python3.
    assert facts["python"] == list(sys.version_info[:2])
    assert "lvm2" in facts["installed"] and set(facts["installed"]) <= set(packages)
    # cloudlet loaded dm-mod and dm-thin-pool itself, and worked without udev.
    assert facts["dm_loaded_before"] is False
    assert {"thin-pool", "thin"} <= set(facts["dm_targets"])
    assert facts["udevd"] is False

    (small, large) = sorted(facts["devices"].values())
    assert (small, large) == (48 * MIB, 64 * MIB)

    # The pool: one VG over both devices, its thin pool larger than either device.
    pools = by_name(facts["pool_list"], "name")
    assert pools["big"]["kind"] == "lvm" and pools["big"]["path"] == f"/dev/{VG}"
    assert large < pools["big"]["fs_total"] < small + large
    assert sorted(pv["pv_name"] for pv in facts["pvs_created"] if pv["vg_name"] == VG) == sorted(
        facts["devices"]
    )

    # The volume: a thin LV of 96 MiB, larger than either device, usable to its end.
    (vol,) = facts["volume_list"]
    assert vol["name"] == "data1" and vol["path"] == f"/dev/{VG}/vol-data1"
    lv = by_name([r for r in facts["lvs_created"] if r["vg_name"] == VG])["vol-data1"]
    assert int(lv["lv_size"]) == 96 * MIB and lv["lv_attr"].startswith("V")  # thin
    assert facts["lv_size"] == 96 * MIB > large
    assert facts["end_reads_back"] is True
    before = float(by_name(facts["lvs_created"])["thinpool"]["data_percent"])
    after = float(by_name(facts["lvs_written"])["thinpool"]["data_percent"])
    assert after > before  # the write landed in the thin pool
    # ... and cloudlet reports it: the pool's free space and the volume's allocation.
    written = by_name(facts["pool_list_written"], "name")["big"]
    assert written["fs_free"] < pools["big"]["fs_free"] and written["volumes"] == 1
    assert written["committed"] == 96 * MIB
    (vol,) = facts["volume_list_written"]
    assert MIB // 2 < vol["allocated"] < 2 * MIB  # lvs gives 2 decimals of a percent

    code, err = facts["delete_held"]
    assert code == 4 and "still holds volumes" in err

    lv = by_name(facts["lvs_resized"])["vol-data1"]
    assert int(lv["lv_size"]) == 112 * MIB == facts["lv_size_resized"]
    assert facts["end_reads_back_resized"] is True

    # Deleting the volume and the pool leaves no LV, VG or PV label; the devices stay.
    assert [p["name"] for p in facts["pool_list_after"]] == ["default"]
    assert facts["lvs_after"] == [] and facts["pvs_after"] == [] and facts["vgs_after"] == []
    assert all("LVM2_member" not in probe for probe in facts["blkid_after"].values())
    assert facts["devices_after"] == facts["devices"]
    assert facts["lv_node_after"] is False

    # Nothing is left on the host: no VM, and no loop device over this test's files.
    assert cli.run_json(cloudlet_home, "list", "--all") == []
    loops = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(short_tmp) not in loops and "pv0.img" not in loops
