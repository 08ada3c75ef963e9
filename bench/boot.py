"""Boot benchmark: `cloudlet start` to guest-agent-ready, beside a bare QEMU command.

Both boot the same `tiny` kernel, initramfs and root disk with the same shape; the
bare run is a hand-written `qemu-system-x86_64` command whose agent socket this
script polls itself. Rounds alternate so drift hits both sides alike.

    .venv/bin/python bench/boot.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

from common import bench_home, boot_image, cloudlet

AGENT_PORT = "org.qemu.guest_agent.0"


def agent_ready(path: Path, deadline: float) -> None:
    """Poll a qemu-ga socket until guest-sync answers."""
    request = json.dumps({"execute": "guest-sync", "arguments": {"id": 4242}}).encode() + b"\n"
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(path))
                sock.sendall(request)
                data = b""
                while b"4242" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if b"4242" in data:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError("agent did not answer")


def bare_boot(image: dict[str, str], accel: str, workdir: Path) -> float:
    overlay = workdir / "bare.qcow2"
    overlay.unlink(missing_ok=True)
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            image["disk"],
            "-F",
            "qcow2",
            str(overlay),
        ],
        check=True,
    )
    qga = workdir / "qga.sock"
    argv = [
        "qemu-system-x86_64", "-machine", f"q35,accel={accel}",
        "-cpu", "max" if accel == "tcg" else "host",
        "-smp", "1", "-m", "1024M", "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", image["kernel"], "-initrd", image["initrd"], "-append", image["cmdline"],
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-chardev", f"socket,id=qga0,path={qga},server=on,wait=off",
        "-device", "virtio-serial-pci", "-device", f"virtserialport,chardev=qga0,name={AGENT_PORT}",
        "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci", "-serial", "null",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        agent_ready(qga, started + 300)
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()


def cloudlet_boot(home: Path) -> float:
    started = time.monotonic()
    cloudlet(home, "start", "bench")
    elapsed = time.monotonic() - started
    cloudlet(home, "stop", "bench", "--force")
    return elapsed


def engine_boot(home: Path) -> float:
    """The same start through the engine API in this (already imported) process:
    what a resident server would pay, without the CLI's interpreter start-up."""
    from cloudlet.config import Settings
    from cloudlet.engine.factory import open_engine

    os.environ["CLOUDLET_FORCE_RESTRICT_NETWORK"] = "1"
    engine = open_engine(Settings.load(home))
    started = time.monotonic()
    engine.start("bench")
    elapsed = time.monotonic() - started
    engine.stop("bench", force=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with bench_home("bench") as home:
        cloudlet(home, "create", "bench", "--type", "gp.small", "--no-start")
        image, accel = boot_image(home)
        bare_times: list[float] = []
        cloudlet_times: list[float] = []
        engine_times: list[float] = []
        for n in range(args.rounds):
            bare_times.append(bare_boot(image, accel, home))
            cloudlet_times.append(cloudlet_boot(home))
            engine_times.append(engine_boot(home))
            print(
                f"round {n + 1}: bare qemu {bare_times[-1]:.2f} s   "
                f"cloudlet start {cloudlet_times[-1]:.2f} s   "
                f"engine.start() {engine_times[-1]:.2f} s",
                flush=True,
            )
        bare, ours = statistics.median(bare_times), statistics.median(cloudlet_times)
        print(f"\naccelerator: {accel}   rounds: {args.rounds}   (start -> guest agent answers)")
        print(f"{'':16}{'median':>10}{'min':>10}{'max':>10}")
        rows = (
            ("bare qemu", bare_times),
            ("cloudlet start", cloudlet_times),
            ("engine.start()", engine_times),
        )
        for label, times in rows:
            print(
                f"{label:16}{statistics.median(times):>9.2f}s{min(times):>9.2f}s{max(times):>9.2f}s"
            )
        engine = statistics.median(engine_times)
        for label, value in (("cloudlet start", ours), ("engine.start()", engine)):
            overhead = 100 * (value / bare - 1)
            print(f"ratio {label}/bare: {value / bare:.3f}  (overhead {overhead:+.1f}%)")


if __name__ == "__main__":
    main()
