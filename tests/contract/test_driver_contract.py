"""One suite, two drivers: the fake must behave like real QEMU where the engine can tell."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudlet.driver.base import (
    DiskCopy,
    Driver,
    ExtraDisk,
    HostForward,
    LaunchConfig,
    PowerState,
    TapNic,
)
from cloudlet.errors import (
    Cancelled,
    CapacityExceeded,
    CloudletError,
    Conflict,
    InvalidInput,
    NotFound,
)
from cloudlet.guest.accounts import GuestOwner
from cloudlet.guest.landing import CopyLimits
from cloudlet.progress import CancelToken
from tests.cancelling import cancelled_soon
from tests.terminal_talk import talk


@dataclass
class Target:
    driver: Driver
    config: LaunchConfig
    make_disk: Callable[[Path, int], None]


def _fake_disk(path: Path, size: int) -> None:
    path.write_text(json.dumps({"size": size}))


def _config(home: Path, accel: str, image_dir: Path | None) -> LaunchConfig:
    instance_id = str(uuid.uuid4())
    return LaunchConfig(
        instance_id=instance_id,
        name="contract",
        arch="x86_64",
        accel=accel,
        cpus=2,
        memory_mib=512,
        disk=home / "disk.qcow2",
        disk_format="qcow2",
        runtime_dir=home / "run" / instance_id,
        serial_log=home / "serial.log",
        kernel=image_dir / "vmlinuz" if image_dir else None,
        initrd=image_dir / "initrd.img" if image_dir else None,
        network_restrict=True,
    )


@pytest.fixture(params=["fake", pytest.param("qemu", marks=pytest.mark.integration)])
def target(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[Target]:
    if request.param == "fake":
        from cloudlet.driver.fake.driver import FakeDriver

        yield Target(FakeDriver(), _config(short_tmp, "tcg", None), _fake_disk)
        return
    from cloudlet.config import Paths
    from cloudlet.driver.qemu.driver import QemuDriver
    from cloudlet.host.kvm import AccelVerdict
    from cloudlet.images.store import ImageStore
    from cloudlet.storage.qcow2 import create_blank, create_overlay

    shared: Path = request.getfixturevalue("shared_state")
    paths = Paths(shared)
    image = ImageStore(paths.images, paths.cache / "debs").get("tiny")
    verdict = AccelVerdict(**__import__("json").loads((shared / "host" / "accel.json").read_text()))
    config = _config(short_tmp, verdict.accel, image.path)
    config = LaunchConfig(**{**config.__dict__, "cmdline": image.cmdline})
    create_overlay(image.disk, image.disk_format, config.disk)
    driver = QemuDriver(short_tmp / "run")
    try:
        yield Target(driver, config, create_blank)
    finally:
        driver.force_stop(config.instance_id)
        driver.cleanup(config.instance_id)


def test_lifecycle(target: Target) -> None:
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    assert d.power_state(iid) == PowerState.ABSENT and d.runtime(iid) is None
    info = d.start(cfg)
    assert info.pid > 0 and d.runtime(iid) == info
    assert d.power_state(iid) == PowerState.RUNNING
    d.wait_agent(iid, 180)
    assert d.exec(iid, ["nproc"], timeout=60).stdout.strip() == b"2"
    failing = d.exec(iid, ["sh", "-c", "exit 3"], timeout=60)
    assert failing.exit_code == 3 and failing.shell_code == 3
    assert d.exec(iid, ["cat"], stdin=b"piped\n", timeout=60).stdout == b"piped\n"
    d.pause(iid)
    assert d.power_state(iid) == PowerState.PAUSED
    d.resume(iid)
    assert d.power_state(iid) == PowerState.RUNNING
    d.request_shutdown(iid)
    assert d.wait_shutdown(iid, 60)
    assert d.power_state(iid) in (PowerState.SHUTDOWN, PowerState.GONE)
    d.force_stop(iid)
    with pytest.raises(CloudletError):
        d.exec(iid, ["true"], timeout=5)
    d.cleanup(iid)
    assert d.power_state(iid) == PowerState.ABSENT
    d.force_stop(iid)  # idempotent
    d.cleanup(iid)


def test_waits_stop_promptly_when_cancelled_from_another_thread(target: Target) -> None:
    """A running guest nobody asked to stop, a program that sleeps: both waits would block
    for minutes; a cancel ends them within seconds and the VM runs on, its agent fine."""
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    d.start(cfg)
    d.wait_agent(iid, 180)
    hang = getattr(d, "hang", None)  # the fake has no clock: its guest must hang to block
    if hang is not None:
        hang(iid)
    with cancelled_soon(0.5) as token:
        d.wait_shutdown(iid, 300, cancel=token)
    with cancelled_soon(0.5) as token:
        d.exec(iid, ["sleep", "300"], timeout=300, cancel=token)
    done = CancelToken()
    done.cancel()
    with pytest.raises(Cancelled):
        d.wait_agent(iid, 180, cancel=done)
    if hang is not None:
        hang(iid, False)
    assert d.power_state(iid) == PowerState.RUNNING
    assert d.exec(iid, ["echo", "alive"], timeout=60).stdout == b"alive\n"


def test_start_twice_is_refused_and_cleanup_needs_a_stopped_vm(target: Target) -> None:
    d, cfg = target.driver, target.config
    d.start(cfg)
    with pytest.raises(CloudletError):
        d.cleanup(cfg.instance_id)
    d.force_stop(cfg.instance_id)
    d.cleanup(cfg.instance_id)
    assert d.power_state(cfg.instance_id) == PowerState.ABSENT


def test_guest_info(target: Target) -> None:
    d, cfg = target.driver, target.config
    d.start(cfg)
    d.wait_agent(cfg.instance_id, 180)
    info = d.guest_info(cfg.instance_id)
    assert info.agent_version


def test_storage_hotplug_resize_snapshot_stream_and_freeze(target: Target) -> None:
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    d.start(cfg)
    d.wait_agent(iid, 180)
    volume = ExtraDisk("vcontract01", cfg.disk.parent / "vol.qcow2", serial="data1", slot=1)
    target.make_disk(volume.path, 64 << 20)

    def guest_sectors() -> str:
        result = d.exec(iid, ["cat", "/sys/block/vdb/size"], timeout=60)
        return result.stdout.decode().strip() if result.exit_code == 0 else "absent"

    assert d.attached_disks(iid) == []
    d.attach_disk(iid, volume)
    assert d.attached_disks(iid) == ["vcontract01"]
    assert _eventually(guest_sectors, str((64 << 20) // 512))
    d.resize_disk(iid, volume.node, 96 << 20)
    assert _eventually(guest_sectors, str((96 << 20) // 512))
    d.detach_disk(iid, volume, timeout=60)
    assert d.attached_disks(iid) == []
    assert _eventually(guest_sectors, "absent")

    # external snapshots: each new file becomes the top, the old top its backing
    s1, s2 = cfg.disk.parent / "s1.qcow2", cfg.disk.parent / "s2.qcow2"
    d.snapshot_disk(iid, s1)
    d.snapshot_disk(iid, s2)
    assert s1.exists() and s2.exists()
    assert d.disk_chain(iid)[:3] == [s2, s1, cfg.disk]
    d.stream_disk(iid, s2, cfg.disk)  # s1's data moves into s2; s1 leaves the chain
    assert d.disk_chain(iid)[:2] == [s2, cfg.disk]

    # a frozen guest refuses other agent commands until it is thawed
    assert d.freeze_filesystems(iid) >= 1
    try:
        with pytest.raises(CloudletError):
            d.exec(iid, ["true"], timeout=10)
    finally:
        assert d.thaw_filesystems(iid) >= 1
    assert d.exec(iid, ["true"], timeout=60).exit_code == 0


def test_host_forwards_and_nic_hotplug(target: Target) -> None:
    """User-mode port forwards come and go on a running VM; a clash is refused.

    NIC hot-plug needs a TAP, which real QEMU may only get inside a test's network
    namespace: tests/integration/test_networks.py covers it there; here the fake.
    """
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    d.start(cfg)
    forward = HostForward("tcp", 0, 80)
    import socket

    with socket.socket() as probe:  # a free loopback port for the forward
        probe.bind(("127.0.0.1", 0))
        forward = HostForward("tcp", probe.getsockname()[1], 80)
    d.add_host_forward(iid, forward)
    with pytest.raises(CloudletError):
        d.add_host_forward(iid, forward)  # the host port is taken
    d.remove_host_forward(iid, forward)
    d.add_host_forward(iid, forward)  # free again
    assert d.attached_nics(iid) == []
    if d.name == "fake":
        nic = TapNic("tn1", "clt-contract1", "52:54:00:00:00:01", slot=2)
        d.attach_nic(iid, nic)
        assert d.attached_nics(iid) == ["tn1"]
        with pytest.raises(CloudletError):
            d.attach_nic(iid, nic)
        d.detach_nic(iid, nic)
        assert d.attached_nics(iid) == []


def test_backup_copies_and_dirty_bitmaps(target: Target) -> None:
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    if not cfg.disk.exists():
        target.make_disk(cfg.disk, 64 << 20)
    d.start(cfg)
    if d.name == "qemu":
        from cloudlet.storage.qcow2 import virtual_size

        size = virtual_size(cfg.disk, "qcow2")
    else:
        size = 64 << 20
    copies = [cfg.disk.parent / f"copy{i}.qcow2" for i in range(3)]
    for copy in copies:
        target.make_disk(copy, size)

    def names() -> list[str]:
        return sorted(b.name for b in d.disk_bitmaps(iid))

    assert names() == []
    d.backup_disks(iid, [DiskCopy(copies[0], new_bitmap="b1")])
    (bitmap,) = d.disk_bitmaps(iid)
    assert bitmap.name == "b1" and bitmap.recording and not bitmap.inconsistent
    # an unknown bitmap fails the whole transaction: no new bitmap either
    with pytest.raises(CloudletError):
        d.backup_disks(iid, [DiskCopy(copies[1], new_bitmap="b2", since="nope")])
    assert names() == ["b1"]
    d.backup_disks(iid, [DiskCopy(copies[2], new_bitmap="b2", since="b1")])
    assert names() == ["b1", "b2"]  # "since" stays until the caller drops it
    # a cancelled copy stops (a slow one too) and drops the bitmap it began
    token = CancelToken()
    token.cancel("stop")
    with pytest.raises(Cancelled, match="stop"):
        d.backup_disks(iid, [DiskCopy(copies[1], new_bitmap="b3")], speed=64 << 10, cancel=token)
    assert names() == ["b1", "b2"]
    d.remove_bitmap(iid, "b1")
    assert names() == ["b2"]
    # a snapshot puts a new active layer on top: the bitmaps stay on the old one
    d.snapshot_disk(iid, cfg.disk.parent / "s1.qcow2")
    assert names() == []


def test_one_backup_transaction_covers_root_and_volume(target: Target) -> None:
    cfg = target.config
    if not cfg.disk.exists():
        target.make_disk(cfg.disk, 64 << 20)
    volume = ExtraDisk("vcontract02", cfg.disk.parent / "vol.qcow2", serial="data1", slot=0)
    target.make_disk(volume.path, 32 << 20)
    cfg = LaunchConfig(**{**cfg.__dict__, "extra_disks": (volume,)})
    d, iid = target.driver, cfg.instance_id
    d.start(cfg)
    root_size = 64 << 20
    if d.name == "qemu":
        from cloudlet.storage.qcow2 import virtual_size

        root_size = virtual_size(cfg.disk, "qcow2")
    work = {n: cfg.disk.parent / f"{n}.qcow2" for n in ("r1", "v1", "r2", "v2")}
    for name, path in work.items():
        target.make_disk(path, root_size if name.startswith("r") else 32 << 20)

    def names(node: str | None) -> list[str]:
        return sorted(b.name for b in d.disk_bitmaps(iid, node))

    d.backup_disks(
        iid,
        [DiskCopy(work["r1"], new_bitmap="b1"), DiskCopy(work["v1"], volume.node, "b1")],
    )
    assert names(None) == ["b1"] and names(volume.node) == ["b1"]
    # one bad disk fails the whole transaction: no bitmap starts on the good one either
    with pytest.raises(CloudletError):
        d.backup_disks(
            iid,
            [
                DiskCopy(work["r2"], new_bitmap="b2", since="b1"),
                DiskCopy(work["v2"], volume.node, "b2", since="nope"),
            ],
        )
    assert names(None) == ["b1"] and names(volume.node) == ["b1"]
    d.remove_bitmap(iid, "b1", volume.node)
    assert names(None) == ["b1"] and names(volume.node) == []


def _eventually(probe: Callable[[], str], expected: str, timeout: float = 30.0) -> bool:
    """Hot-plug and resize reach the guest asynchronously: poll for the expected value."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value == expected:
            return True
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected!r}, the guest still shows {value!r}")
        time.sleep(0.3)


