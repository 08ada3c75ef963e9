"""QEMU's command line as a pure function of a LaunchConfig.

No I/O and no host lookups happen here, so the exact argv for a spec can be
checked against stored expected files. Option values are escaped (``,`` -> ``,,``)
and block devices are given as JSON, so no user text can inject an option.
"""

from __future__ import annotations

import hashlib
import json

from cloudlet.driver.base import LaunchConfig

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def escape(value: str) -> str:
    """Escape a value for QEMU's key=value option syntax."""
    return value.replace(",", ",,")


def mac_address(instance_id: str, index: int = 0) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from the VM id."""
    digest = hashlib.sha256(f"{instance_id}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def socket_paths(config: LaunchConfig) -> dict[str, str]:
    run = config.runtime_dir
    return {
        "qmp": str(run / "qmp.sock"),
        "agent": str(run / "qga.sock"),
        "console": str(run / "console.sock"),
        "pidfile": str(run / "qemu.pid"),
    }


def _cpu_model(config: LaunchConfig) -> str:
    return "host" if config.accel == "kvm" else "max"


def _netdev(config: LaunchConfig) -> list[str]:
    if config.network_mode == "none":
        return []
    opts = ["user", "id=net0", f"restrict={'on' if config.network_restrict else 'off'}"]
    if config.ssh_port is not None:
        opts.append(f"hostfwd=tcp:127.0.0.1:{config.ssh_port}-:22")
    return [
        "-netdev", ",".join(opts),
        "-device", f"virtio-net-pci,netdev=net0,id=nic0,mac={mac_address(config.instance_id)}",
    ]  # fmt: skip


def _boot(config: LaunchConfig) -> list[str]:
    if config.kernel is None:
        return []
    argv = ["-kernel", str(config.kernel)]
    if config.initrd is not None:
        argv += ["-initrd", str(config.initrd)]
    if config.cmdline:
        argv += ["-append", config.cmdline]
    return argv


def build_argv(qemu: str, config: LaunchConfig) -> list[str]:
    """The full QEMU argv for a VM, with QMP, console and agent sockets."""
    sockets = socket_paths(config)
    disk = {
        "driver": config.disk_format,
        "node-name": "disk0",
        "file": {"driver": "file", "filename": str(config.disk)},
    }
    argv = [
        qemu,
        "-name", f"guest={escape(config.name)},debug-threads=on",
        "-machine", f"{config.machine},accel={config.accel}",
        "-cpu", _cpu_model(config),
        "-smp", str(config.cpus),
        "-m", f"{config.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-shutdown",
        "-sandbox", SANDBOX,
        "-msg", "timestamp=on",
        "-chardev", f"socket,id=qmp,path={escape(sockets['qmp'])},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev",
        f"socket,id=serial0,path={escape(sockets['console'])},server=on,wait=off,"
        f"logfile={escape(str(config.serial_log))},logappend=on",
        "-serial", "chardev:serial0",
        "-chardev", f"socket,id=qga0,path={escape(sockets['agent'])},server=on,wait=off",
        "-device", "virtio-serial-pci,id=vserial0",
        "-device",
        f"virtserialport,bus=vserial0.0,chardev=qga0,id=qga0-port,name={AGENT_PORT_NAME}",
        "-blockdev", json.dumps(disk, separators=(",", ":")),
        "-device", "virtio-blk-pci,drive=disk0,id=disk0-dev",
        "-device", "virtio-rng-pci,id=rng0",
        *_netdev(config),
        *_boot(config),
    ]  # fmt: skip
    if config.uuid:
        argv += ["-uuid", config.uuid]
    argv += ["-pidfile", sockets["pidfile"]]
    return argv
