"""The TCG note: said on the first start after each host boot, not on every start.

Software emulation is slow, which a user should hear; hearing it on every create and
start teaches them to skip notes. Which notes were said is recorded in the state
directory with the host's boot id, so after a reboot (KVM may work then, or not) it is
said again. The host's details always say it.
"""

from __future__ import annotations

import json
from pathlib import Path

from cloudlet.host import resources
from cloudlet.host.files import write_atomic


def record_file(home: Path) -> Path:
    """Which notes were said since the host booted, in the state directory ``home``."""
    return home / "host" / "notes-said.json"


def vm_note(name: str, reason: str) -> str:
    """What a create or start says the first time a VM runs emulated since boot."""
    return (
        f"{name} runs under TCG software emulation (slower): {reason} "
        "(said once per host boot; the host's details always show the accelerator)"
    )


def host_note(reason: str) -> str:
    """What the host's details say while VMs run emulated."""
    return f"VMs here run under TCG software emulation (slower): {reason}"


def _said(path: Path, boot: str) -> list[str]:
    """The notes recorded for this boot; a record we cannot read counts as none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("boot_id") != boot:
        return []
    said = data.get("said")
    if not isinstance(said, list):
        return []
    return [key for key in said if isinstance(key, str)]


def first_since_boot(home: Path, key: str) -> bool:
    """True (and recorded) the first time ``key`` is asked about since the host booted."""
    path = record_file(home)
    boot = resources.boot_id()
    said = _said(path, boot)
    if key in said:
        return False
    write_atomic(path, json.dumps({"boot_id": boot, "said": sorted({*said, key})}))
    return True
