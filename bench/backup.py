"""Backup benchmark: full and incremental backups of a running VM's 2 GiB disk.

A `tiny` VM gets a 2 GiB disk; 1.5 GiB of random data (distinct, so nothing
deduplicates) is written past its 256 MiB root file system with qemu-io while it is
stopped. Then, with the VM running:

- the floor: `qemu-img convert -U -f qcow2 -O qcow2` of the same disk (what a stopped
  VM's backup runs, and the least any full copy costs), and the same copy made durable
  with an fsync, as every backup's chunks are before it is recorded;
- `cloudlet backup create` (full: blockdev-backup, then chunking, hashing, storing);
- 1% of the disk (20 MiB) rewritten by the guest (dd to /dev/vda past its file system);
- `cloudlet backup create` again (incremental: only the dirty clusters are read);
- the same full and incremental pair from one resident process (the engine opened once,
  as `cloudlet backup run-due` and a server's scheduler run backups) into a second,
  empty store, so its full stores everything again: this shows the backup's own cost
  without the CLI's fixed start-up (about 1 s of Python imports here);
- `cloudlet restore --as` of the incremental backup.

    .venv/bin/python bench/backup.py
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from common import bench_home, cloudlet

MIB = 1 << 20
FILL_START = 512 * MIB
FILL = 1536 * MIB
PIECE = 64 * MIB
CHANGE = 20 * MIB


def timed(fn: Any) -> tuple[float, Any]:
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


def fill(disk: Path, work: Path) -> None:
    """1.5 GiB of distinct random data past the root file system, with qemu-io."""
    source = work / "piece.bin"
    for offset in range(FILL_START, FILL_START + FILL, PIECE):
        source.write_bytes(os.urandom(PIECE))
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -q -s {source} {offset} {PIECE}", str(disk)],
            check=True,
        )
    source.unlink()


def change_one_percent(home: Path, seek_mib: int) -> None:
    cloudlet(
        home, "exec", "bench", "--", "sh", "-c",
        f"dd if=/dev/urandom of=/dev/vda bs=1M count={CHANGE // MIB} seek={seek_mib} "
        "conv=fsync 2>/dev/null",
    )  # fmt: skip


def resident_pair(home: Path) -> tuple[float, dict[str, Any], float, dict[str, Any]]:
    """Full, 1% change, incremental: all from this process's one engine, into its own store."""
    os.environ.update(
        CLOUDLET_HOME=str(home),
        CLOUDLET_BACKUP_DIR=str(home / "backups-resident"),
        CLOUDLET_FORCE_RESTRICT_NETWORK="1",
    )
    from cloudlet.engine.factory import open_engine

    ops = open_engine().backups
    full_s, full = timed(lambda: ops.create("bench").to_dict())
    change_one_percent(home, 1280)
    inc_s, inc = timed(lambda: ops.create("bench").to_dict())
    return full_s, full, inc_s, inc


def rate(size: int, seconds: float) -> str:
    return f"{size / MIB / seconds:7.1f} MiB/s"


def main() -> None:
    with bench_home("bench", "back") as home:
        cloudlet(home, "create", "bench", "--disk-size", "2G", "--no-start")
        vm = json.loads(cloudlet(home, "show", "bench", "-o", "json").stdout)
        disk = Path(vm["paths"]["disk"])
        fill_s, _ = timed(lambda: fill(disk, home))
        allocated = disk.stat().st_blocks * 512
        print(f"disk: 2 GiB virtual, {allocated / MIB:.0f} MiB allocated "
              f"(filled in {fill_s:.1f} s)", flush=True)  # fmt: skip
        cloudlet(home, "start", "bench")

        floor = home / "floor.qcow2"

        def convert(durable: bool) -> None:
            subprocess.run(
                ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", str(disk),
                 str(floor)],
                check=True,
            )  # fmt: skip
            if durable:
                fd = os.open(floor, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            floor.unlink()

        floor_s, _ = timed(lambda: convert(False))
        durable_s, _ = timed(lambda: convert(True))

        full_s, out = timed(lambda: cloudlet(home, "backup", "create", "bench", "-o", "json"))
        full = json.loads(out.stdout)
        change_one_percent(home, 1024)
        inc_s, out = timed(lambda: cloudlet(home, "backup", "create", "bench", "-o", "json"))
        inc = json.loads(out.stdout)
        restore_s, _ = timed(
            lambda: cloudlet(home, "restore", "bench", "--backup", inc["id"], "--as", "back")
        )
        verify_s, _ = timed(lambda: cloudlet(home, "backup", "verify", "bench"))
        # Last: its backups (rows in the same database, chunks in another store) would
        # otherwise be in the CLI's restore and verify.
        res_full_s, res_full, res_inc_s, res_inc = resident_pair(home)
        cloudlet(home, "stop", "bench", "--force")
        store = sum(p.stat().st_size for p in (home / "backups" / "chunks").rglob("*"))

        print(f"{'':34}{'time':>9}{'read':>11}{'stored':>11}{'throughput':>16}")
        print(f"{'qemu-img convert (floor)':34}{floor_s:8.2f}s{allocated / MIB:9.0f}Mi"
              f"{'':>11}{rate(allocated, floor_s):>16}")  # fmt: skip
        print(f"{'qemu-img convert + fsync':34}{durable_s:8.2f}s{allocated / MIB:9.0f}Mi"
              f"{'':>11}{rate(allocated, durable_s):>16}")  # fmt: skip
        for label, seconds, b in (
            ("cloudlet backup create (full)", full_s, full),
            ("cloudlet backup create (incr, 1%)", inc_s, inc),
            ("resident engine (full)", res_full_s, res_full),
            ("resident engine (incr, 1%)", res_inc_s, res_inc),
        ):
            print(f"{label:34}{seconds:8.2f}s{b['read'] / MIB:9.0f}Mi{b['stored'] / MIB:9.0f}Mi"
                  f"{rate(b['read'], seconds):>16}")  # fmt: skip
        print(f"{'cloudlet restore --as (from incr)':34}{restore_s:8.2f}s")
        print(f"{'cloudlet backup verify (both)':34}{verify_s:8.2f}s")
        print(f"\nfull / floor: {full_s / floor_s:.2f}x (CLI), {res_full_s / floor_s:.2f}x "
              f"(resident); / durable floor: {full_s / durable_s:.2f}x (CLI)"
              f"      store: {store / MIB:.0f} MiB for the CLI's two backups")  # fmt: skip
        for mode, f_s, f, i_s, i in (
            ("CLI", full_s, full, inc_s, inc),
            ("resident", res_full_s, res_full, res_inc_s, res_inc),
        ):
            print(f"incremental ({mode}, {i['kind']}): {i_s / f_s:.1%} of the full's time, "
                  f"{i['stored'] / f['stored']:.1%} of its stored bytes")  # fmt: skip


if __name__ == "__main__":
    main()
