"""The QEMU driver: boots detached QEMU processes and talks to them over QMP and qemu-ga."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloudlet import redact
from cloudlet.driver.base import (
    DirtyBitmap,
    DiskCopy,
    Driver,
    ExecResult,
    ExtraDisk,
    GuestInfo,
    GuestTerminal,
    HostForward,
    LaunchConfig,
    PowerState,
    RuntimeInfo,
    TapNic,
)
from cloudlet.driver.qemu import (
    agent,
    guest_files,
    guest_tree,
    power,
    qmp,
    serial_pump,
    terminal,
)
from cloudlet.driver.qemu.argv import (
    build_argv,
    disk_device,
    disk_node,
    host_forward_rule,
    nic_device,
    socket_paths,
    tap_netdev,
    uses_passt,
)
from cloudlet.driver.qemu.confine import Confinement, Launch, open_tap
from cloudlet.driver.qemu.runtime import read_record, write_record
from cloudlet.errors import (
    CloudletError,
    Conflict,
    GuestError,
    HostCommandError,
    MonitorError,
    OutOfSpace,
    Timeout,
    out_of_space,
)
from cloudlet.guest.accounts import GuestOwner
from cloudlet.guest.copy_rules import CopyProgress, TreeCopy
from cloudlet.guest.landing import CopyLimits
from cloudlet.host import passt, processes
from cloudlet.host.ownership import share_dir
from cloudlet.host.qemu_binaries import qemu_binary, qemu_version
from cloudlet.host.run import Credentials, spawn
from cloudlet.next_steps import Step, step
from cloudlet.notices import CallNotices
from cloudlet.progress import CancelToken, check, pause

# QEMU died during a boot: its serial log tells why (the driver knows no VM name).
SERIAL_LOG_HINT = "read the VM's serial log to see why"
LOG_STEPS = (step(Step.VM_LOGS),)

_log = logging.getLogger(__name__)
START_TIMEOUT = 60.0
AGENT_CHARDEV = "qga0"
AGENT_DEVICE = "qga0-port"
ROOT_DEVICE = "disk0-dev"
_BUILTIN_DEVICES = {"disk0-dev", "seed0-dev", "install0-dev"}
JOB_TIMEOUT = 3600.0
STATE_TIMEOUT = 600.0


def _qdev_id(qdev: str) -> str:
    """ "/machine/peripheral/X/virtio-backend" or "X" -> "X"."""
    parts = qdev.split("/")
    if len(parts) >= 4 and parts[1:3] == ["machine", "peripheral"]:
        return parts[3]
    return qdev


def _layer_node(path: Path) -> str:
    """A stable node name for a disk layer QEMU opens for us (31 characters at most)."""
    return "l" + hashlib.sha256(str(path).encode()).hexdigest()[:20]


# The serial log pump's pid and start time, in the runtime directory.
SERIAL_PUMP_PID = "serial-pump.pid"


def _passt_forwards(config: LaunchConfig) -> list[passt.Forward]:
    ssh = [passt.Forward("tcp", config.ssh_port, 22)] if config.ssh_port is not None else []
    return ssh + [passt.Forward(f.proto, f.host_port, f.guest_port) for f in config.host_forwards]


def _stop_helper(info: RuntimeInfo) -> None:
    """The user-mode network's back end goes with its VM (it also quits by itself)."""
    if info.net_helper_pid is not None:
        passt.stop(info.net_helper_pid, info.net_helper_start or 0)


