"""Snapshot benchmark: how long a running guest's writes stall while its disk is snapshotted.

A `tiny` VM runs a writer loop on its root file system: append a line to a file, `sync`,
then write a byte to the serial console, again and again. The host watches the serial
log grow (QEMU writes it at once) and notes when each byte arrives: the gaps are every
stall of the guest's writes, in host time (the guest's own clock stops while the VM is
paused, so it cannot see a memory snapshot's pause). Side by side, from one VM in one
invocation:

- baseline: the same loop while nothing is done to the VM (its own gaps: TCG, sync);
- `cloudlet snapshot create` (live, disk only: guest-agent fsfreeze, then QMP
  `blockdev-snapshot-sync`, then thaw), several times;
- `cloudlet snapshot create --memory` (the VM is paused while RAM and device state are
  written; the guest sees that as one long gap).

    .venv/bin/python bench/snapshot.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import threading
import time
from pathlib import Path

from common import bench_home, cloudlet

WRITER = "while :; do echo x >> /root/ticks; sync; printf . > /dev/console; done"
POLL = 0.002
Window = tuple[float, float]  # host monotonic start, end


class LogWatcher(threading.Thread):
    """Notes the host time whenever the serial log grows."""

    def __init__(self, log: Path) -> None:
        super().__init__(daemon=True)
        self.log = log
        self.arrivals: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        size = self.log.stat().st_size
        while not self.done.is_set():
            now = self.log.stat().st_size
            if now != size:
                size = now
                self.arrivals.append(time.monotonic())
            time.sleep(POLL)


def guest(home: Path, script: str) -> str:
    return cloudlet(home, "exec", "bench", "--", "sh", "-c", script).stdout


def gaps(arrivals: list[float], windows: list[Window]) -> list[float]:
    """Time between consecutive writes whose second one falls in one of the windows."""
    return [
        b - a
        for a, b in itertools.pairwise(arrivals)
        if any(start <= b <= end for start, end in windows)
    ]


def timed_windows(home: Path, rounds: int, *flags: str) -> tuple[list[Window], list[float]]:
    """Snapshots, each one's window (its CLI call and half a second after), and walls."""
    windows, walls = [], []
    for i in range(rounds):
        started = time.monotonic()
        cloudlet(home, "snapshot", "create", "bench", f"{'m' if flags else 'd'}{i}", *flags)
        ended = time.monotonic()
        walls.append(ended - started)
        time.sleep(0.5)
        windows.append((started, time.monotonic()))
        time.sleep(0.5)
    return windows, walls


def row(label: str, found: list[float], wall: list[float] | None = None) -> None:
    longest = max(found) if found else float("nan")
    median = statistics.median(found) if found else float("nan")
    took = f"{statistics.median(wall):8.2f}s" if wall else f"{'':>9}"
    print(f"{label:40}{len(found):7}{median:10.3f}s{longest:10.3f}s{took}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="snapshots of each kind")
    rounds = parser.parse_args().rounds
    with bench_home("bench") as home:
        cloudlet(home, "create", "bench", "--image", "tiny")
        log = Path(json.loads(cloudlet(home, "show", "bench", "-o", "json").stdout)["paths"]
                   ["serial_log"])  # fmt: skip
        watcher = LogWatcher(log)
        watcher.start()
        guest(home, f"({WRITER}) >/dev/null 2>&1 &")
        time.sleep(2)

        base_start = time.monotonic()
        time.sleep(8)
        baseline = [(base_start, time.monotonic())]
        disk, disk_wall = timed_windows(home, rounds)
        memory, memory_wall = timed_windows(home, rounds, "--memory")
        watcher.done.set()
        watcher.join()

        arrivals = watcher.arrivals
        print(f"{'guest writes (echo >> file; sync)':40}{'writes':>7}{'median gap':>11}"
              f"{'longest':>10}{'CLI wall':>9}")  # fmt: skip
        row("baseline: nothing done to the VM", gaps(arrivals, baseline))
        row(f"{rounds} live disk snapshots", gaps(arrivals, disk), disk_wall)
        row(f"{rounds} memory snapshots (--memory)", gaps(arrivals, memory), memory_wall)
        print("\nlongest gap: the longest time the guest could not write (the freeze, or the "
              "pause of a memory snapshot); CLI wall includes ~1 s of Python start-up")  # fmt: skip


if __name__ == "__main__":
    main()
