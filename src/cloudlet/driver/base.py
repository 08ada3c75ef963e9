"""The Driver interface and the resolved launch configuration it consumes."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cloudlet.guest.accounts import GuestOwner
from cloudlet.guest.copy_rules import CopyProgress, TreeCopy
from cloudlet.guest.landing import CopyLimits
from cloudlet.progress import CancelToken
from cloudlet.spec.slots import HOTPLUG_SLOTS as HOTPLUG_SLOTS


@dataclass(frozen=True)
class ExtraDisk:
    """A data volume attached to a VM, at boot or by hot-plug.

    ``node`` names the QEMU block node (the device is ``<node>-dev``); ``slot`` is the
    hot-plug port it sits on (machines with PCIe root ports), or None. ``format`` is the
    QEMU format driver (qcow2, raw) and ``protocol`` the one under it: ``file`` for a
    file, ``host_device`` for a host block device such as an LVM volume.
    """

    node: str
    path: Path
    format: str = "qcow2"
    serial: str = ""
    slot: int | None = None
    protocol: str = "file"

    @property
    def device_id(self) -> str:
        return f"{self.node}-dev"


@dataclass(frozen=True)
class TapNic:
    """A NIC on a virtual network: QEMU opens the TAP cloudlet made (``ifname``).

    ``node`` names the netdev (the device is ``<node>-dev``); ``slot`` is the hot-plug
    port it sits on when it was added to a running VM (shared with volumes), or None.
    """

    node: str
    tap: str
    mac: str
    slot: int | None = None
    # An open fd on the TAP, passed to a QEMU that may not open /dev/net/tun itself.
    fd: int | None = None

    @property
    def device_id(self) -> str:
        return f"{self.node}-dev"


@dataclass(frozen=True)
class HostForward:
    """A user-mode NAT port forward: host 127.0.0.1:host_port -> guest guest_port."""

    proto: str
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class Channel:
    """A virtio-serial port whose host end is a unix socket cloudlet listens on.

    QEMU connects to ``socket`` as a client when it starts, so the host end is
    connected before the guest can open the port. ``console`` makes it a
    virtconsole (an hvc terminal in the guest) instead of a plain port.
    """

    name: str
    socket: Path
    console: bool = False


@dataclass(frozen=True)
class Share:
    """A host directory served by virtiofsd on ``socket``, mounted by the guest by ``tag``."""

    tag: str
    socket: Path


@dataclass(frozen=True)
class LaunchConfig:
    """Everything needed to boot one VM, fully resolved: no lookups left to do."""

    instance_id: str
    name: str
    arch: str
    accel: str
    cpus: int
    memory_mib: int
    disk: Path
    disk_format: str
    runtime_dir: Path
    serial_log: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    machine: str = "q35"
    # "modern": q35/virt, virtio everywhere. "legacy": i440fx, IDE disk, e1000 NIC, BIOS,
    # for old guest OSes.
    profile: str = "modern"
    # Extra read-only disks, such as a cloud-init seed ISO (attached as CD-ROM/virtio).
    seed_iso: Path | None = None
    # An installer ISO to boot from (the root disk is then empty).
    install_iso: Path | None = None
    network_mode: str = "nat"
    network_restrict: bool = False
    ssh_port: int | None = None
    uuid: str = ""
    # Process VMs: no guest agent in a sandbox, extra channels for stdio and copies,
    # virtiofs shares (which need guest RAM QEMU can share with virtiofsd), and a
    # QEMU that exits when the guest powers off instead of waiting to be reaped.
    guest_agent: bool = True
    channels: tuple[Channel, ...] = ()
    shares: tuple[Share, ...] = ()
    exit_on_poweroff: bool = False
    # Spare PCIe root ports for hot-plug; a process VM never hot-plugs, so it skips them.
    hotplug: bool = True
    # Data volumes attached to the VM, in slot order.
    extra_disks: tuple[ExtraDisk, ...] = ()
    # NICs on virtual networks (after the user-mode NIC), and user-mode port forwards.
    tap_nics: tuple[TapNic, ...] = ()
    host_forwards: tuple[HostForward, ...] = ()
    # Wait for a saved RAM and device state (``-incoming defer``): restore_state loads it.
    incoming: bool = False
    # The serial log's cap (it is rotated to serial.log.1 there), and the pipe QEMU
    # writes it through (set by the driver at launch; None: QEMU writes the file itself).
    serial_log_max: int = 1024 * 1024
    serial_log_fd: int | None = None
    # A linked clone's base: a snapshot layer in another VM's directory (the engine
    # vouches for it; a disk header, which the guest's QEMU can rewrite, is not asked).
    linked_base: Path | None = None


@dataclass(frozen=True)
class DiskCopy:
    """One disk of a live backup, copied into ``target`` (an empty qcow2 of its size).

    ``node`` None is the root disk's active layer, else a volume's block node. A
    persistent bitmap ``new_bitmap`` starts recording on it at the backup's instant
    (None: none starts, as on a raw volume, which cannot keep one); ``since`` None copies
    all of it, else only the clusters dirty in that bitmap (which is left as it was).
    """

    target: Path
    node: str | None = None
    new_bitmap: str | None = None
    since: str | None = None


@dataclass(frozen=True)
class DirtyBitmap:
    """A dirty bitmap on a disk's active layer: which clusters changed since it began.

    ``inconsistent``: QEMU did not close the disk cleanly while it recorded (kill -9,
    host crash), so it may miss writes and can only be removed.
    """

    name: str
    recording: bool
    inconsistent: bool
    count: int  # dirty bytes


class PowerState(StrEnum):
    """What the hypervisor says about a VM's process."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # the guest powered off; the process waits to be reaped
    FAILED = "failed"  # the process lives but the guest hit an internal error or panicked
    # QEMU paused the guest: a disk write found no space left on the host (werror=enospc);
    # resume retries the write once there is space again
    NO_SPACE = "no-space"
    GONE = "gone"  # a record exists but the process died (crash, kill -9)
    ABSENT = "absent"  # no record: never started, or cleanly stopped


