"""Network benchmark: VM-to-VM TCP throughput on one cloudlet bridge, beside host loopback.

Everything runs inside a network namespace this script makes (and removes): an
isolated network, two `tiny` VMs on it, the receiver's port opened in its firewall.
The sender pipes /dev/zero through busybox nc for --seconds; the receiver counts the
bytes (wc -c) and times them from the first byte to the end (/proc/uptime), so the
figure is measured on the receiver. Host loopback TCP (Python sockets, one sender
and one receiver thread) is measured in the same run for scale.

    .venv/bin/python bench/network.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

PORT = 5001
RX_IP = "10.88.0.10"
RECEIVER = (
    # nc -l gets a stdin that never ends: at EOF on stdin busybox nc would hang up
    "sleep 3600 | nc -l -p {port} | {{ dd bs=1 count=1 of=/dev/null 2>/dev/null; "
    "read a _ </proc/uptime; wc -c > /tmp/rx.bytes; read b _ </proc/uptime; "
    'echo "$a $b" > /tmp/rx.time; }}'
)


class Bench:
    def __init__(self, home: Path, ns: str) -> None:
        self.home, self.ns = home, ns

    def cloudlet(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "CLOUDLET_HOME": str(self.home),
            "CLOUDLET_FORCE_RESTRICT_NETWORK": "1",
        }
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "cloudlet", *args]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise RuntimeError(f"cloudlet {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def guest(self, vm: str, script: str, check: bool = True) -> str:
        return self.cloudlet("exec", vm, "--", "sh", "-c", script, check=check).stdout

    def wait(self, vm: str, script: str, expect: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.guest(vm, script, check=False)
            if expect in out:
                return out
            time.sleep(0.5)
        raise TimeoutError(f"{vm}: {script!r} never showed {expect!r}")


def vm_to_vm(
    bench: Bench, seconds: float, sender: str = "tx", target: str = RX_IP, port: int = PORT
) -> tuple[int, float]:
    """Bytes the receiver (rx) got and the seconds from its first byte to the last."""
    bench.guest("rx", "rm -f /tmp/rx.bytes /tmp/rx.time")
    receiver = RECEIVER.format(port=port)
    bench.guest("rx", f"setsid sh -c '{receiver}' </dev/null >/dev/null 2>&1 &")
    bench.wait("rx", "netstat -ltn", f":{port} ")
    bench.guest(
        sender,
        f"dd if=/dev/zero bs=65536 2>/dev/null | nc {target} {port} & p=$!; "
        f"sleep {seconds}; kill $p; wait",
        check=False,
    )
    times = bench.wait("rx", "cat /tmp/rx.time 2>/dev/null || true", ".")
    start, end = (float(x) for x in times.split())
    count = int(bench.guest("rx", "cat /tmp/rx.bytes").split()[0]) + 1
    return count, end - start


def loopback(seconds: float) -> tuple[int, float]:
    """Host loopback TCP with Python sockets, measured on the receiver."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    result: dict[str, float] = {}

    def receive() -> None:
        conn, _ = server.accept()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        total, first = 0, None
        while True:
            n = conn.recv_into(view)
            if not n:
                break
            if first is None:
                first = time.monotonic()
            total += n
        result.update(bytes=total, seconds=time.monotonic() - (first or time.monotonic()))
        conn.close()

    thread = threading.Thread(target=receive)
    thread.start()
    chunk = b"\0" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            client.sendall(chunk)
    thread.join()
    server.close()
    return int(result["bytes"]), result["seconds"]


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds / 1e6:9.1f} MB/s  ({count / 1e6:.0f} MB in {seconds:.1f} s)"


def cleanup(bench: Bench) -> None:
    for vm in ("tx", "rx"):
        bench.cloudlet("delete", "--force", vm, check=False)
    bench.cloudlet("network", "delete", "bench", check=False)
    from cloudlet.driver.qemu.runtime import read_record
    from cloudlet.host import processes

    for run_dir in (bench.home / "run").glob("*"):  # only if a delete failed
        info = read_record(run_dir)
        if info is not None:
            processes.kill_and_wait(info.pid, info.pid_start)
    for pid_file in (bench.home / "networks").glob("*/dnsmasq.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        if pid and str(bench.home) in " ".join(processes.cmdline(pid)):
            processes.kill_and_wait(pid)
    subprocess.run(["ip", "netns", "del", bench.ns], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/network.py needs root (network namespace, bridge, TAPs)")
    home = Path(tempfile.mkdtemp(prefix="cl-nb-", dir="/tmp"))
    shared = Path(os.environ.get("CLOUDLET_TEST_CACHE", "/var/cache/cloudlet-test"), "state")
    if (shared / "images").exists():
        (home / "images").symlink_to(shared / "images")
        (home / "cache").symlink_to(shared / "cache")
    if (shared / "host" / "accel.json").exists():
        (home / "host").mkdir()
        shutil.copy(shared / "host" / "accel.json", home / "host" / "accel.json")
    ns = f"clbench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    bench = Bench(home, ns)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        bench.cloudlet("network", "create", "bench", "--subnet", "10.88.0.0/24", "--isolated")
        bench.cloudlet("create", "rx", "--network", "bench", "--type", "gp.small")
        bench.cloudlet("create", "tx", "--network", "bench", "--type", "gp.small")
        bench.cloudlet("firewall", "allow", "rx", "--port", f"{PORT}/tcp")
        bench.wait("rx", "ip -4 addr show eth0", f"inet {RX_IP}/")
        bench.wait("tx", "ip -4 addr show eth0", "inet 10.88.0.11/")
        accel = json.loads(bench.cloudlet("show", "rx", "-o", "json").stdout)["accel"]
        vm_bytes, vm_seconds = vm_to_vm(bench, args.seconds)
        in_bytes, in_seconds = vm_to_vm(bench, args.seconds, "rx", "127.0.0.1", PORT + 1)
        lo_bytes, lo_seconds = loopback(args.seconds)
    finally:
        cleanup(bench)
        shutil.rmtree(home, ignore_errors=True)
    print(f"network benchmark ({args.seconds:.0f} s per side, {os.cpu_count()} host cores)")
    print(f"  VM-to-VM TCP, one bridge ({accel}, 1 vCPU each, busybox nc): "
          f"{rate(vm_bytes, vm_seconds)}")  # fmt: skip
    print(f"  loopback TCP inside one VM (same guest, same tools):   {rate(in_bytes, in_seconds)}")
    print(f"  host loopback TCP (Python sockets):                    {rate(lo_bytes, lo_seconds)}")
    vm_rate = vm_bytes / vm_seconds
    print(
        f"  VM-to-VM is {vm_rate / (in_bytes / in_seconds):.2f}x the in-guest loopback "
        f"and {vm_rate / (lo_bytes / lo_seconds):.5f}x the host loopback"
    )


if __name__ == "__main__":
    main()
