"""CLI benchmark: what the `cloudlet` command costs beside the floors it is built on.

Side by side in one run (rounds interleave, so drift and load hit every row alike):

- start-up: `python -c pass` (the floor), `cloudlet --version`, `--help`, and `list` and
  `show` with 10 (stopped) VMs in a throw-away state directory;
- `cloudlet run tiny -- true` beside a bare QEMU boot and power-off of the same kernel
  and initramfs (bench/run.py's floor);
- `cloudlet start` to guest-agent-ready beside bare QEMU to agent-ready (bench/boot.py's).

Goals (issue 13): --version and --help within 0.1 s of the floor, list within 0.25 s;
run at most 1.25x bare QEMU, start at most 1.15x.

    .venv/bin/python bench/cli.py --rounds 5          # --quick: start-up rows only
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from boot import bare_boot, cloudlet_boot
from common import bench_home, boot_image, cloudlet, cloudlet_env, keep_bytecode
from run import Unavailable, cloudlet_cli, floor, timed, tiny_boot_files

VMS = tuple(f"vm{i}" for i in range(10))


def command(home: Path, *args: str) -> Callable[[], float]:
    """One `cloudlet ARGS` (or a bare `python -c pass` when args start with -c)."""
    env = cloudlet_env(home)
    argv = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "cloudlet", *args]

    def measure() -> float:
        elapsed, code, stderr = timed(argv, env)
        if code != 0:
            raise Unavailable(f"{' '.join(args)} exited {code}: {stderr.splitlines()[-1:]}")
        return elapsed

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="runs per row (median)")
    parser.add_argument("--quick", action="store_true", help="start-up rows only (no QEMU)")
    args = parser.parse_args()
    with bench_home(*VMS, "bench") as home:
        keep_bytecode(home)
        for name in VMS:
            cloudlet(home, "create", name, "--no-start")
        rows: dict[str, Callable[[], float]] = {
            "python -c pass": command(home, "-c", "pass"),
            "cloudlet --version": command(home, "--version"),
            "cloudlet --help": command(home, "--help"),
            "cloudlet list (10 VMs)": command(home, "list"),
            "cloudlet show": command(home, "show", "vm0"),
        }
        if not args.quick:
            cloudlet(home, "create", "bench", "--type", "gp.small", "--no-start")
            image, accel = boot_image(home)
            rows["bare qemu poweroff"] = floor(*tiny_boot_files(home))
            rows["cloudlet run tiny -- true"] = cloudlet_cli(home)
            rows["bare qemu agent-ready"] = lambda: bare_boot(image, accel, home)
            rows["cloudlet start"] = lambda: cloudlet_boot(home)
        times: dict[str, list[float]] = {label: [] for label in rows}
        skipped: dict[str, str] = {}
        for label, measure in rows.items():  # untimed: page cache, bytecode
            try:
                measure()
            except Unavailable as why:
                skipped[label] = str(why)
        print("warm-up round done", file=sys.stderr, flush=True)
        for n in range(args.rounds):
            for label, measure in rows.items():
                if label in skipped:
                    continue
                try:
                    times[label].append(measure())
                except Unavailable as why:
                    skipped[label] = str(why)
            print(f"round {n + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    report(times, skipped, args.rounds)


def report(times: dict[str, list[float]], skipped: dict[str, str], rounds: int) -> None:
    med = {label: statistics.median(t) for label, t in times.items() if t}
    base = med.get("python -c pass", 0.0)
    print(f"\nmedian of {rounds} runs each, seconds")
    print(f"{'':28}{'median':>9}{'min':>9}{'max':>9}  vs floor")
    against = {
        "cloudlet run tiny -- true": "bare qemu poweroff",
        "cloudlet start": "bare qemu agent-ready",
    }
    for label, values in times.items():
        if label in skipped:
            print(f"{label:28}  {skipped[label]}")
            continue
        if not values:
            continue
        floor_label = against.get(label)
        if floor_label in med:
            versus = f"{med[label] / med[floor_label]:.2f}x {floor_label}"
        elif label.startswith("cloudlet") and label not in against:
            versus = f"{med[label] - base:+.3f} s over python -c pass"
        else:
            versus = ""
        print(f"{label:28}{med[label]:>9.3f}{min(values):>9.3f}{max(values):>9.3f}  {versus}")


if __name__ == "__main__":
    main()
