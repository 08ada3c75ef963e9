"""Where the KVM verdict is cached, and forgetting it so the next look probes again.

KVM is probed once per host boot (a probe boots a tiny guest); after fixing KVM on the
host (a module loaded, a BIOS switch) a user asks for a new probe instead of a reboot.
"""

from __future__ import annotations

from pathlib import Path


def cache_file(home: Path) -> Path:
    """The cached verdict in the state directory ``home``."""
    return home / "host" / "accel.json"


def forget(home: Path) -> bool:
    """Drop the cached verdict; True if there was one."""
    path = cache_file(home)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