def test_memory_state_save_and_restore(target: Target, short_tmp: Path) -> None:
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    if not cfg.disk.exists():
        target.make_disk(cfg.disk, 64 << 20)
    d.start(cfg)
    d.wait_agent(iid, 180)
    saved = short_tmp / "state.vmstate"
    with pytest.raises(CloudletError, match="must be paused"):
        d.save_state(iid, saved)
    d.pause(iid)
    d.save_state(iid, saved)
    assert saved.stat().st_size > 0
    assert d.power_state(iid) == PowerState.PAUSED
    d.resume(iid)
    assert d.power_state(iid) == PowerState.RUNNING
    with pytest.raises(CloudletError, match="not started to receive"):
        d.restore_state(iid, saved)
    d.force_stop(iid)
    d.cleanup(iid)
    # a new process started to receive it runs on from the saved state
    d.start(LaunchConfig(**{**cfg.__dict__, "incoming": True}))
    assert d.power_state(iid) == PowerState.PAUSED
    d.restore_state(iid, saved)
    d.resume(iid)
    assert d.power_state(iid) == PowerState.RUNNING
    assert d.exec(iid, ["echo", "back"], timeout=60).stdout == b"back\n"


# ---------------------------------------------------------------- guest files


def _local_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_guest_file_copy_in_and_out(target: Target, short_tmp: Path) -> None:
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    d.start(cfg)
    d.wait_agent(iid, 180)
    data = bytes(range(256)) * 80 + b"end\n"
    src = short_tmp / "in.bin"
    src.write_bytes(data)
    src.chmod(0o750)
    reports: list[tuple[int, int]] = []
    # a destination ending in "/" gets the source's name; the mode comes along
    assert d.copy_in(iid, src, "/root/", progress=lambda *r: reports.append(r)) == len(data)
    assert reports[0] == (0, len(data)) and reports[-1] == (len(data), len(data))
    assert d.exec(iid, ["cat", "/root/in.bin"], timeout=60).stdout == data
    # an existing guest directory as the destination gets the name too
    assert d.copy_in(iid, src, "/tmp", mode=0o600) == len(data)
    assert d.exec(iid, ["cat", "/tmp/in.bin"], timeout=60).stdout == data

    out_dir = short_tmp / "out"
    out_dir.mkdir()
    reports.clear()
    assert d.copy_out(iid, "/root/in.bin", out_dir, progress=lambda *r: reports.append(r)) == len(
        data
    )
    assert (out_dir / "in.bin").read_bytes() == data
    assert reports[-1] == (len(data), len(data))
    umask = os.umask(0)
    os.umask(umask)
    assert _local_mode(out_dir / "in.bin") == 0o750 & ~umask
    # a named local file is replaced; what the guest kept as 0600 stays 0600
    (out_dir / "named").write_text("old")
    assert d.copy_out(iid, "/tmp/in.bin", out_dir / "named") == len(data)
    assert (out_dir / "named").read_bytes() == data
    assert _local_mode(out_dir / "named") == 0o600 & ~umask
    assert sorted(p.name for p in out_dir.iterdir()) == ["in.bin", "named"]  # no part files

    # the guest keeps setuid and world-write; the host copy gets neither
    d.copy_in(iid, src, "/root/suid", mode=0o4777)
    d.copy_out(iid, "/root/suid", out_dir / "suid")
    assert _local_mode(out_dir / "suid") & 0o7002 == 0
    empty = short_tmp / "empty"
    empty.touch()
    assert d.copy_in(iid, empty, "/tmp/empty") == 0
    assert d.copy_out(iid, "/tmp/empty", out_dir / "empty") == 0
    assert (out_dir / "empty").read_bytes() == b""


