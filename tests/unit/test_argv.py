"""QEMU argv is a pure function of the launch config, checked against stored files.

Regenerate the expected files on purpose only: CLOUDLET_REGEN_ARGV=1 pytest tests/unit/test_argv.py
then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudlet.driver.base import LaunchConfig
from cloudlet.driver.qemu.argv import build_argv, escape, mac_address
from cloudlet.host.kvm import ProbeGuest, probe_argv

DATA = Path(__file__).parent / "data" / "argv"
ID = "0b0e7a9e-5a6f-4f7e-9a33-1f1e2d3c4b5a"


def _config(**overrides: object) -> LaunchConfig:
    base: dict[str, object] = dict(
        instance_id=ID,
        name="web1",
        arch="x86_64",
        accel="tcg",
        cpus=1,
        memory_mib=1024,
        disk=Path("/state/instances") / ID / "disk.qcow2",
        disk_format="qcow2",
        runtime_dir=Path("/state/run") / ID,
        serial_log=Path("/state/instances") / ID / "serial.log",
        kernel=Path("/state/images/tiny/v1/vmlinuz"),
        initrd=Path("/state/images/tiny/v1/initrd.img"),
        cmdline="console=ttyS0 quiet cloudlet.hostname=web1",
        ssh_port=40022,
        uuid=ID,
    )
    base.update(overrides)
    return LaunchConfig(**base)  # type: ignore[arg-type]


CASES = {
    "tcg-nat": _config(),
    "kvm-restricted-4cpu": _config(accel="kvm", cpus=4, memory_mib=8192, network_restrict=True),
    "no-network": _config(network_mode="none", ssh_port=None),
    "comma-in-paths": _config(
        runtime_dir=Path("/state,evil/run") / ID, serial_log=Path("/a,b/serial.log")
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_argv_matches_expected_file(case: str) -> None:
    argv = build_argv("qemu-system-x86_64", CASES[case])
    expected_file = DATA / f"{case}.txt"
    text = "\n".join(argv) + "\n"
    if os.environ.get("CLOUDLET_REGEN_ARGV"):
        expected_file.parent.mkdir(parents=True, exist_ok=True)
        expected_file.write_text(text)
    assert text == expected_file.read_text()


def test_commas_are_doubled_so_no_option_can_be_injected() -> None:
    assert escape("a,b") == "a,,b"
    argv = build_argv("qemu", _config(name="x,evil=1"))
    assert "guest=x,,evil=1,debug-threads=on" in argv


def test_restrict_and_forward() -> None:
    argv = build_argv("qemu", _config(network_restrict=True))
    netdev = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in netdev
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev


def test_mac_is_stable_and_local() -> None:
    assert mac_address(ID) == mac_address(ID)
    assert mac_address(ID) != mac_address(ID, 1)
    assert mac_address(ID).startswith("52:54:00:")


def test_kvm_probe_boots_the_kernel_to_poweroff() -> None:
    argv = probe_argv("qemu", ProbeGuest(Path("/k"), Path("/i")), "kvm")
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "-no-reboot" in argv
    assert "rdinit=/bin/busybox -- poweroff -f" in argv[argv.index("-append") + 1]
