"""Runs INSIDE a debian-12 process VM for test_lvm_in_guest.py (stdlib and cloudlet only).

The guest kernel has device-mapper (this host's has not). The script installs the lvm2
userland from the .debs the host shared in (no network in the guest), makes two loop
devices over sparse files on the guest's tmpfs, drives cloudlet's own CLI over them and
prints what it saw as one ``RESULT {json}`` line; the host test makes the assertions.

The CLI runs in this one interpreter (``cloudlet.cli.main.main`` with its argv, as
``python3 -m cloudlet`` runs it): under TCG each new interpreter spends ~30 s importing
cloudlet, which would put the test far over its time budget.

Usage: python3 lvm_guest.py DEBS_DIR
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20
POOL = "big"
VG = "cloudlet-" + POOL
T0 = time.monotonic()


def log(what: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {what}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True) -> str:
    env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def install_debs(debs: Path) -> list[str]:
    """Unpack the packages the image lacks, as dpkg would (directory symlinks kept).

    Maintainer scripts are not run: ``dpkg -i`` of these takes ~75 s under TCG (its
    database and triggers), and lvm2's scripts only enable systemd units and rebuild an
    initramfs, neither of which a process VM uses.
    """
    status = sh("dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n")
    installed = {line.split()[0] for line in status.splitlines() if line.endswith(" installed")}
    added = []
    for deb in sorted(debs.glob("*.deb")):
        package = deb.name.split("_")[0]
        if package in installed:
            continue
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", "/"], stdin=tar.stdout)
        if tar.wait() != 0:
            raise SystemExit(f"cannot unpack {deb.name}")
        added.append(package)
    sh("ldconfig")
    return added


def cli(*args: str) -> tuple[int, str, str]:
    """``cloudlet ARGS`` in this interpreter: exit code, stdout, stderr."""
    from cloudlet.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["cloudlet", *args]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    log(f"cloudlet {' '.join(args)} -> {code} {err.getvalue().strip()[:300]}")
    return code, out.getvalue(), err.getvalue()


def cli_ok(*args: str) -> str:
    code, out, err = cli(*args)
    if code != 0:
        raise SystemExit(f"cloudlet {' '.join(args)} exited {code}: {err.strip()}")
    return out


def lvs() -> list[dict[str, Any]]:
    out = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
             "-o", "lv_name,vg_name,lv_size,data_percent,lv_attr")  # fmt: skip
    return [lv for r in json.loads(out)["report"] for lv in r["lv"]]


def pvs() -> list[dict[str, Any]]:
    out = sh("pvs", "--reportformat", "json", "-o", "pv_name,vg_name")
    return [pv for r in json.loads(out)["report"] for pv in r["pv"]]


def size_of(dev: str) -> int:
    return int(sh("blockdev", "--getsize64", dev))


def write_and_read_back_end(dev: str) -> bool:
    """1 MiB of random data at the device's last MiB, flushed, caches dropped, read back."""
    data = os.urandom(MIB)
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, data, size_of(dev) - MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    sh("blockdev", "--flushbufs", dev)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    fd = os.open(dev, os.O_RDONLY)
    try:
        back = os.pread(fd, MIB, size_of(dev) - MIB)
    finally:
        os.close(fd)
    return hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


def main() -> None:
    facts: dict[str, Any] = {"python": list(sys.version_info[:2])}
    facts["installed"] = install_debs(Path(sys.argv[1]))
    log(f"installed {facts['installed']}")
    # Only loop (for losetup): cloudlet itself must load dm-mod and dm-thin-pool.
    sh("modprobe", "loop")
    facts["dm_loaded_before"] = "device-mapper" in Path("/proc/misc").read_text()
    facts["udevd"] = Path("/run/udev/control").exists()

    devices = []
    for i, size in enumerate((64, 48)):
        backing = Path(f"/tmp/pv{i}.img")
        with backing.open("wb") as f:
            f.truncate(size * MIB)
        devices.append(sh("losetup", "--find", "--show", str(backing)).strip())
    facts["devices"] = {dev: size_of(dev) for dev in devices}
    os.environ["CLOUDLET_HOME"] = "/tmp/cloudlet-home"  # tmpfs: the root disk is throw-away

    cli_ok("pool", "create", POOL, "--lvm", *devices)
    facts["pool_list"] = json.loads(cli_ok("pool", "list", "-o", "json"))
    facts["pvs_created"] = pvs()
    facts["dm_targets"] = sh("dmsetup", "targets").split()[::2]

    cli_ok("volume", "create", "data1", "--size", "96M", "--pool", POOL)
    facts["volume_list"] = json.loads(cli_ok("volume", "list", "-o", "json"))
    facts["lvs_created"] = lvs()
    lv_path = f"/dev/{VG}/vol-data1"
    facts["lv_size"] = size_of(lv_path)
    facts["end_reads_back"] = write_and_read_back_end(lv_path)
    facts["lvs_written"] = lvs()
    facts["pool_list_written"] = json.loads(cli_ok("pool", "list", "-o", "json"))
    facts["volume_list_written"] = json.loads(cli_ok("volume", "list", "-o", "json"))

    code, _, err = cli("pool", "delete", POOL)
    facts["delete_held"] = [code, err]

    cli_ok("volume", "resize", "data1", "112M")
    facts["lvs_resized"] = lvs()
    facts["lv_size_resized"] = size_of(lv_path)
    facts["end_reads_back_resized"] = write_and_read_back_end(lv_path)

    cli_ok("volume", "delete", "data1")
    cli_ok("pool", "delete", POOL)
    facts["pool_list_after"] = json.loads(cli_ok("pool", "list", "-o", "json"))
    facts["lvs_after"] = lvs()
    facts["pvs_after"] = pvs()
    facts["vgs_after"] = sh("vgs", "--noheadings", "-o", "vg_name").split()
    facts["blkid_after"] = {dev: sh("blkid", "-p", dev, check=False).strip() for dev in devices}
    facts["devices_after"] = {dev: size_of(dev) for dev in devices}
    facts["lv_node_after"] = os.path.exists(lv_path)
    for dev in devices:
        sh("losetup", "-d", dev)
    print("RESULT " + json.dumps(facts), flush=True)
    log("done")


if __name__ == "__main__":
    main()