class QemuDriver(Driver):
    """Runs each VM as a daemonized QEMU whose runtime record lives in ``run_root/<id>``."""

    name = "qemu"

    def __init__(self, run_root: Path, confinement: Confinement | None = None) -> None:
        self.run_root = run_root
        # Per-VM QEMU users; None: QEMU runs as whoever runs cloudlet.
        self.confinement = confinement
        # Per thread, like the engine's: a start in one thread never hands its notices
        # to another.
        self._notices = CallNotices("qemu-driver-notices")

    def process_user(self) -> str:
        if self.confinement is None:
            return "the user running cloudlet"
        return self.confinement.mode.describe()

    def take_notices(self) -> list[str]:
        return self._notices.take()

    def _dir(self, instance_id: str) -> Path:
        return self.run_root / instance_id

    def runtime(self, instance_id: str) -> RuntimeInfo | None:
        return read_record(self._dir(instance_id))

    def _require(self, instance_id: str) -> RuntimeInfo:
        info = self.runtime(instance_id)
        if info is None or not processes.is_alive(info.pid, info.pid_start):
            raise Conflict("the VM has no running QEMU process", hint="start it first")
        return info

    def start(self, config: LaunchConfig) -> RuntimeInfo:
        run_dir = config.runtime_dir
        # A record this version cannot read belongs to a VM another cloudlet may still
        # run: refused (RuntimeRecordUnknown), never cleared away.
        read_record(run_dir)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(mode=0o700, parents=True)
        sockets = socket_paths(config)
        launch = Launch(config, None)
        helper = None
        try:
            if self.confinement is not None:
                launch, why_root = self.confinement.prepare(config)
                if why_root and os.geteuid() == 0:
                    self._notices.add(f"QEMU runs as root: {why_root}")
            net_fd = None
            if uses_passt(config):
                helper = passt.start(_passt_forwards(config), run_dir / "passt.log")
                net_fd = os.dup(helper.qemu_end.fileno())
                helper.qemu_end.close()
                launch.fds.append(net_fd)
            # The serial log goes through a pump that caps it; QEMU holds the only write end.
            log_fd = serial_pump.start(
                config.serial_log, config.serial_log_max, run_dir / SERIAL_PUMP_PID
            )
            launch.fds.append(log_fd)
            argv = build_argv(
                qemu_binary(config.arch),
                dataclasses.replace(launch.config, serial_log_fd=log_fd),
                net_fd=net_fd,
            )
            _log.info(
                "VM %s (%s): QEMU command line: %s",
                config.name,
                config.instance_id,
                redact.command_line(argv),
            )
            pid = self._launch(argv, run_dir, Path(sockets["qmp"]), launch)
            if helper is not None and not processes.is_alive(helper.pid, helper.start):
                processes.kill_and_wait(pid)
                passt.raise_failed(run_dir / "passt.log")
        except BaseException:
            if helper is not None:
                passt.stop(helper.pid, helper.start)
            shutil.rmtree(run_dir, ignore_errors=True)
            if self.confinement is not None:
                self.confinement.book(config.instance_id).take_back_all()
            raise
        finally:
            launch.close_fds()
        pid_start = processes.start_time(pid)
        if pid_start is None:
            if helper is not None:
                passt.stop(helper.pid, helper.start)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise CloudletError(
                "QEMU exited right after it started", hint=SERIAL_LOG_HINT, next_steps=LOG_STEPS
            )
        info = RuntimeInfo(
            instance_id=config.instance_id,
            pid=pid,
            pid_start=pid_start,
            argv=argv,
            qemu_version=qemu_version(config.arch),
            qmp_socket=Path(sockets["qmp"]),
            agent_socket=Path(sockets["agent"]),
            console_socket=Path(sockets["console"]),
            serial_log=config.serial_log,
            started_at=time.time(),
            accel=config.accel,
            net_helper_pid=helper.pid if helper is not None else None,
            net_helper_start=helper.start if helper is not None else None,
        )
        write_record(run_dir, info)
        _log.info(
            "VM %s (%s): QEMU runs as pid %d (%s)",
            config.name,
            config.instance_id,
            pid,
            config.accel,
        )
        return info

    def _launch(self, argv: list[str], run_dir: Path, qmp_socket: Path, launch: Launch) -> int:
        """Start QEMU in its own session (it outlives us) and wait for its monitor.

        QEMU is not asked to -daemonize: its fork would be refused by
        ``-sandbox spawn=deny``. Startup errors land in qemu.log and are reported.
        """
        log_path = run_dir / "qemu.log"
        with open(log_path, "ab") as log:
            proc = spawn(
                argv,
                stdout=log.fileno(),
                stderr=log.fileno(),
                detach=True,
                pass_fds=launch.fds,
                credentials=launch.credentials,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = proc.poll()
            if code is not None:
                output = log_path.read_text(errors="replace")
                raise HostCommandError(argv, code, "", output, hint="check the VM's settings")
            if qmp_socket.exists():
                try:
                    qmp.status(qmp_socket, timeout=2.0)
                    return proc.pid
                except CloudletError:
                    pass
            if time.monotonic() > deadline:
                processes.kill_and_wait(proc.pid)
                raise Timeout(f"QEMU did not open its monitor within {START_TIMEOUT:.0f} s")
            time.sleep(0.02)

    def power_state(self, instance_id: str) -> PowerState:
        return power.power_state(self.runtime(instance_id))

    def request_shutdown(self, instance_id: str, *, via_agent: bool = False) -> None:
        info = self._require(instance_id)
        if not via_agent:
            qmp.execute(info.qmp_socket, "system_powerdown")
            return
        # guest-shutdown never answers: the agent goes down with the guest.
        with agent.connect(info.agent_socket) as conn:
            conn.send_only("guest-shutdown", {"mode": "powerdown"})

    def wait_shutdown(
        self, instance_id: str, timeout: float, *, cancel: CancelToken | None = None
    ) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            check(cancel)
            state = self.power_state(instance_id)
            if state in (PowerState.SHUTDOWN, PowerState.GONE, PowerState.ABSENT):
                return True
            if time.monotonic() >= deadline:
                return False
            pause(cancel, 0.2)

    def force_stop(self, instance_id: str) -> None:
        info = self.runtime(instance_id)
        if info is None:
            return
        if processes.is_alive(info.pid, info.pid_start):
            with contextlib.suppress(CloudletError):
                qmp.execute(info.qmp_socket, "quit", timeout=3.0)
            if not processes.wait_gone(info.pid, 5.0, info.pid_start):
                processes.kill_and_wait(info.pid, info.pid_start)
        _stop_helper(info)

    def cleanup(self, instance_id: str) -> None:
        info = self.runtime(instance_id)
        if info is not None and processes.is_alive(info.pid, info.pid_start):
            raise Conflict("QEMU still runs; stop it before cleaning up")
        serial_pump.finish(self._dir(instance_id) / SERIAL_PUMP_PID)
        if info is not None:
            _stop_helper(info)
        shutil.rmtree(self._dir(instance_id), ignore_errors=True)
        if self.confinement is not None:
            self.confinement.book(instance_id).take_back_all()

    def pause(self, instance_id: str) -> None:
        qmp.execute(self._require(instance_id).qmp_socket, "stop")

    def resume(self, instance_id: str) -> None:
        qmp.execute(self._require(instance_id).qmp_socket, "cont")

    def wait_agent(
        self, instance_id: str, timeout: float, *, cancel: CancelToken | None = None
    ) -> None:
        """Wait for the guest to open the agent's port (seen over QMP), then ping it.

        Polling the agent socket itself is slow: until qemu-ga opens its port,
        each try can only time out. QMP's query-chardev says the moment it does.
        """
        check(cancel)
        info = self._require(instance_id)
        deadline = time.monotonic() + timeout
        # The chardev wait asks ``alive`` about once a second: a cancel ends it there.
        qmp.wait_chardev_open(
            info.qmp_socket,
            AGENT_CHARDEV,
            AGENT_DEVICE,
            timeout=timeout,
            alive=lambda: (
                not (cancel and cancel.cancelled) and processes.is_alive(info.pid, info.pid_start)
            ),
        )
        check(cancel)
        if not processes.is_alive(info.pid, info.pid_start):
            raise CloudletError(
                "QEMU exited while the guest booted", hint=SERIAL_LOG_HINT, next_steps=LOG_STEPS
            )
        agent.wait_ready(info.agent_socket, max(1.0, deadline - time.monotonic()), cancel=cancel)

    def exec(
        self,
        instance_id: str,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float,
        cancel: CancelToken | None = None,
    ) -> ExecResult:
        info = self._require(instance_id)
        return agent.run_command(
            info.agent_socket, argv, stdin=stdin, timeout=timeout, cancel=cancel
        )

    def open_terminal(
        self, instance_id: str, argv: list[str], *, rows: int, cols: int
    ) -> GuestTerminal:
        info = self._require(instance_id)
        if not info.agent_socket.exists():
            raise GuestError("the VM has no guest agent to start a terminal with")
        return terminal.open_terminal(info, argv, rows, cols)

    def guest_info(self, instance_id: str) -> GuestInfo:
        info = self._require(instance_id)
        with agent.connect(info.agent_socket) as conn:
            version = conn.call_dict("guest-info").get("version", "")
            try:
                osinfo = conn.call_dict("guest-get-osinfo")
            except CloudletError:
                osinfo = {}
            try:
                hostname = conn.call_dict("guest-get-host-name").get("host-name", "")
            except CloudletError:
                hostname = ""
        # Printed as they are by frontends: no escapes, no screens of text.
        return GuestInfo(
            agent_version=agent.clean_text(version),
            os_name=agent.clean_text(osinfo.get("pretty-name", "")),
            hostname=agent.clean_text(hostname),
        )

    def copy_in(
        self,
        instance_id: str,
        src: Path,
        dest: str,
        *,
        progress: CopyProgress | None = None,
        mode: int | None = None,
        owner: GuestOwner | None = None,
    ) -> int:
        info = self._require(instance_id)
        return guest_files.copy_in(
            info.agent_socket, src, dest, progress=progress, mode=mode, owner=owner
        )

    def copy_out(
        self,
        instance_id: str,
        src: str,
        dest: Path,
        *,
        progress: CopyProgress | None = None,
        limits: CopyLimits | None = None,
    ) -> int:
        info = self._require(instance_id)
        return guest_files.copy_out(info.agent_socket, src, dest, progress=progress, limits=limits)

    def copy_tree_in(
        self,
        instance_id: str,
        src: Path,
        dest: str,
        *,
        progress: CopyProgress | None = None,
        owner: GuestOwner | None = None,
    ) -> TreeCopy:
        info = self._require(instance_id)
        return guest_tree.copy_tree_in(info.agent_socket, src, dest, progress=progress, owner=owner)

    def copy_tree_out(
        self,
        instance_id: str,
        src: str,
        dest: Path,
        *,
        progress: CopyProgress | None = None,
        limits: CopyLimits | None = None,
    ) -> TreeCopy:
        info = self._require(instance_id)
        return guest_tree.copy_tree_out(
            info.agent_socket, src, dest, progress=progress, limits=limits
        )

    # ---------------------------------------------------------------- storage (live)
    def _blocks(self, info: RuntimeInfo) -> list[dict[str, Any]]:
        result = qmp.execute(info.qmp_socket, "query-block")
        return list(result)

    def _root_block(self, info: RuntimeInfo) -> dict[str, Any]:
        for block in self._blocks(info):
            if _qdev_id(str(block.get("qdev", ""))) == ROOT_DEVICE and block.get("inserted"):
                return dict(block["inserted"])
        raise Conflict("the VM has no root disk device (disk0-dev)")

    def _hotplug_ports(self, info: RuntimeInfo) -> bool:
        """Whether the VM has hot-plug root ports (machines that need them must have)."""
        ports = any(a.startswith("pcie-root-port,") for a in info.argv)
        machine = info.argv[info.argv.index("-machine") + 1] if "-machine" in info.argv else ""
        if not ports and machine.startswith(("q35", "virt")):
            raise Conflict(
                "this VM was started before cloudlet gave VMs hot-plug ports",
                hint="attach while it is stopped, or stop and start it once",
            )
        return ports

    def attach_disk(self, instance_id: str, disk: ExtraDisk) -> None:
        info = self._require(instance_id)
        ports = self._hotplug_ports(info)
        creds = self._credentials(info)
        if creds is not None and self.confinement is not None:
            self.confinement.give_volume(instance_id, disk.path, creds)
        try:
            qmp.execute(info.qmp_socket, "blockdev-add", disk_node(disk))
            try:
                qmp.execute(info.qmp_socket, "device_add", dict(disk_device(disk, ports=ports)))
            except BaseException:
                with contextlib.suppress(CloudletError):
                    qmp.execute(info.qmp_socket, "blockdev-del", {"node-name": disk.node})
                raise
        except BaseException:
            self._take_back(instance_id, disk.path)
            raise

    def _credentials(self, info: RuntimeInfo) -> Credentials | None:
        """The running QEMU's user, when it is not root."""
        if self.confinement is None:
            return None
        return self.confinement.credentials_of(info.pid)

    def _take_back(self, instance_id: str, path: Path) -> None:
        if self.confinement is not None:
            self.confinement.book(instance_id).take_back(path)

    def detach_disk(self, instance_id: str, disk: ExtraDisk, timeout: float = 30.0) -> None:
        info = self._require(instance_id)
        if disk.device_id in self._device_ids(info):
            self._unplug(info, disk.device_id, timeout)
        if disk.node in self._node_names(info):
            qmp.execute(info.qmp_socket, "blockdev-del", {"node-name": disk.node})
        self._take_back(instance_id, disk.path)

    def _unplug(self, info: RuntimeInfo, device_id: str, timeout: float) -> None:
        qmp.unplug(info.qmp_socket, device_id, timeout)

    def _device_ids(self, info: RuntimeInfo) -> set[str]:
        return {_qdev_id(str(b.get("qdev", ""))) for b in self._blocks(info)}

    def _nodes(self, info: RuntimeInfo) -> list[dict[str, Any]]:
        return list(qmp.execute(info.qmp_socket, "query-named-block-nodes", {"flat": True}))

    def _node_names(self, info: RuntimeInfo) -> set[str]:
        return {str(n["node-name"]) for n in self._nodes(info)}

    def attached_disks(self, instance_id: str) -> list[str]:
        info = self._require(instance_id)
        found = []
        for block in self._blocks(info):
            device = _qdev_id(str(block.get("qdev", "")))
            if (
                block.get("inserted")
                and device.endswith("-dev")
                and (device not in _BUILTIN_DEVICES)
            ):
                found.append(str(block["inserted"]["node-name"]))
        return sorted(found)

    def resize_disk(self, instance_id: str, node: str, size: int) -> None:
        info = self._require(instance_id)
        qmp.execute(info.qmp_socket, "block_resize", {"node-name": node, "size": size})

    def snapshot_disk(self, instance_id: str, new_top: Path) -> None:
        info = self._require(instance_id)
        top = self._root_block(info)
        creds = self._credentials(info)
        if creds is not None:  # QEMU makes the layer: in a directory its group may add to
            share_dir(new_top.parent, creds.gid, 0o1770)
        qmp.execute(
            info.qmp_socket,
            "blockdev-snapshot-sync",
            {
                "node-name": top["node-name"],
                "snapshot-file": str(new_top),
                "snapshot-node-name": _layer_node(new_top),
                "format": "qcow2",
                "mode": "absolute-paths",
            },
            timeout=60.0,
        )

    def unsnapshot_disk(self, instance_id: str, top: Path) -> None:
        info = self._require(instance_id)
        chain = self.disk_chain(instance_id)
        if len(chain) < 2 or chain[0] != top:
            raise Conflict(f"the running VM's active disk layer is not {top}")
        job = "commit-" + _layer_node(top)
        events = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")

        def ended(name: str, data: dict[str, Any]) -> bool:
            return data.get("device") == job and name != "BLOCK_JOB_READY"

        # An active commit: copies what top holds (nothing, the guest is paused) into
        # the layer below, then waits for block-job-complete to switch the guest over.
        data = qmp.execute_and_wait(
            info.qmp_socket,
            "block-commit",
            # base-node: without it QEMU commits into the bottom of the chain (the image)
            {
                "job-id": job,
                "device": self._node_for(info, top),
                "base-node": self._node_for(info, chain[1]),
            },
            events=events,
            done=lambda _name, d: d.get("device") == job,
            timeout=JOB_TIMEOUT,
        )
        if "error" not in data and data.get("offset") == data.get("len"):
            data = qmp.execute_and_wait(
                info.qmp_socket,
                "block-job-complete",
                {"device": job},
                events=events,
                done=ended,
                timeout=JOB_TIMEOUT,
            )
        if data.get("error") or data.get("offset") != data.get("len"):
            raise CloudletError(
                f"dropping the disk layer {top.name} failed: "
                f"{data.get('error', 'the job was cancelled')}"
            )

    def disk_chain(self, instance_id: str) -> list[Path]:
        info = self._require(instance_id)
        image: dict[str, Any] | None = self._root_block(info).get("image")
        chain = []
        while image is not None:
            chain.append(Path(str(image["filename"])))
            image = image.get("backing-image")
        return chain

    def _node_for(self, info: RuntimeInfo, path: Path) -> str:
        """The format node (not the protocol node) that opens ``path``."""
        for node in self._nodes(info):
            if node.get("drv") != "file" and Path(str(node.get("file", ""))) == path:
                return str(node["node-name"])
        raise Conflict(f"the running VM has no disk layer {path}")

    def stream_disk(self, instance_id: str, top: Path, base: Path | None) -> None:
        info = self._require(instance_id)
        chain = self.disk_chain(instance_id)
        below = chain[chain.index(top) + 1 :] if top in chain else []
        dropped = below[: below.index(base)] if base in below else below
        job = "stream-" + _layer_node(top)
        args: dict[str, Any] = {"job-id": job, "device": self._node_for(info, top)}
        if base is not None:
            args["base-node"] = self._node_for(info, base)
        data = qmp.execute_and_wait(
            info.qmp_socket,
            "block-stream",
            args,
            events=("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR"),
            done=lambda name, d: d.get("device") == job and name != "BLOCK_JOB_ERROR",
            timeout=JOB_TIMEOUT,
        )
        if data.get("error") or data.get("offset") != data.get("len"):
            raise CloudletError(
                f"merging the disk layers failed: {data.get('error', 'the job was cancelled')}",
                hint="the snapshot is kept; try again",
            )
        self._release_layers(info, dropped)

    def _release_layers(self, info: RuntimeInfo, dropped: list[Path]) -> None:
        """Close the layers a merge took out of the chain. The root disk's first layer was
        opened with -blockdev, so QEMU keeps it (and its file, even once deleted, with the
        space it holds) until it is deleted by name; layers snapshots made go by themselves."""
        for node in self._nodes(info):
            if node.get("drv") != "file" and Path(str(node.get("file", ""))) in dropped:
                with contextlib.suppress(CloudletError):  # not the monitor's: already gone
                    qmp.execute(info.qmp_socket, "blockdev-del", {"node-name": node["node-name"]})

    def freeze_filesystems(self, instance_id: str) -> int:
        info = self._require(instance_id)
        with agent.connect(info.agent_socket, timeout=60.0) as conn:
            return agent.as_int(conn.call("guest-fsfreeze-freeze"), "guest-fsfreeze-freeze")

    def thaw_filesystems(self, instance_id: str) -> int:
        info = self._require(instance_id)
        with agent.connect(info.agent_socket, timeout=60.0) as conn:
            return agent.as_int(conn.call("guest-fsfreeze-thaw"), "guest-fsfreeze-thaw")

    # ---------------------------------------------------------------- network (live)
    def _nic_model(self, info: RuntimeInfo) -> str:
        return "e1000" if any(a.startswith("e1000,") for a in info.argv) else "virtio-net-pci"

    def attach_nic(self, instance_id: str, nic: TapNic) -> None:
        info = self._require(instance_id)
        ports = self._hotplug_ports(info)
        if self._credentials(info) is None:
            qmp.execute(info.qmp_socket, "netdev_add", dict(tap_netdev(nic)))
        else:  # a QEMU that is not root gets the TAP open (getfd), as at start
            fd = open_tap(nic.tap)
            try:
                qmp.execute_with_fd(
                    info.qmp_socket,
                    fd,
                    ("getfd", {"fdname": nic.node}),
                    lambda _: ("netdev_add", {"type": "tap", "id": nic.node, "fd": nic.node}),
                )
            finally:
                os.close(fd)
        try:
            device = nic_device(nic, model=self._nic_model(info), ports=ports)
            qmp.execute(info.qmp_socket, "device_add", dict(device))
        except BaseException:
            with contextlib.suppress(CloudletError):
                qmp.execute(info.qmp_socket, "netdev_del", {"id": nic.node})
            raise

    def detach_nic(self, instance_id: str, nic: TapNic, timeout: float = 30.0) -> None:
        info = self._require(instance_id)
        if nic.device_id in self._peripherals(info):
            self._unplug(info, nic.device_id, timeout)
        with contextlib.suppress(CloudletError):
            qmp.execute(info.qmp_socket, "netdev_del", {"id": nic.node})

    def _peripherals(self, info: RuntimeInfo) -> set[str]:
        items = qmp.execute(info.qmp_socket, "qom-list", {"path": "/machine/peripheral"})
        return {str(item["name"]) for item in items}

    def attached_nics(self, instance_id: str) -> list[str]:
        info = self._require(instance_id)
        return sorted(
            device.removesuffix("-dev")
            for device in self._peripherals(info)
            if device.startswith("tn") and device.endswith("-dev")
        )

    def _hmp(self, info: RuntimeInfo, command: str, ok: str = "") -> None:
        """A monitor command that only speaks (in text) when it fails, or says ``ok``."""
        answer = qmp.execute(info.qmp_socket, "human-monitor-command", {"command-line": command})
        text = str(answer or "").strip()
        if text and not (ok and text.endswith(ok)):
            raise MonitorError(f"QEMU refused {command.split()[0]}: {str(answer).strip()}")

    def live_host_forwards(self, instance_id: str) -> bool:
        info = self._require(instance_id)
        return info.net_helper_pid is None  # passt binds its forwards only when it starts

    def add_host_forward(self, instance_id: str, forward: HostForward) -> None:
        info = self._require(instance_id)
        if "-netdev" not in info.argv or not any(a.startswith("user,") for a in info.argv):
            raise Conflict("the VM has no user-mode NAT NIC", hint="forward on a bridged NIC")
        self._hmp(info, f"hostfwd_add net0 {host_forward_rule(forward)}")

    def remove_host_forward(self, instance_id: str, forward: HostForward) -> None:
        info = self._require(instance_id)
        rule = host_forward_rule(forward).rsplit("-", 1)[0]  # tcp:127.0.0.1:8080
        self._hmp(info, f"hostfwd_remove net0 {rule}", ok="removed")

    # ---------------------------------------------------------------- backups (live)
    def _bitmap_node(self, info: RuntimeInfo, node: str | None) -> str:
        """The format node a backup bitmap lives on: the root's active layer or a volume."""
        return node if node is not None else str(self._root_block(info)["node-name"])

    def disk_bitmaps(self, instance_id: str, node: str | None = None) -> list[DirtyBitmap]:
        info = self._require(instance_id)
        wanted = self._bitmap_node(info, node)
        for found in self._nodes(info):
            if found.get("node-name") == wanted:
                return [
                    DirtyBitmap(
                        name=str(b["name"]),
                        recording=bool(b.get("recording", True)),
                        inconsistent=bool(b.get("inconsistent", False)),
                        count=int(b.get("count", 0)),
                    )
                    for b in found.get("dirty-bitmaps", [])
                ]
        if node is not None:
            raise Conflict(f"the running VM has no disk node {node}")
        return []

    def backup_disks(
        self,
        instance_id: str,
        copies: Sequence[DiskCopy],
        *,
        speed: int = 0,
        started: Callable[[], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        info = self._require(instance_id)
        targets: list[str] = []
        actions: list[dict[str, Any]] = []
        try:
            for copy in copies:
                device = self._bitmap_node(info, copy.node)
                target_node = "b" + _layer_node(copy.target)[1:]
                self._open_target(info, copy.target, target_node)
                targets.append(target_node)
                backup: dict[str, Any] = {
                    "job-id": "backup-" + target_node,
                    "device": device,
                    "target": target_node,
                    "sync": "full",
                }
                if copy.since is not None:
                    # "bitmap" with mode "never": like "incremental", but the old bitmap
                    # stays as it is until the backup is recorded (a failure loses nothing).
                    backup.update(sync="bitmap", bitmap=copy.since, **{"bitmap-mode": "never"})
                if speed:
                    backup["speed"] = speed
                if copy.new_bitmap is not None:
                    actions.append(
                        {
                            "type": "block-dirty-bitmap-add",
                            "data": {"node": device, "name": copy.new_bitmap, "persistent": True},
                        }
                    )
                actions.append({"type": "blockdev-backup", "data": backup})
            jobs = {"backup-" + t for t in targets}
            ended: dict[str, dict[str, Any]] = {}

            def all_ended(_name: str, data: dict[str, Any]) -> bool:
                if data.get("device") in jobs:
                    ended[str(data["device"])] = data
                return len(ended) == len(jobs)

            # One transaction: every bitmap starts and every copy begins at one instant.
            qmp.execute_and_wait(
                info.qmp_socket,
                "transaction",
                {"actions": actions},
                events=("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"),
                done=all_ended,
                timeout=JOB_TIMEOUT,
                accepted=started,
                cancel=cancel,
                on_cancel=[("block-job-cancel", {"device": j, "force": True}) for j in jobs],
            )
            failed = [
                d for d in ended.values() if d.get("error") or d.get("offset") != d.get("len")
            ]
            if failed:
                self._resume_after_copy_failure(info)
                for copy in copies:
                    if copy.new_bitmap is not None:
                        with contextlib.suppress(CloudletError):
                            self.remove_bitmap(instance_id, copy.new_bitmap, copy.node)
                check(cancel)  # stopped because the caller cancelled: say so
                full = [d for d in failed if out_of_space(d.get("error"))]
                if full:
                    target = copies[targets.index(str(full[0]["device"])[len("backup-") :])].target
                    raise OutOfSpace(
                        f"the backup copy into {target} failed: {full[0]['error']}",
                        path=target,
                        hint="earlier backups are untouched; free space there and try again",
                    )
                raise CloudletError(
                    f"the backup copy failed: {failed[0].get('error', 'the job was cancelled')}",
                    hint="earlier backups are untouched; try again",
                )
        finally:
            for target_node in targets:
                with contextlib.suppress(CloudletError):
                    qmp.execute(info.qmp_socket, "blockdev-del", {"node-name": target_node})

    def _resume_after_copy_failure(self, info: RuntimeInfo) -> None:
        """A guest write that met the backup's copy-before-write when the target had no
        room failed with ENOSPC, so QEMU paused the guest (werror=enospc). The job and its
        filter are gone now: resuming retries that write on the VM's own disk."""
        with contextlib.suppress(CloudletError):
            if qmp.status(info.qmp_socket, timeout=5.0) == "io-error":
                qmp.execute(info.qmp_socket, "cont")

    def _open_target(self, info: RuntimeInfo, target: Path, node: str) -> None:
        """Open a backup target in the store for QEMU: root opens it and passes the fd
        (add-fd, /dev/fdset/N), so QEMU needs no way into the backup store."""
        fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
        try:
            qmp.execute_with_fd(
                info.qmp_socket,
                fd,
                ("add-fd", {}),
                lambda added: (
                    "blockdev-add",
                    {
                        "driver": "qcow2",
                        "node-name": node,
                        "file": {"driver": "file", "filename": f"/dev/fdset/{added['fdset-id']}"},
                    },
                ),
            )
        finally:
            os.close(fd)

    def remove_bitmap(self, instance_id: str, name: str, node: str | None = None) -> None:
        info = self._require(instance_id)
        qmp.execute(
            info.qmp_socket,
            "block-dirty-bitmap-remove",
            {"node": self._bitmap_node(info, node), "name": name},
        )

    # ---------------------------------------------------------------- memory state
    def _migrate(self, info: RuntimeInfo, fd: int, command: str, what: str, path: Path) -> None:
        # A paused guest's RAM goes out as fast as the disk takes it (the default limit is
        # 128 MiB/s, made for live migration over a network).
        setup = [("migrate-set-parameters", {"max-bandwidth": 1 << 40})]
        data = qmp.migrate_fd(
            info.qmp_socket,
            fd,
            command,
            setup=setup if command == "migrate" else None,
            timeout=STATE_TIMEOUT,
        )
        if data.get("status") != "completed":
            reason = data.get("error-desc") or data.get("status")
            if out_of_space(reason):
                raise OutOfSpace(f"QEMU could not {what} the memory state: {reason}", path=path)
            raise CloudletError(f"QEMU could not {what} the memory state: {reason}")

    def save_state(self, instance_id: str, target: Path) -> None:
        info = self._require(instance_id)
        if qmp.status(info.qmp_socket) not in power.PAUSED_STATES:
            raise Conflict("the VM must be paused while its memory state is saved")
        # The layers' directory is the VM user's to add to: never write through its links.
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            self._migrate(info, fd, "migrate", "save", target)
        finally:
            os.close(fd)

    def restore_state(self, instance_id: str, source: Path) -> None:
        info = self._require(instance_id)
        if "-incoming" not in info.argv:
            raise Conflict("the VM was not started to receive a memory state")
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)  # a link would feed QEMU a host file
        try:
            self._migrate(info, fd, "migrate-incoming", "load", source)
        finally:
            os.close(fd)
