"""QEMU's command line as a pure function of a LaunchConfig.

No I/O and no host lookups happen here, so the exact argv for a spec can be
checked against stored expected files. Option values are escaped (``,`` -> ``,,``)
and block devices are given as JSON, so no user text can inject an option.

Machines: x86_64 "modern" is q35 with virtio everywhere; x86_64 "legacy" is i440fx
(``pc``) with an IDE disk and an e1000 NIC for old guest OSes; aarch64 is ``virt``
with the same virtio devices on its PCIe bus and its PL011 UART as the serial port.
"""

from __future__ import annotations

import json
from pathlib import Path

from cloudlet.driver.base import ExtraDisk, HostForward, LaunchConfig, TapNic
from cloudlet.errors import InvalidInput
from cloudlet.spec.network import mac_address
from cloudlet.spec.storage import HOTPLUG_SLOTS

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def escape(value: str) -> str:
    """Escape a value for QEMU's key=value option syntax."""
    return value.replace(",", ",,")


def socket_paths(config: LaunchConfig) -> dict[str, str]:
    run = config.runtime_dir
    return {
        "qmp": str(run / "qmp.sock"),
        "agent": str(run / "qga.sock"),
        "console": str(run / "console.sock"),
        "pidfile": str(run / "qemu.pid"),
    }


def _legacy(config: LaunchConfig) -> bool:
    return config.profile == "legacy"


def _memory_backend(config: LaunchConfig) -> str:
    """virtiofsd maps guest RAM: with shares, RAM is a shared memfd QEMU hands over."""
    return ",memory-backend=mem0" if config.shares else ""


def _machine(config: LaunchConfig) -> str:
    """Machine type and options; a machine that does not fit the arch/profile is replaced.

    The default ``machine`` is q35, so aarch64 and legacy pick their own board unless
    the config names a versioned one of the right family (virt-7.2, pc-i440fx-7.2).
    """
    if config.arch == "aarch64":
        name = config.machine if config.machine.startswith("virt") else "virt"
        # The newest GIC the accelerator offers: GICv3+ for more than 8 vCPUs.
        gic = "host" if config.accel == "kvm" else "max"
        return f"{name},accel={config.accel},gic-version={gic}{_memory_backend(config)}"
    if _legacy(config):
        name = config.machine if config.machine.startswith("pc") else "pc"
        return f"{name},accel={config.accel}{_memory_backend(config)}"
    return f"{config.machine},accel={config.accel}{_memory_backend(config)}"


def _cpu_model(config: LaunchConfig) -> str:
    if config.accel == "kvm":
        return "host"
    if config.arch == "aarch64":
        # Under TCG, "max" emulates pointer authentication (QARMA) on every function
        # call: the tiny guest needs 10 s to its agent, 4 s with pauth-impdef=on, and
        # 3.2 s on neoverse-n1 (Armv8.2 with LSE atomics, no pointer authentication;
        # as fast as cortex-a57, which is only Armv8.0).
        return "neoverse-n1"
    return "max"


def _raw_ro(node: str, path: Path) -> str:
    """A read-only raw block node (ISO images are raw), as JSON."""
    spec = {
        "driver": "raw",
        "node-name": node,
        "read-only": True,
        "file": {"driver": "file", "filename": str(path), "read-only": True},
    }
    return json.dumps(spec, separators=(",", ":"))


def _disks(config: LaunchConfig) -> list[str]:
    """Root disk, then the optional installer CD and seed disk.

    The IDE buses: i440fx has ide.0 and ide.1 (two units each); q35's AHCI has one
    unit on each of ide.0 to ide.5.
    """
    disk = {
        "driver": config.disk_format,
        "node-name": "disk0",
        "file": {"driver": "file", "filename": str(config.disk)},
    }
    boot = ",bootindex=1" if config.install_iso is not None else ""
    if _legacy(config):
        root = f"ide-hd,drive=disk0,bus=ide.0,unit=0,id=disk0-dev{boot}"
    else:
        root = f"virtio-blk-pci,drive=disk0,id=disk0-dev{boot}"
    argv = ["-blockdev", json.dumps(disk, separators=(",", ":")), "-device", root]
    if config.install_iso is not None:
        if config.arch == "aarch64":
            raise InvalidInput(
                "installing from an ISO is not supported for aarch64 guests",
                hint="the virt machine needs UEFI firmware to boot an installer",
            )
        bus = "ide.1" if _legacy(config) else "ide.2"
        argv += [
            "-blockdev", _raw_ro("install0", config.install_iso),
            "-device", f"ide-cd,drive=install0,bus={bus},unit=0,id=install0-dev,bootindex=0",
        ]  # fmt: skip
    if config.seed_iso is not None:
        if _legacy(config):
            seed = "ide-cd,drive=seed0,bus=ide.0,unit=1,id=seed0-dev"
        else:
            # virtio-blk works on q35 and virt alike (virt has no IDE); cloud-init finds
            # the seed by its file system label (cidata), whatever the device is.
            seed = "virtio-blk-pci,drive=seed0,id=seed0-dev"
        argv += ["-blockdev", _raw_ro("seed0", config.seed_iso), "-device", seed]
    return argv