def test_guest_file_copy_refusals_and_limits(target: Target, short_tmp: Path) -> None:
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    d.start(cfg)
    d.wait_agent(iid, 180)
    src = short_tmp / "f.bin"
    src.write_bytes(b"x" * 20_000)
    d.copy_in(iid, src, "/root/f.bin")
    out = short_tmp / "out"
    out.mkdir()

    # missing files, on either side
    with pytest.raises(NotFound, match="does not exist in the guest"):
        d.copy_out(iid, "/root/absent", out / "absent")
    with pytest.raises(NotFound, match="/nodir does not exist in the guest"):
        d.copy_in(iid, src, "/nodir/f.bin")
    with pytest.raises(NotFound):
        d.copy_in(iid, short_tmp / "absent", "/root/")
    # only single regular files, only absolute guest paths
    with pytest.raises(InvalidInput, match="is a directory"):
        d.copy_in(iid, out, "/root/")
    with pytest.raises(InvalidInput, match="is a directory in the guest"):
        d.copy_out(iid, "/root", out / "root")
    with pytest.raises(InvalidInput, match="not absolute"):
        d.copy_in(iid, src, "root/f.bin")
    with pytest.raises(InvalidInput, match="not absolute"):
        d.copy_out(iid, "root/f.bin", out / "x")
    # a symlink at the destination is refused, never followed nor replaced
    victim = short_tmp / "victim"
    victim.write_text("keep")
    (out / "link").symlink_to(victim)
    with pytest.raises(InvalidInput, match="symlink"):
        d.copy_out(iid, "/root/f.bin", out / "link")
    assert victim.read_text() == "keep" and (out / "link").is_symlink()
    # the byte limit stops the copy and keeps nothing of it
    with pytest.raises(CapacityExceeded, match="byte limit"):
        d.copy_out(iid, "/root/f.bin", out / "big", limits=CopyLimits(max_bytes=10_000))
    assert sorted(p.name for p in out.iterdir()) == ["link"]
    assert d.copy_out(iid, "/root/f.bin", out / "fits", limits=CopyLimits(max_bytes=20_000))


