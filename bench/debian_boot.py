"""Debian benchmark: `cloudlet create --wait` to a working `cloudlet ssh -- true`,
beside a bare QEMU boot of the same image (and seed) to its login prompt.

    .venv/bin/python bench/debian_boot.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from common import bench_home, cloudlet

from cloudlet.cloudinit import build_user_data, make_seed_iso


def bare_boot(image_dir: Path, accel: str, work: Path, pubkey: str) -> float:
    meta = json.loads((image_dir / "image.json").read_text())
    overlay = work / "bare.qcow2"
    overlay.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image_dir / meta["disk"]),
         "-F", "qcow2", str(overlay)],
        check=True,
    )  # fmt: skip
    seed = work / "seed.iso"
    seed.unlink(missing_ok=True)
    make_seed_iso(
        seed,
        user_data=build_user_data("bare", "debian", [pubkey], None),
        meta_data={"instance-id": f"bare-{time.time_ns()}", "local-hostname": "bare"},
    )
    argv = [
        "qemu-system-x86_64", "-machine", f"q35,accel={accel}",
        "-cpu", "max" if accel == "tcg" else "host", "-smp", "1", "-m", "1024M",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(image_dir / meta["kernel"]), "-initrd", str(image_dir / meta["initrd"]),
        "-append", meta["cmdline"],
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
        "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci", "-serial", "stdio",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen = b""
    try:
        while b"login:" not in seen:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("QEMU exited before the login prompt")
            seen = seen[-64:] + chunk
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()


def cloudlet_boot(home: Path, name: str, key: Path) -> float:
    started = time.monotonic()
    cloudlet(home, "create", name, "--image", "debian-12", "--ssh-key", f"{key}.pub", "--wait")
    cloudlet(home, "ssh", name, "--", "true")
    elapsed = time.monotonic() - started
    cloudlet(home, "delete", "--force", name)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with bench_home(*(f"bench{n}" for n in range(args.rounds))) as home:
        key = home / "id_bench"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        pubkey = Path(f"{key}.pub").read_text().strip()
        built = cloudlet(home, "image", "build", "debian-12").stderr
        image_dir = Path(built.strip().split(" at ")[-1])
        accel = json.loads(cloudlet(home, "host", "-o", "json").stdout)["accel"]
        bare_times: list[float] = []
        ours: list[float] = []
        for n in range(args.rounds):
            bare_times.append(bare_boot(image_dir, accel, home, pubkey))
            ours.append(cloudlet_boot(home, f"bench{n}", key))
            print(
                f"round {n + 1}: bare qemu to login prompt {bare_times[-1]:.1f} s   "
                f"cloudlet create --wait + ssh true {ours[-1]:.1f} s",
                flush=True,
            )
        bare, mine = statistics.median(bare_times), statistics.median(ours)
        print(f"\naccelerator: {accel}   rounds: {args.rounds}")
        print(f"bare qemu (login prompt)        median {bare:.1f} s")
        print(f"cloudlet create --wait + ssh    median {mine:.1f} s")
        print(f"ratio cloudlet/bare: {mine / bare:.2f}")


if __name__ == "__main__":
    main()