def has_hotplug_ports(config: LaunchConfig) -> bool:
    """q35 and virt need PCIe root ports to hot-plug; i440fx hot-plugs on its PCI bus."""
    return config.hotplug and not _legacy(config)


def _hotplug_ports(config: LaunchConfig) -> list[str]:
    """Empty root ports, after every built-in device so their addresses stay put."""
    if not has_hotplug_ports(config):
        return []
    argv: list[str] = []
    for slot in range(HOTPLUG_SLOTS):
        argv += ["-device", f"pcie-root-port,id=hp{slot},chassis={slot + 1},port={0x10 + slot}"]
    return argv


def disk_device(disk: ExtraDisk, *, ports: bool) -> dict[str, str]:
    """The virtio-blk device of a data volume, as device_add/-device properties.

    ``ports``: the machine has hot-plug root ports (the disk goes on its slot's port).
    """
    props = {"driver": "virtio-blk-pci", "drive": disk.node, "id": disk.device_id}
    if disk.serial:
        props["serial"] = disk.serial
    if disk.slot is not None and ports:
        props["bus"] = f"hp{disk.slot}"
    return props


def disk_node(disk: ExtraDisk) -> dict[str, object]:
    """The block node of a data volume, as blockdev-add/-blockdev JSON."""
    return {
        "driver": disk.format,
        "node-name": disk.node,
        "file": {"driver": disk.protocol, "filename": str(disk.path)},
    }


def _extra_disks(config: LaunchConfig) -> list[str]:
    argv: list[str] = []
    for disk in config.extra_disks:
        props = disk_device(disk, ports=has_hotplug_ports(config))
        device = ",".join([props.pop("driver")] + [f"{k}={escape(v)}" for k, v in props.items()])
        argv += ["-blockdev", json.dumps(disk_node(disk), separators=(",", ":"))]
        argv += ["-device", device]
    return argv


def host_forward_rule(forward: HostForward) -> str:
    """``tcp:127.0.0.1:8080-:80``: hostfwd= in argv, hostfwd_add on the monitor."""
    if forward.proto not in ("tcp", "udp"):
        raise InvalidInput(f"unknown protocol {forward.proto!r}", hint="use tcp or udp")
    return f"{forward.proto}:127.0.0.1:{int(forward.host_port)}-:{int(forward.guest_port)}"


def _nic_model(config: LaunchConfig) -> str:
    return "e1000" if _legacy(config) else "virtio-net-pci"


def uses_passt(config: LaunchConfig) -> bool:
    """The default user-mode NAT runs on passt (no way to the host's loopback); a
    restricted one stays on QEMU's slirp, which with restrict=on lets nothing out."""
    return config.network_mode == "nat" and not config.network_restrict


def _netdev(config: LaunchConfig, net_fd: int | None) -> list[str]:
    if config.network_mode == "none":
        return []
    if net_fd is not None:  # passt, on an inherited socket
        opts = ["stream", "id=net0", "server=off", "addr.type=fd", f"addr.str={int(net_fd)}"]
    else:
        opts = ["user", "id=net0", f"restrict={'on' if config.network_restrict else 'off'}"]
        if config.ssh_port is not None:
            opts.append(f"hostfwd=tcp:127.0.0.1:{config.ssh_port}-:22")
        opts += [f"hostfwd={host_forward_rule(f)}" for f in config.host_forwards]
    model = _nic_model(config)
    return [
        "-netdev", ",".join(opts),
        "-device", f"{model},netdev=net0,id=nic0,mac={mac_address(config.instance_id)}",
    ]  # fmt: skip


def tap_netdev(nic: TapNic) -> dict[str, str]:
    """The netdev of a TAP NIC, as netdev_add arguments (no helper scripts: sandboxed)."""
    if nic.fd is not None:  # opened by cloudlet: QEMU runs as a user that cannot
        return {"type": "tap", "id": nic.node, "fd": str(nic.fd)}
    return {"type": "tap", "id": nic.node, "ifname": nic.tap, "script": "no", "downscript": "no"}


def nic_device(nic: TapNic, *, model: str, ports: bool) -> dict[str, str]:
    """The NIC device of a TAP NIC, as device_add/-device properties."""
    props = {"driver": model, "netdev": nic.node, "id": nic.device_id, "mac": nic.mac}
    if nic.slot is not None and ports:
        props["bus"] = f"hp{nic.slot}"
    return props


