"""Backups, restores and export/import on real QEMU (TCG here), through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cloudlet.config import Settings
from cloudlet.driver.qemu.runtime import read_record
from cloudlet.engine.factory import open_engine
from cloudlet.errors import Cancelled
from cloudlet.host import processes
from cloudlet.host.qemu_binaries import qemu_img
from cloudlet.progress import CancelToken, ProgressEvent
from tests.integration import cli

pytestmark = pytest.mark.integration

MIB = 1 << 20


def guest(home: Path, vm: str, script: str) -> str:
    return cli.run(home, "exec", vm, "--", "sh", "-c", script).stdout


def disk_of(home: Path, vm: str) -> Path:
    return Path(cli.run_json(home, "show", vm)["paths"]["disk"])


def copy_paused(home: Path, vm: str, dest: Path) -> dict[str, object]:
    """Pause the guest, copy its disk with qemu-img, back it up, resume: the copy and
    the backup hold the same point in time."""
    cli.run(home, "pause", vm)
    try:
        subprocess.run(
            [qemu_img(), "convert", "-U", "-f", "qcow2", "-O", "qcow2", str(disk_of(home, vm)),
             str(dest)],
            check=True,
        )  # fmt: skip
        backup: dict[str, object] = cli.run_json(home, "backup", "create", vm)
    finally:
        cli.run(home, "resume", vm)
    return backup


def same_disk(a: Path, b: Path) -> None:
    proc = subprocess.run(
        [qemu_img(), "compare", "-f", "qcow2", "-F", "qcow2", str(a), str(b)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _allocated(directory: Path) -> int:
    """Bytes the files under ``directory`` take (files may vanish while we look)."""
    total = 0
    for path in directory.rglob("*"):
        try:
            total += path.stat().st_blocks * 512 if path.is_file() else 0
        except FileNotFoundError:
            continue
    return total


def test_incremental_backups_restore_as_new_vms_and_export_import(
    cloudlet_home: Path, short_tmp: Path
) -> None:
    home = cloudlet_home
    cli.run(home, "create", "web1")
    write = "dd if=/dev/urandom of=/root/data bs=1M count=80 2>/dev/null && sync"
    checksum = "sha256sum /root/data | cut -d' ' -f1"
    guest(home, "web1", write)
    sum1 = guest(home, "web1", checksum)
    full = copy_paused(home, "web1", short_tmp / "at1.qcow2")
    assert full["kind"] == "full" and int(full["stored"]) >= 80 * MIB  # type: ignore[call-overload]

    # change about 1% of the 256 MiB disk
    guest(home, "web1", "dd if=/dev/urandom of=/root/data bs=1M count=2 seek=7 conv=notrunc "
                        "2>/dev/null && sync")  # fmt: skip
    sum2 = guest(home, "web1", checksum)
    assert sum2 != sum1
    inc = copy_paused(home, "web1", short_tmp / "at2.qcow2")
    assert inc["kind"] == "incremental" and inc["note"] == ""
    assert int(inc["read"]) < 16 * MIB  # type: ignore[call-overload]
    assert int(inc["stored"]) * 4 < int(full["stored"])  # type: ignore[call-overload]
    listed = cli.run_json(home, "backup", "list", "web1")
    assert [b["id"] for b in listed] == [inc["id"], full["id"]]
    cli.run(home, "backup", "verify", "web1")

    # in place over a running VM: refused without --force
    refused = cli.run(home, "restore", "web1", "--latest", check=False)
    assert refused.returncode == 4 and "--force" in refused.stderr

    # each backup as a new VM: the same disk as the copy taken with it, the same file
    for backup, copy, expected, name in (
        (full, "at1.qcow2", sum1, "r1"),
        (inc, "at2.qcow2", sum2, "r2"),
    ):
        cli.run(home, "restore", "web1", "--backup", str(backup["id"]), "--as", name)
        same_disk(disk_of(home, name), short_tmp / copy)
        cli.run(home, "start", name)
        assert guest(home, name, checksum) == expected
        cli.run(home, "stop", name)

    # export the stopped r2, import it under a new name: the same disk
    cli.run(home, "export", "r2", str(short_tmp / "r2.cloudlet"))
    cli.run(home, "import", str(short_tmp / "r2.cloudlet"), "--name", "r2-copy")
    same_disk(disk_of(home, "r2-copy"), disk_of(home, "r2"))
    assert cli.run_json(home, "show", "r2-copy")["state"] == "stopped"


def test_qemu_killed_during_a_backup(cloudlet_home: Path) -> None:
    home = cloudlet_home
    cli.run(home, "create", "web1")
    guest(home, "web1", "dd if=/dev/urandom of=/root/data bs=1M count=24 2>/dev/null && sync")
    first = cli.run_json(home, "backup", "create", "web1")
    guest(home, "web1", "dd if=/dev/urandom of=/root/data bs=1M count=32 2>/dev/null && sync")

    # a slow (rate-limited) backup, and QEMU killed -9 while it copies
    env = {**cli.env_for(home), "CLOUDLET_BACKUP_SPEED": "1M"}
    proc = subprocess.Popen(
        cli.argv("backup", "create", "web1"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tmp = home / "backups" / "tmp"
    deadline = time.monotonic() + 60
    while not (tmp.exists() and any(tmp.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "the backup never started"
        time.sleep(0.1)
    # the kill lands while data is being copied: the work files grow
    copied = _allocated(tmp)
    while _allocated(tmp) <= copied:
        assert proc.poll() is None and time.monotonic() < deadline, "the copy never ran"
        time.sleep(0.05)
    vm = cli.run_json(home, "show", "web1")
    info = read_record(home / "run" / vm["id"])
    assert info is not None
    os.kill(info.pid, signal.SIGKILL)
    processes.wait_gone(info.pid, 10.0)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0, stderr
    assert [b["id"] for b in cli.run_json(home, "backup", "list", "web1")] == [first["id"]]

    # the next backup (after a restart) recovers: work files gone, whole disk read, said why
    cli.run(home, "start", "web1")
    again = cli.run_json(home, "backup", "create", "web1")
    assert again["kind"] == "full" and "read the whole disk" in again["note"]
    assert again["consistency"] == "file systems frozen"  # tiny's agent froze, then thawed
    assert not any(tmp.iterdir())
    cli.run(home, "backup", "verify", "web1")
    checksum = "sha256sum /root/data | cut -d' ' -f1"
    kept = guest(home, "web1", checksum)
    nxt = cli.run_json(home, "backup", "create", "web1")
    assert nxt["kind"] == "incremental"

    # in place, with --force: the VM is stopped, its disk replaced, the data as backed up
    guest(home, "web1", "rm /root/data && sync")
    message = cli.run(home, "restore", "web1", "--latest", "--force").stderr
    assert f"restored from backup {nxt['id']}" in message
    cli.run(home, "start", "web1")
    assert guest(home, "web1", checksum) == kept


def test_backups_cover_a_hot_plugged_volume(
    cloudlet_home: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = cloudlet_home
    cli.run(home, "create", "web1")
    cli.run(home, "volume", "create", "data1", "--size", "32M")
    cli.run(home, "volume", "attach", "data1", "web1")
    # the volume is the disk whose serial is data1 (vdb in this guest)
    find = 'for d in /sys/block/vd*; do [ "$(cat $d/serial)" = data1 ] && echo ${d##*/}; done'
    deadline = time.monotonic() + 60
    while not (dev := guest(home, "web1", find).strip()):
        assert time.monotonic() < deadline, "the guest never saw the volume"
        time.sleep(0.5)
    vol_sum = f"head -c 16777216 /dev/{dev} | sha256sum | cut -d' ' -f1"
    root_sum = "sha256sum /root/data | cut -d' ' -f1"
    write = "dd if=/dev/urandom of=/root/data bs=1M count=8 2>/dev/null && sync"
    guest(home, "web1", f"dd if=/dev/urandom of=/dev/{dev} bs=1M count=16 2>/dev/null && {write}")
    sums1 = (guest(home, "web1", root_sum), guest(home, "web1", vol_sum))
    full = cli.run_json(home, "backup", "create", "web1")
    assert full["kind"] == "full" and [d["name"] for d in full["disks"]] == ["root", "data1"]
    assert int(full["disks"][1]["stored"]) >= 16 * MIB  # type: ignore[call-overload]

    # change a little of both disks: one incremental reads just that, from both disks
    guest(home, "web1", f"dd if=/dev/urandom of=/dev/{dev} bs=1M count=1 seek=3 conv=notrunc "
                        "2>/dev/null && dd if=/dev/urandom of=/root/data bs=1M count=1 seek=2 "
                        "conv=notrunc 2>/dev/null && sync")  # fmt: skip
    sums2 = (guest(home, "web1", root_sum), guest(home, "web1", vol_sum))
    assert sums2[0] != sums1[0] and sums2[1] != sums1[1]
    inc = cli.run_json(home, "backup", "create", "web1")
    assert inc["kind"] == "incremental" and inc["note"] == ""
    assert int(inc["read"]) < 8 * MIB  # type: ignore[call-overload]
    assert all(0 < int(d["read"]) < 4 * MIB for d in inc["disks"])  # type: ignore[call-overload]
    cli.run(home, "backup", "verify", "web1")

    # the first backup as a new VM: its own volume, the data of then
    cli.run(home, "restore", "web1", "--backup", str(full["id"]), "--as", "r1")
    volumes = {v["name"]: v["attached_to"] for v in cli.run_json(home, "volume", "list")}
    assert volumes == {"data1": "web1", "r1-data1": "r1"}
    cli.run(home, "start", "r1")
    assert (guest(home, "r1", root_sum), guest(home, "r1", vol_sum.replace(dev, "vdb"))) == sums1
    cli.run(home, "stop", "r1", "--force")

    # the second in place, after both disks changed again
    guest(home, "web1", f"dd if=/dev/zero of=/dev/{dev} bs=1M count=2 2>/dev/null && "
                        "rm /root/data && sync")  # fmt: skip
    message = cli.run(home, "restore", "web1", "--backup", str(inc["id"]), "--force").stderr
    assert "volume data1 restored" in message
    cli.run(home, "start", "web1")
    assert (guest(home, "web1", root_sum), guest(home, "web1", vol_sum.replace(dev, "vdb"))) == (
        sums2
    )

    report_progress_and_cancel_cleanly(home, monkeypatch, dev)


def stages(events: list[ProgressEvent]) -> list[str]:
    return [e.stage for i, e in enumerate(events) if i == 0 or events[i - 1].stage != e.stage]


def counts_up(events: list[ProgressEvent], stage: str, total: int) -> None:
    pairs = [(e.done, e.total) for e in events if e.stage == stage]
    dones = [d for d, _ in pairs]
    assert {t for _, t in pairs} == {total} and dones == sorted(dones), pairs  # type: ignore[type-var]
    assert dones[0] == 0 and dones[-1] == total and len(dones) > 2, pairs


def report_progress_and_cancel_cleanly(
    home: Path, monkeypatch: pytest.MonkeyPatch, dev: str
) -> None:
    """In this process (web1 running, volume data1 attached): a backup and a restore tell
    a recording sink their stages, with bytes; a backup cancelled while it stores its
    chunks leaves no manifest, chunk or work file."""
    cli.in_process_env(home, monkeypatch)
    engine = open_engine(Settings.load())
    guest(home, "web1", f"dd if=/dev/urandom of=/dev/{dev} bs=1M count=4 2>/dev/null && sync")
    events: list[ProgressEvent] = []
    backup = engine.backups.create("web1", progress=events.append)
    assert stages(events) == [
        "freezing the guest", "copying disks", "storing chunks", "signing the manifest"
    ]  # fmt: skip
    counts_up(events, "storing chunks", sum(d.size for d in backup.disks))

    events.clear()
    engine.backups.restore("web1", backup_id=backup.id, as_name="r3", progress=events.append)
    assert stages(events) == [
        f"reading backup {backup.id}", "writing disk root", "checking disk root",
        "writing disk data1", "checking disk data1", "creating r3",
    ]  # fmt: skip
    counts_up(events, "writing disk root", backup.disks[0].size)
    counts_up(events, "writing disk data1", backup.disks[1].size)
    assert engine.show("r3").state == "stopped"

    store = home / "backups"
    guest(home, "web1", f"dd if=/dev/urandom of=/dev/{dev} bs=1M count=16 2>/dev/null && sync")
    before = sorted(p for p in store.rglob("*") if p.is_file())
    token = CancelToken()

    def cancel_mid_copy(event: ProgressEvent) -> None:
        if event.stage == "storing chunks" and event.done:
            token.cancel("cancelled mid-copy")

    with pytest.raises(Cancelled, match="cancelled mid-copy"):
        engine.backups.create("web1", progress=cancel_mid_copy, cancel=token)
    assert sorted(p for p in store.rglob("*") if p.is_file()) == before
    assert not any((store / "tmp").iterdir())

    # a slow (rate-limited) copy cancelled while QEMU's job runs: it stops at once
    monkeypatch.setenv("CLOUDLET_BACKUP_SPEED", "1M")
    slow = open_engine(Settings.load())
    token = CancelToken()

    def cancel_in_qemu_copy(event: ProgressEvent) -> None:
        if event.stage == "copying disks":
            threading.Timer(1.0, token.cancel, args=("cancelled in QEMU's copy",)).start()

    started = time.monotonic()
    with pytest.raises(Cancelled, match="cancelled in QEMU's copy"):
        slow.backups.create("web1", progress=cancel_in_qemu_copy, cancel=token)
    assert time.monotonic() - started < 10  # 16 MiB at 1 MiB/s would take 16 s
    assert sorted(p for p in store.rglob("*") if p.is_file()) == before
    assert not any((store / "tmp").iterdir())
    assert engine.backups.backups("web1")[0].id == backup.id
    assert engine.backups.create("web1").kind == "incremental"  # its bitmap still serves