@dataclass(frozen=True)
class RuntimeInfo:
    """The on-disk record of a running VM: enough for any process to re-adopt it."""

    instance_id: str
    pid: int
    pid_start: int
    argv: list[str]
    qemu_version: str
    qmp_socket: Path
    agent_socket: Path
    console_socket: Path
    serial_log: Path
    started_at: float
    accel: str
    # The user-mode network's back end (passt), a process of its own: stopped with the VM.
    net_helper_pid: int | None = None
    net_helper_start: int | None = None


@dataclass(frozen=True)
class ExecResult:
    """A command's outcome inside the guest."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    signal: int | None = None
    truncated: bool = False

    @property
    def shell_code(self) -> int:
        """Exit code as a shell reports it: 128+N for death by signal N."""
        return 128 + self.signal if self.signal is not None else self.exit_code


class GuestTerminal(abc.ABC):
    """A program running in the guest on a pseudo-terminal of its own.

    ``fileno`` can be waited on (select) for output; ``read`` returns b"" once the
    stream has ended. Bytes from the guest are the terminal's, to be shown as they
    are: nothing here interprets them.
    """

    @abc.abstractmethod
    def fileno(self) -> int: ...

    @abc.abstractmethod
    def read(self, size: int = 65536) -> bytes:
        """What the program wrote to its terminal (b"" at the end)."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Keystrokes for the program; dropped once it has gone."""

    @abc.abstractmethod
    def exit_code(self) -> int | None:
        """None while the program runs, then its exit code (128+N for signal N)."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the session: a program still running is killed (with its terminal's
        session), and everything plugged for it is removed. Idempotent."""

    def __enter__(self) -> GuestTerminal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class GuestInfo:
    """What the guest agent reports about the guest."""

    agent_version: str = ""
    os_name: str = ""
    hostname: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class Driver(abc.ABC):
    """How the engine tells a hypervisor what to do. Implementations: qemu, fake."""

    name: str = "abstract"

    def process_user(self) -> str:
        """Who the hypervisor's processes run as (``cloudlet host`` shows it)."""
        return "the user running cloudlet"

    def take_notices(self) -> list[str]:
        """Warnings from the last calls a user should hear (e.g. QEMU kept as root)."""
        return []

    @abc.abstractmethod
    def start(self, config: LaunchConfig) -> RuntimeInfo:
        """Boot the VM detached from the caller; return once the process runs."""

    @abc.abstractmethod
    def power_state(self, instance_id: str) -> PowerState:
        """Look at the VM's process without changing anything."""

    @abc.abstractmethod
    def runtime(self, instance_id: str) -> RuntimeInfo | None:
        """The runtime record, if one exists."""

    @abc.abstractmethod
    def request_shutdown(self, instance_id: str, *, via_agent: bool = False) -> None:
        """Press the ACPI power button (or ask the guest agent); returns at once."""

    @abc.abstractmethod
    def wait_shutdown(
        self, instance_id: str, timeout: float, *, cancel: CancelToken | None = None
    ) -> bool:
        """Wait for the guest to power off; True if it did within ``timeout``.

        A cancelled ``cancel`` raises Cancelled promptly; the VM is left as it is."""

    @abc.abstractmethod
    def force_stop(self, instance_id: str) -> None:
        """Stop now: QMP quit, then SIGKILL if that fails. Idempotent."""

    @abc.abstractmethod
    def cleanup(self, instance_id: str) -> None:
        """Remove the runtime record and sockets; the process must be gone. Idempotent."""

    @abc.abstractmethod
    def pause(self, instance_id: str) -> None: ...

    @abc.abstractmethod
    def resume(self, instance_id: str) -> None: ...

    @abc.abstractmethod
    def wait_agent(
        self, instance_id: str, timeout: float, *, cancel: CancelToken | None = None
    ) -> None:
        """Block until the guest agent answers; raise Timeout otherwise.

        A cancelled ``cancel`` raises Cancelled promptly; the VM boots on."""

    @abc.abstractmethod
    def exec(
        self,
        instance_id: str,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float,
        cancel: CancelToken | None = None,
    ) -> ExecResult:
        """Run a program inside the guest through its agent.

        A cancelled ``cancel`` raises Cancelled promptly; the agent cannot stop a program
        it started, so the program runs on in the guest (as after a Timeout)."""

    @abc.abstractmethod
    def open_terminal(
        self, instance_id: str, argv: list[str], *, rows: int, cols: int
    ) -> GuestTerminal:
        """Start ``argv`` in the guest (as root, through its agent) on a new pty of
        ``rows`` x ``cols``, and return the session once the program runs.

        Fails with Conflict when the VM has no running process, GuestError when the
        guest cannot give a terminal (no agent, no pty helper: its reason in one line),
        Timeout when it does not start one in time. A failed open leaves nothing
        plugged or running. Sessions whose caller died (killed, not closed) are ended
        and removed by the next open, so they never pile up or block it."""

    @abc.abstractmethod
    def guest_info(self, instance_id: str) -> GuestInfo: ...

    # ---------------------------------------------------------------- guest files
    @abc.abstractmethod
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
        """Copy the host file ``src`` to the absolute path ``dest`` in the running guest
        (no network: through its agent); return the bytes copied.

        ``dest`` ending in "/" or naming a directory in the guest gets the source's name
        appended; the file keeps the source's mode unless ``mode`` is given, and belongs
        to ``owner`` (None: to whoever the guest agent runs as, root). The bytes
        land under a temporary name that is renamed at the end: a copy that fails half
        way removes it and leaves nothing under the final name. Fails with Conflict when
        the VM has no running process, NotFound when ``src`` or the guest directory is
        missing, InvalidInput when ``src`` is not one regular file or ``dest`` is not
        absolute, GuestError when the guest refuses (a full disk)."""

    @abc.abstractmethod
    def copy_out(
        self,
        instance_id: str,
        src: str,
        dest: Path,
        *,
        progress: CopyProgress | None = None,
        limits: CopyLimits | None = None,
    ) -> int:
        """Copy the guest file ``src`` (absolute; links followed in the guest) to the host
        path ``dest``; return the bytes copied. The guest is not trusted.

        ``dest`` naming an existing local directory gets the source's name appended. The
        file is written through guest.landing.Landing: a symlink or a non-file at the
        target is refused (InvalidInput), never followed or replaced; setuid, setgid,
        sticky and world-write bits are dropped; more than ``limits`` bytes fails with
        CapacityExceeded, whatever size the guest claimed. A copy that fails leaves
        nothing at the target. Fails with Conflict when the VM has no running process,
        NotFound when ``src`` is missing in the guest, InvalidInput when it is a
        directory or not a regular file or not absolute."""

    @abc.abstractmethod
    def copy_tree_in(
        self,
        instance_id: str,
        src: Path,
        dest: str,
        *,
        progress: CopyProgress | None = None,
        owner: GuestOwner | None = None,
    ) -> TreeCopy:
        """Copy the host directory ``src`` and everything below it to the absolute path
        ``dest`` in the running guest, as a tar stream through its agent.

        ``dest`` ending in "/" or naming a directory in the guest gets the source's name
        appended; the target must not exist yet (it is never merged into). Only
        directories, regular files and symlinks that stay inside the tree are sent
        (guest.tree_in), with their modes, owned by ``owner`` (None: root). The tree lands
        under a temporary name beside the target that is renamed at the end: a copy that
        fails half way removes it. ``progress`` counts file bytes against their sum. A
        regular file ``src`` is copied as copy_in does (a tree of one file).
        Fails with Conflict when the VM has no running process, NotFound when ``src`` or
        the guest directory is missing, InvalidInput when ``src`` is a special file,
        holds one or a link out of the tree, when ``dest`` is not absolute or
        the target exists, GuestError when the guest cannot unpack it (a full disk)."""

    @abc.abstractmethod
    def copy_tree_out(
        self,
        instance_id: str,
        src: str,
        dest: Path,
        *,
        progress: CopyProgress | None = None,
        limits: CopyLimits | None = None,
    ) -> TreeCopy:
        """Copy the guest directory ``src`` (absolute) and everything below it to the host
        path ``dest``, as a tar stream the guest packs. The guest is not trusted.

        ``dest`` naming an existing local directory gets the source's name appended; the
        target must not exist yet. The stream is landed by guest.tree_out: plain files and
        directories only (links, devices and fifos are skipped and named in the result,
        never made or followed), no setuid, setgid, sticky or world-write, owned by the
        local user, within ``limits`` (CapacityExceeded past them); a member outside the
        tree or a broken stream is a GuestError. Everything lands in a temporary
        directory beside the target renamed at the end: a failure leaves nothing. Any
        temporary file in the guest is removed. ``progress`` counts the stream's bytes. A
        regular file ``src`` is copied as copy_out does (a tree of one file).
        Fails with Conflict when the VM has no running process, NotFound when ``src`` is
        missing in the guest, InvalidInput when it is a special file or not absolute."""

    # ---------------------------------------------------------------- storage (live)
    @abc.abstractmethod
    def attach_disk(self, instance_id: str, disk: ExtraDisk) -> None:
        """Hot-plug a disk into the running VM (block node, then device)."""

    @abc.abstractmethod
    def detach_disk(self, instance_id: str, disk: ExtraDisk, timeout: float = 30.0) -> None:
        """Unplug a disk: ask the guest to release the device, wait, drop the node."""

    @abc.abstractmethod
    def attached_disks(self, instance_id: str) -> list[str]:
        """Node names of the hot-pluggable disks the running VM has now."""

    @abc.abstractmethod
    def resize_disk(self, instance_id: str, node: str, size: int) -> None:
        """Grow a disk of the running VM; the guest sees the new size at once."""

    @abc.abstractmethod
    def snapshot_disk(self, instance_id: str, new_top: Path) -> None:
        """External snapshot of the root disk: ``new_top`` (created here, qcow2, backed by
        the current top) becomes the disk the guest writes to; the old top is frozen."""

    @abc.abstractmethod
    def unsnapshot_disk(self, instance_id: str, top: Path) -> None:
        """Undo snapshot_disk while the guest is paused: merge ``top`` (the active layer)
        into the layer below and make that the active one again. The file stays."""

    @abc.abstractmethod
    def stream_disk(self, instance_id: str, top: Path, base: Path | None) -> None:
        """Pull the data of the layers between ``base`` and ``top`` into ``top`` (a layer
        of the root disk's chain), so they drop out of the chain; wait until done."""

    @abc.abstractmethod
    def disk_chain(self, instance_id: str) -> list[Path]:
        """The root disk's files as the running VM sees them, top first."""

    @abc.abstractmethod
    def freeze_filesystems(self, instance_id: str) -> int:
        """Ask the guest agent to freeze its file systems; returns how many."""

    @abc.abstractmethod
    def thaw_filesystems(self, instance_id: str) -> int:
        """Undo freeze_filesystems; safe to call when nothing is frozen."""

    # ---------------------------------------------------------------- network (live)
    @abc.abstractmethod
    def attach_nic(self, instance_id: str, nic: TapNic) -> None:
        """Hot-plug a NIC on an existing TAP into the running VM (netdev, then device)."""

    @abc.abstractmethod
    def detach_nic(self, instance_id: str, nic: TapNic, timeout: float = 30.0) -> None:
        """Unplug a NIC: ask the guest to release the device, wait, drop the netdev."""

    @abc.abstractmethod
    def attached_nics(self, instance_id: str) -> list[str]:
        """Netdev ids of the TAP NICs the running VM has now."""

    @abc.abstractmethod
    def add_host_forward(self, instance_id: str, forward: HostForward) -> None:
        """Add a user-mode NAT port forward to the running VM."""

    @abc.abstractmethod
    def remove_host_forward(self, instance_id: str, forward: HostForward) -> None:
        """Remove a user-mode NAT port forward from the running VM."""

    def live_host_forwards(self, instance_id: str) -> bool:
        """Whether the running VM's user-mode NAT takes forwards now (else: at next start)."""
        return True

    # ---------------------------------------------------------------- backups (live)
    @abc.abstractmethod
    def disk_bitmaps(self, instance_id: str, node: str | None = None) -> list[DirtyBitmap]:
        """The dirty bitmaps on a disk of the running VM (``node`` None: the root disk's
        active layer, else a volume's block node)."""

    @abc.abstractmethod
    def backup_disks(
        self,
        instance_id: str,
        copies: Sequence[DiskCopy],
        *,
        speed: int = 0,
        started: Callable[[], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        """Copy every disk of ``copies`` as it is now, all at one instant (one
        transaction: the bitmaps start and the copies begin together, or nothing
        happens). ``started`` is called once that instant has passed (the guest may
        write again: thaw it). Waits until every copy is done; ``speed`` limits each
        (bytes/s, 0: no limit). A failed copy fails the call and drops the new bitmaps;
        a cancelled ``cancel`` stops the copies, drops them too and raises Cancelled."""

    @abc.abstractmethod
    def remove_bitmap(self, instance_id: str, name: str, node: str | None = None) -> None:
        """Drop a dirty bitmap from a disk (``node`` as in disk_bitmaps)."""

    # ---------------------------------------------------------------- memory state
    @abc.abstractmethod
    def save_state(self, instance_id: str, target: Path) -> None:
        """Write the paused VM's RAM and device state into ``target`` (created here); the
        VM stays paused (``resume`` runs it on). Refused unless the VM is paused."""

    @abc.abstractmethod
    def restore_state(self, instance_id: str, source: Path) -> None:
        """Load a state written by save_state into a VM started with ``incoming``; wait
        until it is loaded. The VM is then paused or running: ``resume`` runs it."""