def _tap_nics(config: LaunchConfig) -> list[str]:
    argv: list[str] = []
    for nic in config.tap_nics:
        netdev = tap_netdev(nic)
        kind = netdev.pop("type")
        props = nic_device(nic, model=_nic_model(config), ports=has_hotplug_ports(config))
        device = ",".join([props.pop("driver")] + [f"{k}={escape(v)}" for k, v in props.items()])
        argv += ["-netdev", ",".join([kind] + [f"{k}={escape(v)}" for k, v in netdev.items()])]
        argv += ["-device", device]
    return argv


def _serial_ports(config: LaunchConfig) -> list[str]:
    """The virtio-serial bus: the guest agent's port, then each process-VM channel."""
    argv: list[str] = []
    if config.guest_agent:
        sockets = socket_paths(config)
        argv += [
            "-chardev", f"socket,id=qga0,path={escape(sockets['agent'])},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vserial0",
            "-device",
            f"virtserialport,bus=vserial0.0,chardev=qga0,id=qga0-port,name={AGENT_PORT_NAME}",
        ]  # fmt: skip
    else:
        argv += ["-device", "virtio-serial-pci,id=vserial0"]
    for index, channel in enumerate(config.channels):
        kind = "virtconsole" if channel.console else "virtserialport"
        argv += [
            # No server=on: QEMU connects to the socket cloudlet already listens on.
            "-chardev", f"socket,id=ch{index},path={escape(str(channel.socket))}",
            "-device",
            f"{kind},bus=vserial0.0,chardev=ch{index},id=ch{index}-port,"
            f"name={escape(channel.name)}",
        ]  # fmt: skip
    return argv


def _shares(config: LaunchConfig) -> list[str]:
    if not config.shares:
        return []
    argv = [
        "-object",
        f"memory-backend-memfd,id=mem0,size={config.memory_mib}M,share=on",
    ]
    for index, share in enumerate(config.shares):
        argv += [
            "-chardev", f"socket,id=fs{index},path={escape(str(share.socket))}",
            "-device", f"vhost-user-fs-pci,chardev=fs{index},tag={escape(share.tag)},id=fs{index}",
        ]  # fmt: skip
    return argv


def _boot(config: LaunchConfig) -> list[str]:
    if config.kernel is None:
        return []
    argv = ["-kernel", str(config.kernel)]
    if config.initrd is not None:
        argv += ["-initrd", str(config.initrd)]
    if config.cmdline:
        argv += ["-append", config.cmdline]
    return argv


# The fd set that carries the serial log's pipe (see serial_pump.py).
SERIAL_LOG_FDSET = 9


def _serial_log_fd(config: LaunchConfig) -> list[str]:
    if config.serial_log_fd is None:
        return []
    return ["-add-fd", f"fd={config.serial_log_fd},set={SERIAL_LOG_FDSET},opaque=serial-log"]


def _serial_logfile(config: LaunchConfig) -> str:
    """The pump's pipe when the driver made one, else the file (uncapped)."""
    if config.serial_log_fd is None:
        return escape(str(config.serial_log))
    return f"/dev/fdset/{SERIAL_LOG_FDSET}"


def build_argv(qemu: str, config: LaunchConfig, *, net_fd: int | None = None) -> list[str]:
    """The full QEMU argv for a VM, with QMP, console and agent sockets.

    ``net_fd``: QEMU's inherited end of the user-mode network's socket (passt).
    """
    sockets = socket_paths(config)
    # Old guests have no virtio drivers for entropy; the agent port stays virtio-serial.
    rng = [] if _legacy(config) else ["-device", "virtio-rng-pci,id=rng0"]
    argv = [
        qemu,
        "-name", f"guest={escape(config.name)},debug-threads=on",
        "-machine", _machine(config),
        "-cpu", _cpu_model(config),
        "-smp", str(config.cpus),
        "-m", f"{config.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        *(["-no-reboot"] if config.exit_on_poweroff else ["-no-shutdown"]),
        "-sandbox", SANDBOX,
        "-msg", "timestamp=on",
        "-chardev", f"socket,id=qmp,path={escape(sockets['qmp'])},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        *_serial_log_fd(config),
        "-chardev",
        f"socket,id=serial0,path={escape(sockets['console'])},server=on,wait=off,"
        f"logfile={_serial_logfile(config)},logappend=on",
        "-serial", "chardev:serial0",
        *_serial_ports(config),
        *_shares(config),
        *_disks(config),
        *rng,
        *_netdev(config, net_fd),
        *_hotplug_ports(config),
        *_tap_nics(config),
        *_extra_disks(config),
        *_boot(config),
    ]  # fmt: skip
    if config.uuid:
        argv += ["-uuid", config.uuid]
    argv += ["-pidfile", sockets["pidfile"]]
    if config.incoming:
        # Paused until a saved state arrives over QMP (migrate-incoming with an fd).
        argv += ["-S", "-incoming", "defer"]
    return argv
