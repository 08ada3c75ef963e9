"""One suite, two drivers: the fake must behave like real QEMU where the engine can tell."""

from __future__ import annotations

import json
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
from cloudlet.errors import CloudletError


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
