"""QEMU argv is a pure function of the launch config, checked against stored files.

Regenerate the expected files on purpose only: CLOUDLET_REGEN_ARGV=1 pytest tests/unit/test_argv.py
then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudlet.driver.base import Channel, ExtraDisk, HostForward, LaunchConfig, Share, TapNic
from cloudlet.driver.qemu.argv import build_argv, escape
from cloudlet.errors import InvalidInput
from cloudlet.host.kvm import ProbeGuest, probe_argv
from cloudlet.host.qemu_binaries import ARCH_BINARIES
from cloudlet.spec.network import mac_address

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
    "aarch64": _config(
        arch="aarch64",
        kernel=Path("/state/images/tiny-aarch64/v1/vmlinuz"),
        initrd=Path("/state/images/tiny-aarch64/v1/initrd.img"),
        cmdline="console=ttyAMA0 quiet cloudlet.hostname=web1",
    ),
    "legacy": _config(profile="legacy", network_restrict=True),
    "seed-iso": _config(seed_iso=Path("/state/instances") / ID / "seed,1.iso"),
    "install-iso": _config(
        install_iso=Path("/state/isos/debian-12-netinst.iso"),
        kernel=None,
        initrd=None,
        cmdline="",
    ),
    "process-vm-sandbox": _config(
        network_mode="none",
        ssh_port=None,
        guest_agent=False,
        exit_on_poweroff=True,
        hotplug=False,
        channels=(
            Channel("cloudlet.status", Path("/state/run") / f"{ID}.io" / "c0.sock"),
            Channel("cloudlet.tty", Path("/state/run") / f"{ID}.io" / "c1,x.sock", console=True),
        ),
        shares=(Share("cloudlet0", Path("/state/run") / f"{ID}.io" / "fs0.sock"),),
    ),
    "volumes": _config(
        extra_disks=(
            ExtraDisk("vab12cd34ef56", Path("/srv/fast/data,1.qcow2"), serial="data1", slot=0),
            ExtraDisk("v0011223344ff", Path("/state/pools/default/logs.qcow2"), slot=3),
        )
    ),
    "lvm-volume": _config(
        extra_disks=(
            ExtraDisk(
                "vab12cd34ef56",
                Path("/dev/cloudlet-big/vol-data1"),
                format="raw",
                serial="data1",
                slot=0,
                protocol="host_device",
            ),
        )
    ),
    "tap-nics-and-forwards": _config(
        host_forwards=(HostForward("tcp", 8080, 80), HostForward("udp", 5353, 53)),
        tap_nics=(
            TapNic("tn1", "clt-0b0e7a9e1", "52:54:00:aa:bb:01"),
            TapNic("tn2", "clt-0b0e7a9e2", "52:54:00:aa:bb:02", slot=1),
        ),
        extra_disks=(ExtraDisk("vab12cd34ef56", Path("/p/data1.qcow2"), slot=0),),
    ),
    "legacy-tap-nic": _config(
        profile="legacy",
        network_mode="none",
        ssh_port=None,
        tap_nics=(TapNic("tn1", "clt-0b0e7a9e1", "52:54:00:aa:bb:01"),),
    ),
    "legacy-volume": _config(
        profile="legacy",
        extra_disks=(ExtraDisk("vab12cd34ef56", Path("/p/data1.qcow2"), serial="data1", slot=0),),
    ),
    "incoming-state": _config(incoming=True),
    "legacy-install-seed": _config(
        profile="legacy",
        install_iso=Path("/state/isos/win2000.iso"),
        seed_iso=Path("/state/instances") / ID / "seed.iso",
        kernel=None,
        initrd=None,
        cmdline="",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_argv_matches_expected_file(case: str) -> None:
    argv = build_argv(ARCH_BINARIES[CASES[case].arch], CASES[case])
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


def test_macs_of_existing_vms_do_not_change() -> None:
    """Stored NIC rows and running guests hold these: values from before the move to spec/."""
    vm = "0b6c2f9e-3c1a-4d7e-9f3a-2b8e5d1c7a40"
    assert mac_address(vm) == "52:54:00:4f:ab:6e"
    assert mac_address(vm, 1) == "52:54:00:f1:e5:e4"
    assert mac_address(vm, 3) == "52:54:00:9e:75:80"
    assert mac_address("ffffffff-0000-4000-8000-000000000001") == "52:54:00:69:f7:16"
    argv = build_argv("qemu", _config())
    assert f"mac={mac_address(ID)}" in " ".join(argv)


def test_kvm_probe_boots_the_kernel_to_poweroff() -> None:
    argv = probe_argv("qemu", ProbeGuest(Path("/k"), Path("/i")), "kvm")
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "-no-reboot" in argv
    assert "rdinit=/bin/busybox -- poweroff -f" in argv[argv.index("-append") + 1]


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def test_aarch64_uses_virt_with_virtio_pci() -> None:
    argv = build_argv("qemu-system-aarch64", CASES["aarch64"])
    assert argv[argv.index("-machine") + 1] == "virt,accel=tcg,gic-version=max"
    assert argv[argv.index("-cpu") + 1] == "neoverse-n1"
    devices = _devices(argv)
    for model in ("virtio-serial-pci", "virtio-blk-pci", "virtio-net-pci", "virtio-rng-pci"):
        assert any(d.startswith(model + ",") for d in devices), model
    kvm = build_argv("qemu-system-aarch64", _config(arch="aarch64", accel="kvm"))
    assert kvm[kvm.index("-machine") + 1] == "virt,accel=kvm,gic-version=host"
    assert kvm[kvm.index("-cpu") + 1] == "host"


def test_legacy_is_i440fx_ide_e1000_without_rng() -> None:
    argv = build_argv("qemu", CASES["legacy"])
    assert argv[argv.index("-machine") + 1] == "pc,accel=tcg"
    devices = _devices(argv)
    assert "ide-hd,drive=disk0,bus=ide.0,unit=0,id=disk0-dev" in devices
    assert any(d.startswith("e1000,netdev=net0,") for d in devices)
    assert not any("virtio-rng" in d or "virtio-blk" in d or "virtio-net" in d for d in devices)
    assert "virtio-serial-pci,id=vserial0" in devices  # the guest agent's port


def test_isos_are_read_only_and_the_installer_boots_first() -> None:
    argv = build_argv("qemu", CASES["install-iso"])
    assert "-kernel" not in argv
    nodes = [argv[i + 1] for i, a in enumerate(argv) if a == "-blockdev"]
    assert '"read-only":true' in nodes[1] and "debian-12-netinst.iso" in nodes[1]
    devices = _devices(argv)
    assert "ide-cd,drive=install0,bus=ide.2,unit=0,id=install0-dev,bootindex=0" in devices
    assert "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=1" in devices
    seed = build_argv("qemu", CASES["seed-iso"])
    assert "virtio-blk-pci,drive=seed0,id=seed0-dev" in _devices(seed)
    assert not any("bootindex" in d for d in _devices(seed))


def test_aarch64_installer_iso_is_refused() -> None:
    with pytest.raises(InvalidInput, match="aarch64"):
        build_argv("qemu", _config(arch="aarch64", install_iso=Path("/i.iso"), kernel=None))


def test_modern_machines_get_spare_hotplug_ports_and_volumes_sit_on_them() -> None:
    for case in ("tcg-nat", "aarch64"):
        ports = [d for d in _devices(build_argv("qemu", CASES[case])) if "root-port" in d]
        assert [p.split(",")[1] for p in ports] == ["id=hp0", "id=hp1", "id=hp2", "id=hp3"]
    assert not any("root-port" in d for d in _devices(build_argv("qemu", CASES["legacy"])))
    argv = build_argv("qemu", CASES["volumes"])
    devices = _devices(argv)
    assert "virtio-blk-pci,drive=vab12cd34ef56,id=vab12cd34ef56-dev,serial=data1,bus=hp0" in devices
    # the root ports come before the disks that sit on them
    assert devices.index("pcie-root-port,id=hp3,chassis=4,port=19") < devices.index(
        "virtio-blk-pci,drive=v0011223344ff,id=v0011223344ff-dev,bus=hp3"
    )
    nodes = [argv[i + 1] for i, a in enumerate(argv) if a == "-blockdev"]
    assert '"filename":"/srv/fast/data,1.qcow2"' in nodes[1]  # JSON: no comma escaping
    legacy = _devices(build_argv("qemu", CASES["legacy-volume"]))
    assert "virtio-blk-pci,drive=vab12cd34ef56,id=vab12cd34ef56-dev,serial=data1" in legacy


def test_the_serial_log_goes_through_the_pumps_pipe_when_the_driver_made_one() -> None:
    argv = build_argv("qemu", _config(serial_log_fd=17))
    assert argv[argv.index("-add-fd") + 1] == "fd=17,set=9,opaque=serial-log"
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    serial = next(c for c in chardevs if c.startswith("socket,id=serial0,"))
    assert "logfile=/dev/fdset/9,logappend=on" in serial
    assert argv.index("-add-fd") < argv.index(serial)
    assert "-add-fd" not in build_argv("qemu", _config())