def _make_tree(root: Path) -> dict[str, bytes]:
    """Nested directories, names with spaces, a link inside; the files' contents by path."""
    files = {
        "top.txt": b"top\n",
        "a dir/with spaces.bin": bytes(range(256)) * 300,
        "a dir/b/c/deep.txt": b"deep\n",
        "empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "no files").mkdir()
    (root / "a dir" / "link").symlink_to("b/c/deep.txt")
    return files


def test_guest_tree_copy_in_and_out(target: Target, short_tmp: Path) -> None:
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    d.start(cfg)
    d.wait_agent(iid, 180)
    src = short_tmp / "proj"
    files = _make_tree(src)
    total = sum(map(len, files.values()))
    reports: list[tuple[int, int]] = []
    result = d.copy_tree_in(
        iid, src, "/root/", owner=GuestOwner(1000, 1000), progress=lambda *r: reports.append(r)
    )
    assert (result.data_bytes, result.files, result.dirs) == (total, 4, 5)
    assert reports[-1] == (total, total)
    for rel, data in files.items():
        assert d.exec(iid, ["cat", f"/root/proj/{rel}"], timeout=60).stdout == data
    assert d.exec(iid, ["cat", "/root/proj/a dir/link"], timeout=60).stdout == b"deep\n"
    # a target that exists is never merged into; a missing guest directory is NotFound
    with pytest.raises(InvalidInput, match="already exists in the guest"):
        d.copy_tree_in(iid, src, "/root/")
    with pytest.raises(NotFound, match="/nodir does not exist in the guest"):
        d.copy_tree_in(iid, src, "/nodir/proj")

    out = short_tmp / "out"
    out.mkdir()
    reports.clear()
    back = d.copy_tree_out(iid, "/root/proj", out, progress=lambda *r: reports.append(r))
    assert (back.data_bytes, back.files, back.dirs) == (total, 4, 5)
    assert back.skipped == ("./a dir/link (a symlink)",)
    assert reports and reports[-1][0] == reports[-1][1] > total
    for rel, data in files.items():
        assert (
            hashlib.sha256((out / "proj" / rel).read_bytes()).digest()
            == hashlib.sha256(data).digest()
        )
    assert not os.path.lexists(out / "proj" / "a dir" / "link")
    assert (out / "proj" / "no files").is_dir()
    assert all(p.stat().st_uid == os.getuid() for p in (out / "proj").rglob("*"))
    # named: the tree lands under the new name; it is never merged into an existing one
    d.copy_tree_out(iid, "/root/proj/a dir", out / "renamed")
    assert (out / "renamed" / "b" / "c" / "deep.txt").read_bytes() == b"deep\n"
    with pytest.raises(InvalidInput, match="already exists"):
        d.copy_tree_out(iid, "/root/proj", out)


def test_guest_tree_copy_refusals_and_limits(target: Target, short_tmp: Path) -> None:
    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    d.start(cfg)
    d.wait_agent(iid, 180)
    src = short_tmp / "proj"
    _make_tree(src)
    (src / "a dir" / "out").symlink_to("../../elsewhere")
    with pytest.raises(InvalidInput, match="points outside the tree"):
        d.copy_tree_in(iid, src, "/root/proj")
    (src / "a dir" / "out").unlink()
    # nothing was left by the refused copy: the same target takes the tree now
    d.copy_tree_in(iid, src, "/root/proj")
    with pytest.raises(InvalidInput, match="not absolute"):
        d.copy_tree_in(iid, src, "root/x")
    out = short_tmp / "out"
    out.mkdir()
    with pytest.raises(CapacityExceeded, match="byte limit"):
        d.copy_tree_out(iid, "/root/proj", out, limits=CopyLimits(max_bytes=50_000))
    with pytest.raises(CapacityExceeded, match="entry limit"):
        d.copy_tree_out(iid, "/root/proj", out, limits=CopyLimits(max_entries=5))
    assert list(out.iterdir()) == []
    with pytest.raises(NotFound, match="does not exist in the guest"):
        d.copy_tree_out(iid, "/root/absent", out)
    with pytest.raises(InvalidInput, match="not absolute"):
        d.copy_tree_out(iid, "root/proj", out)
    with pytest.raises(InvalidInput, match="whole file system"):
        d.copy_tree_out(iid, "/", out)
    d.force_stop(iid)
    with pytest.raises(Conflict):
        d.copy_tree_in(iid, src, "/root/again")
    with pytest.raises(Conflict):
        d.copy_tree_out(iid, "/root/proj", out)
    assert list(out.iterdir()) == []

    # a VM that is not running: refused before anything moves, with or without a record
    d.force_stop(iid)
    for _ in range(2):
        with pytest.raises(Conflict):
            d.copy_in(iid, src, "/root/again")
        with pytest.raises(Conflict):
            d.copy_out(iid, "/root/f.bin", out / "again")
        d.cleanup(iid)
    assert not (out / "again").exists()


def _terminal_leftovers(d: Driver, iid: str) -> list[str]:
    """What an ended terminal session could leave: ports, sockets, records, sessions."""
    from cloudlet.driver.fake.driver import FakeDriver

    if isinstance(d, FakeDriver):
        return [str(t) for t in d.vms[iid].terminals]
    from cloudlet.driver.qemu import qmp

    info = d.runtime(iid)
    assert info is not None
    run_dir = info.qmp_socket.parent
    devices = qmp.execute(info.qmp_socket, "qom-list", {"path": "/machine/peripheral"})
    ports = [str(x["name"]) for x in devices if str(x["name"]).startswith("tm")]
    files = [p.name for p in run_dir.glob("tm*.sock")] + [
        p.name for p in run_dir.glob("terminals/*")
    ]
    return ports + files


def test_terminal_sessions_run_on_a_pty_and_leave_nothing(target: Target) -> None:
    from cloudlet.guest import run_as

    d, cfg = target.driver, target.config
    iid = cfg.instance_id
    with pytest.raises(Conflict):
        d.open_terminal(iid, ["true"], rows=24, cols=80)
    d.start(cfg)
    d.wait_agent(iid, 180)
    root = run_as.GuestAccount("root", 0, 0, "/root", "/bin/sh")
    shell = run_as.run_as_argv(root, [], term="xterm")
    with d.open_terminal(iid, shell, rows=30, cols=100) as term:
        out, code = talk(term, b"tty; echo $HOME; id -un; exit 4\r")
    text = out.decode("utf-8", "replace")
    assert "/dev/pts/" in text and "\n/root\r" in text and "\nroot\r" in text, text
    assert code == 4
    assert _terminal_leftovers(d, iid) == []
    # a session closed while its program runs: the program ends, nothing stays plugged,
    # and the next session opens as before
    term = d.open_terminal(iid, shell, rows=24, cols=80)
    assert term.exit_code() is None
    term.close()
    assert _terminal_leftovers(d, iid) == []
    command = run_as.run_as_argv(root, ["sh", "-c", "exit 3"])
    with d.open_terminal(iid, command, rows=24, cols=80) as term:
        assert talk(term, b"")[1] == 3
    assert _terminal_leftovers(d, iid) == []
