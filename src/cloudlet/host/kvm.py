"""Does KVM really work here? Probe once with a tiny guest, cache the verdict.

A /dev/kvm that opens is not enough: on some hosts (nested virtualisation gone
wrong) a real-mode boot sector runs but a Linux kernel hangs or stops with
"emulation failure". So the probe boots the default image's own kernel with its
initramfs and ``rdinit=/bin/busybox -- poweroff -f``: only a guest that reached
userspace powers off, and QEMU (with -no-reboot) exits 0 within the timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from cloudlet.host import resources
from cloudlet.host.files import write_atomic
from cloudlet.host.qemu_binaries import qemu_binary, qemu_version
from cloudlet.host.run import run

PROBE_TIMEOUT = 20.0
POWER_DOWN_MARK = "reboot: Power down"


@dataclass(frozen=True)
class ProbeGuest:
    """A kernel and an initramfs holding /bin/busybox."""

    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class AccelVerdict:
    """Which accelerator to use and why, with the facts it was decided on."""

    accel: str  # "kvm" or "tcg"
    reason: str
    key: str = ""


def probe_argv(qemu: str, guest: ProbeGuest, accel: str) -> list[str]:
    return [
        qemu,
        "-accel", accel,
        "-machine", "q35",
        "-m", "128",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display", "none",
        "-serial", "stdio",
        "-kernel", str(guest.kernel),
        "-initrd", str(guest.initrd),
        "-append", "console=ttyS0 quiet panic=-1 rdinit=/bin/busybox -- poweroff -f",
    ]  # fmt: skip


def run_probe(
    guest: ProbeGuest, accel: str = "kvm", timeout: float = PROBE_TIMEOUT
) -> tuple[bool, str]:
    """Boot the probe guest with ``accel``; (worked, explanation)."""
    argv = probe_argv(qemu_binary(), guest, accel)
    try:
        proc = run(argv, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"a test guest under {accel} did not power off within {timeout:.0f} s"
    output = proc.stdout.decode(errors="replace")
    if proc.returncode == 0 and POWER_DOWN_MARK in output:
        return True, f"a test guest booted and powered off under {accel}"
    lines = (proc.stderr.decode(errors="replace") or output).strip().splitlines()
    detail = lines[-1] if lines else f"exit code {proc.returncode}"
    return False, f"a test guest under {accel} failed: {detail}"


def _cache_key(versions: Path) -> str:
    version = qemu_version(remembered=versions)
    return f"{os.uname().release}|{resources.boot_id()}|qemu-{version}"


def versions_file(cache_file: Path) -> Path:
    """Where QEMU's version is remembered, next to the verdict it is part of the key of."""
    return cache_file.with_name("qemu-version.json")


def decide(cache_file: Path, guest: ProbeGuest, *, refresh: bool = False) -> AccelVerdict:
    """The cached verdict if the host has not changed (same boot, kernel, QEMU), else probe."""
    key = _cache_key(versions_file(cache_file))
    if not refresh and cache_file.exists():
        try:
            cached = AccelVerdict(**json.loads(cache_file.read_text()))
        except (ValueError, TypeError):
            cached = None
        if cached is not None and cached.key == key:
            return cached
    verdict = _probe_now(key, guest)
    write_atomic(cache_file, json.dumps(asdict(verdict)))  # two probes at once: both whole
    return verdict


def _probe_now(key: str, guest: ProbeGuest) -> AccelVerdict:
    if os.environ.get("CLOUDLET_ACCEL") in ("kvm", "tcg"):
        accel = os.environ["CLOUDLET_ACCEL"]
        return AccelVerdict(accel, f"forced by CLOUDLET_ACCEL={accel}", key)
    if not Path("/dev/kvm").exists():
        return AccelVerdict("tcg", "no /dev/kvm on this host (TCG software emulation)", key)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelVerdict(
            "tcg", "/dev/kvm is not accessible to this user (add it to the kvm group)", key
        )
    worked, why = run_probe(guest, "kvm")
    if worked:
        return AccelVerdict("kvm", f"KVM works: {why}", key)
    return AccelVerdict("tcg", f"/dev/kvm opens but KVM does not run guests: {why}", key)
