"""What this host has: cores, memory, free loopback ports, and which boot it is in."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


def memory_total() -> int:
    """Physical memory in bytes (MemTotal)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemTotal missing from /proc/meminfo")


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """The kernel's id of this boot: what was true of the host may have changed since."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a port forward)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
