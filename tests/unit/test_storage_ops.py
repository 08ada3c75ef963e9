"""Pools, volumes, snapshots and clones on the fake driver and fake qcow2 files.

The fake disks record what the guest "wrote" per layer (tests.fakes.FakeDisks), so
these tests follow the data through snapshots, merges, reverts and clones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.engine import Engine
from cloudlet.engine.storage import StorageService
from cloudlet.engine.storage_rows import active_disk, boot_disks, snapshot_rows
from cloudlet.errors import (
    CapacityExceeded,
    CloudletError,
    Conflict,
    GuestError,
    InvalidInput,
    NotFound,
    OutOfSpace,
)
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import VMBody
from cloudlet.spec.units import GIB, TIB
from tests.fakes import FakeDisks, make_fake_engine


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


@pytest.fixture
def ops(engine: Engine) -> StorageService:
    return engine.storage


def fake(engine: Engine) -> FakeDriver:
    assert isinstance(engine.driver, FakeDriver)
    return engine.driver


def vm_id(engine: Engine, name: str) -> str:
    return engine.show(name).id


def write(engine: Engine, vm: str, key: str, value: str) -> None:
    """The guest writes a 'file' to its root disk (into the active layer)."""
    FakeDisks.write(active_disk(engine, vm_id(engine, vm)), key, value)


def content(engine: Engine, vm: str) -> dict[str, str]:
    return FakeDisks.content(active_disk(engine, vm_id(engine, vm)))


# ---------------------------------------------------------------- pools
def test_default_pool_lives_in_the_state_directory(engine: Engine, ops: StorageService) -> None:
    (pool,) = ops.pools()
    assert pool.name == "default" and Path(pool.path) == engine.paths.home / "pools" / "default"
    assert pool.fs_total > 0 and pool.limit == int(pool.fs_total * 2.0)
    assert (pool.volumes, pool.committed) == (0, 0)


def test_pool_create_list_and_delete(ops: StorageService, short_tmp: Path) -> None:
    ops.pool_create("fast", short_tmp / "fast")
    assert (short_tmp / "fast").is_dir()
    assert [p.name for p in ops.pools()] == ["default", "fast"]
    with pytest.raises(Conflict, match="already exists"):
        ops.pool_create("fast", short_tmp / "other")
    with pytest.raises(Conflict, match="already uses"):
        ops.pool_create("fast2", short_tmp / "fast")
    with pytest.raises(InvalidInput, match="relative"):
        ops.pool_create("rel", Path("relative/dir"))
    with pytest.raises(InvalidInput, match="invalid pool name"):
        ops.pool_create("Bad_Name", short_tmp / "x")
    ops.volume_create("d1", GIB, pool="fast")
    with pytest.raises(Conflict, match="still holds volumes: d1"):
        ops.pool_delete("fast")
    ops.volume_delete("d1")
    ops.pool_delete("fast")
    assert [p.name for p in ops.pools()] == ["default"]
    with pytest.raises(Conflict):
        ops.pool_delete("default")


# ---------------------------------------------------------------- volumes
def test_volume_create_is_thin_and_counted(ops: StorageService) -> None:
    vol = ops.volume_create("data1", 50 * GIB)
    assert Path(vol.path).exists() and vol.pool == "default" and vol.size == 50 * GIB
    assert json.loads(Path(vol.path).read_text())["size"] == 50 * GIB
    (pool,) = ops.pools()
    assert (pool.volumes, pool.committed) == (1, 50 * GIB)
    assert [v.name for v in ops.volumes()] == ["data1"]


def test_volume_beyond_the_thin_limit_is_refused_and_leaves_nothing(
    engine: Engine, ops: StorageService
) -> None:
    ops.volume_create("a", GIB)
    with pytest.raises(CapacityExceeded, match=r"pool default cannot take 100 TiB more: .* left"):
        ops.volume_create("huge", 100 * TIB)
    assert [v.name for v in ops.volumes()] == ["a"]
    assert sorted(p.name for p in (engine.paths.pools / "default").iterdir()) == ["a.qcow2"]
    # growing counts too
    with pytest.raises(CapacityExceeded):
        ops.volume_resize("a", 100 * TIB)
    assert ops.volume("a").size == GIB


def test_a_full_pool_file_system_is_named_and_leaves_nothing(
    engine: Engine, ops: StorageService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(path: Path, size: int) -> None:
        path.write_bytes(b"half")  # qemu-img may leave a piece behind
        raise OutOfSpace("qemu-img could not write it: no space left", path=path)

    monkeypatch.setattr(engine.deps.disks, "create_blank", no_space)
    with pytest.raises(OutOfSpace, match=r"^pool default is full: its file system at ") as info:
        ops.volume_create("v1", GIB)
    assert "another pool" in (info.value.hint or "")
    assert ops.volumes() == [] and not list((engine.paths.pools / "default").iterdir())

    # any other failure is passed on as it is
    def broken(path: Path, size: int) -> None:
        raise CloudletError("qemu-img create failed: Permission denied")

    monkeypatch.setattr(engine.deps.disks, "create_blank", broken)
    with pytest.raises(CloudletError, match=r"^qemu-img create failed: Permission denied$"):
        ops.volume_create("v1", GIB)


def test_overcommit_ratio_is_a_setting(short_tmp: Path) -> None:
    from dataclasses import replace

    engine = make_fake_engine(short_tmp / "home")
    engine.ctx.settings = replace(engine.ctx.settings, storage_overcommit=0.0001)
    with pytest.raises(CapacityExceeded):
        engine.storage.volume_create("a", GIB)


def test_volume_errors(engine: Engine, ops: StorageService) -> None:
    ops.volume_create("data1", GIB)
    with pytest.raises(Conflict, match="already exists"):
        ops.volume_create("data1", GIB)
    with pytest.raises(NotFound, match="no pool"):
        ops.volume_create("x", GIB, pool="nope")
    with pytest.raises(InvalidInput):
        ops.volume_create("Bad", GIB)
    # a stray file of that name is never overwritten
    stray = engine.paths.pools / "default" / "stray.qcow2"
    stray.write_text("precious")
    with pytest.raises(Conflict, match="not a volume cloudlet knows"):
        ops.volume_create("stray", GIB)
    assert stray.read_text() == "precious"
    with pytest.raises(InvalidInput, match="shrinking"):
        ops.volume_resize("data1", GIB // 2)
    with pytest.raises(NotFound, match="no volume"):
        ops.volume_attach("nope", "web1")


def test_hotplug_into_a_running_vm_and_back_at_next_boot(
    engine: Engine, ops: StorageService
) -> None:
    engine.create("web1", VMBody())
    ops.volume_create("data1", 2 * GIB)
    message = ops.volume_attach("data1", "web1").message
    assert "now" in message
    iid = vm_id(engine, "web1")
    assert len(fake(engine).attached_disks(iid)) == 1
    assert engine.exec("web1", ["cat", "/sys/block/vdb/size"]).stdout == b"%d\n" % (2 * GIB // 512)
    assert ops.volume("data1").attached_to == "web1"
    # online growth reaches the guest
    assert "online" in ops.volume_resize("data1", 3 * GIB).message
    assert engine.exec("web1", ["cat", "/sys/block/vdb/size"]).stdout == b"%d\n" % (3 * GIB // 512)
    # a restart boots with the volume in its launch config
    engine.restart("web1")
    disks = fake(engine).vms[iid].config.extra_disks
    assert [(d.serial, d.slot) for d in disks] == [("data1", 0)]
    with pytest.raises(Conflict, match="attached to web1"):
        ops.volume_delete("data1")
    engine.pause("web1")
    with pytest.raises(Conflict, match="paused"):
        ops.volume_detach("data1")
    engine.resume("web1")
    assert "detached" in ops.volume_detach("data1").message
    assert fake(engine).attached_disks(iid) == []
    ops.volume_delete("data1")
    assert not (engine.paths.pools / "default" / "data1.qcow2").exists()
    assert ops.volumes() == []


def test_attach_to_a_stopped_vm_takes_effect_at_start(engine: Engine, ops: StorageService) -> None:
    engine.create("web1", VMBody(state="stopped"))
    ops.volume_create("data1", GIB)
    assert "next start" in ops.volume_attach("data1", "web1").message
    assert "offline" in ops.volume_resize("data1", 2 * GIB).message
    engine.start("web1")
    iid = vm_id(engine, "web1")
    assert [d.serial for d in fake(engine).vms[iid].config.extra_disks] == ["data1"]
    assert engine.exec("web1", ["cat", "/sys/block/vdb/size"]).stdout == b"%d\n" % (2 * GIB // 512)


def test_slots_run_out_and_a_volume_has_one_vm(engine: Engine, ops: StorageService) -> None:
    engine.create("web1", VMBody())
    engine.create("web2", VMBody(type="gp.micro"))
    for i in range(5):
        ops.volume_create(f"v{i}", GIB)
    for i in range(4):
        ops.volume_attach(f"v{i}", "web1")
    with pytest.raises(Conflict, match="no free volume slot"):
        ops.volume_attach("v4", "web1")
    with pytest.raises(Conflict, match="attached to web1"):
        ops.volume_attach("v0", "web2")
    ops.volume_detach("v2")
    ops.volume_attach("v4", "web1")  # takes the freed slot
    slots = {d.serial: d.slot for d in boot_disks(engine, vm_id(engine, "web1"))}
    assert slots == {"v0": 0, "v1": 1, "v4": 2, "v3": 3}


def test_deleting_a_vm_keeps_its_volumes(engine: Engine, ops: StorageService) -> None:
    engine.create("web1", VMBody())
    ops.volume_create("data1", GIB)
    ops.volume_attach("data1", "web1")
    assert "volumes kept, now detached: data1" in engine.delete("web1", force=True).message
    vol = ops.volume("data1")
    assert vol.attached_to is None and Path(vol.path).exists()


# ---------------------------------------------------------------- snapshots
def test_live_snapshot_freezes_the_guest_and_moves_the_active_layer(
    engine: Engine, ops: StorageService
) -> None:
    engine.create("web1", VMBody())
    iid = vm_id(engine, "web1")
    before = active_disk(engine, iid)
    snap = ops.snapshot_create("web1", "pre-patch")
    assert snap.live and snap.frozen
    assert not fake(engine).vms[iid].frozen  # thawed again
    after = active_disk(engine, iid)
    assert after != before and after.exists()
    assert fake(engine).disk_chain(iid) == [after, before]
    assert engine.show("web1").paths["disk"] == str(after)
    engine.restart("web1")
    assert fake(engine).vms[iid].config.disk == after  # boots from the active layer
    with pytest.raises(Conflict, match="already has a snapshot"):
        ops.snapshot_create("web1", "pre-patch")


def test_snapshot_without_a_working_agent_is_crash_consistent(
    engine: Engine, ops: StorageService, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.create("web1", VMBody())

    def refuse(instance_id: str) -> int:
        raise GuestError("guest agent refused guest-fsfreeze-freeze")

    monkeypatch.setattr(fake(engine), "freeze_filesystems", refuse)
    snap = ops.snapshot_create("web1", "s1")
    assert snap.live and not snap.frozen
    assert any("crash-consistent" in n for n in engine.notices)


def test_revert_brings_back_deleted_data_and_discards_later_snapshots(
    engine: Engine, ops: StorageService
) -> None:
    engine.create("web1", VMBody())
    write(engine, "web1", "/root/keep", "v1")
    ops.snapshot_create("web1", "pre-patch")
    write(engine, "web1", "/root/keep", "")  # deleted
    ops.snapshot_create("web1", "later")
    write(engine, "web1", "/root/new", "x")
    with pytest.raises(Conflict, match="cannot revert web1: it is running"):
        ops.snapshot_revert("web1", "pre-patch")
    message = ops.snapshot_revert("web1", "pre-patch", force=True).message
    assert "discarded later snapshots: later" in message
    assert engine.show("web1").state == "stopped"
    assert content(engine, "web1") == {"/root/keep": "v1"}
    assert [s.name for s in ops.snapshots("web1")] == ["pre-patch"]
    layers = list((engine.paths.instance_dir(vm_id(engine, "web1")) / "layers").iterdir())
    assert len(layers) == 1  # only the fresh active layer: no orphan files
    # writing after the revert does not touch the snapshot: revert again
    write(engine, "web1", "/root/keep", "changed")
    ops.snapshot_revert("web1", "pre-patch")
    assert content(engine, "web1") == {"/root/keep": "v1"}


def test_revert_to_unknown_or_foreign_snapshots_is_a_clear_error(
    engine: Engine, ops: StorageService
) -> None:
    engine.create("web1", VMBody(state="stopped"))
    engine.create("web2", VMBody(state="stopped"))
    ops.snapshot_create("web2", "theirs")
    with pytest.raises(NotFound, match="web1 has no snapshot 'nope'"):
        ops.snapshot_revert("web1", "nope")
    with pytest.raises(NotFound, match="belongs to VM web2, not web1"):
        ops.snapshot_revert("web1", "theirs")


@pytest.mark.parametrize("running", [True, False])
def test_snapshot_delete_merges_so_no_data_is_lost(
    engine: Engine, ops: StorageService, running: bool
) -> None:
    engine.create("web1", VMBody())
    write(engine, "web1", "a", "1")
    ops.snapshot_create("web1", "s1")
    write(engine, "web1", "b", "2")
    ops.snapshot_create("web1", "s2")
    write(engine, "web1", "c", "3")
    if not running:
        engine.stop("web1")
    expected = {"a": "1", "b": "2", "c": "3"}
    assert content(engine, "web1") == expected
    files = {s.name: Path(s.file) for s in snapshot_rows(engine, vm_id(engine, "web1"))}
    ops.snapshot_delete("web1", "s1")  # the oldest: its layer is disk.qcow2
    assert content(engine, "web1") == expected
    assert not files["s1"].exists()
    ops.snapshot_delete("web1", "s2")
    assert content(engine, "web1") == expected
    assert ops.snapshots("web1") == []
    iid = vm_id(engine, "web1")
    if running:
        assert fake(engine).disk_chain(iid) == [active_disk(engine, iid)]


def test_snapshot_list_is_a_chain(engine: Engine, ops: StorageService) -> None:
    engine.create("web1", VMBody(state="stopped"))
    ops.snapshot_create("web1", "s1")
    ops.snapshot_create("web1", "s2")
    views = ops.snapshots("web1")
    assert [(v.name, v.parent, v.live) for v in views] == [("s1", None, False), ("s2", "s1", False)]


# ---------------------------------------------------------------- clones
def test_full_clone_copies_the_data_into_a_new_vm(engine: Engine, ops: StorageService) -> None:
    engine.create("web1", VMBody())
    write(engine, "web1", "f", "1")
    with pytest.raises(Conflict, match="cannot clone web1: it is running") as refused:
        ops.clone("web1", "web1-test")
    assert "clone one of its snapshots" in str(refused.value.hint)
    assert step(Step.SNAPSHOT_LIST, vm="web1") in refused.value.next_steps
    ops.snapshot_create("web1", "s1")
    write(engine, "web1", "f", "2")
    from_snap = ops.clone("web1", "from-snap", snapshot="s1")  # source still running
    assert content(engine, "from-snap") == {"f": "1"}
    engine.stop("web1")
    vm = ops.clone("web1", "web1-test")
    src = engine.show("web1")
    assert vm.id != src.id and vm.id != from_snap.id and vm.state == "stopped"
    assert (vm.cpus, vm.memory, vm.image) == (src.cpus, src.memory, src.image)
    assert content(engine, "web1-test") == {"f": "2"}
    assert "backing" not in json.loads(Path(vm.paths["disk"]).read_text())  # flattened
    engine.start("web1-test")
    with pytest.raises(Conflict, match="already exists"):
        ops.clone("web1", "web1-test")


def test_linked_clone_pins_its_snapshot(engine: Engine, ops: StorageService) -> None:
    engine.create("web1", VMBody(state="stopped"))
    with pytest.raises(InvalidInput, match="has none"):
        ops.clone("web1", "lc", linked=True)
    write(engine, "web1", "f", "1")
    ops.snapshot_create("web1", "base")
    write(engine, "web1", "f", "2")
    ops.clone("web1", "lc", linked=True)
    assert content(engine, "lc") == {"f": "1"}
    write(engine, "lc", "g", "clone only")
    assert content(engine, "web1") == {"f": "2"}
    assert ops.snapshots("web1")[0].linked_clones == ["lc"]
    with pytest.raises(Conflict, match=r"base of linked clone.*lc"):
        ops.snapshot_delete("web1", "base")
    with pytest.raises(Conflict, match="linked clones"):
        engine.delete("web1")
    ops.snapshot_create("web1", "later")
    ops.snapshot_revert("web1", "base")  # discarding 'later' is fine: nothing grows from it
    engine.delete("lc")
    ops.snapshot_delete("web1", "base")
    assert ops.snapshots("web1") == []
    assert content(engine, "web1") == {"f": "1"}


def test_failed_clone_leaves_nothing(
    engine: Engine, ops: StorageService, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.create("web1", VMBody(state="stopped"))

    def broken(src: Path, dest: Path) -> None:
        dest.write_text("half")
        raise InvalidInput("disk full")

    monkeypatch.setattr(engine.deps.disks, "flatten", broken)
    with pytest.raises(InvalidInput, match="disk full"):
        ops.clone("web1", "web1-test")
    assert [v.name for v in engine.instances()] == ["web1"]
    assert len(list(engine.paths.instances.iterdir())) == 1


def test_failed_snapshot_leaves_no_record_and_no_file(
    engine: Engine, ops: StorageService, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.create("web1", VMBody(state="stopped"))
    iid = vm_id(engine, "web1")
    before = active_disk(engine, iid)

    def broken(backing: Path, backing_format: str, dest: Path) -> None:
        dest.write_text("half")
        raise InvalidInput("qemu-img failed")

    monkeypatch.setattr(engine.deps.disks, "create_layer", broken)
    with pytest.raises(InvalidInput):
        ops.snapshot_create("web1", "s1")
    assert ops.snapshots("web1") == [] and active_disk(engine, iid) == before
    assert list((engine.paths.instance_dir(iid) / "layers").iterdir()) == []


def test_snapshot_recorded_but_never_made_is_rolled_back_at_next_start(
    engine: Engine, ops: StorageService
) -> None:
    """The record comes first; a process killed before the layer exists leaves a record
    whose layer is missing: the next command under the VM's lock drops it."""
    engine.create("web1", VMBody(state="stopped"))
    iid = vm_id(engine, "web1")
    write(engine, "web1", "f", "1")
    before = active_disk(engine, iid)
    ops.snapshot_create("web1", "s1")
    active_disk(engine, iid).unlink()  # as if the process died before making it
    engine.start("web1")
    assert fake(engine).vms[iid].config.disk == before
    assert ops.snapshots("web1") == []
    assert content(engine, "web1") == {"f": "1"}


# ---------------------------------------------------------------- memory snapshots
def test_memory_snapshot_revert_resumes_the_guest_where_it_was(
    engine: Engine, ops: StorageService
) -> None:
    engine.create("web1", VMBody())
    iid = vm_id(engine, "web1")
    fake(engine).vms[iid].ram["/tmp/pid"] = "42"
    write(engine, "web1", "/root/keep", "v1")
    snap = ops.snapshot_create("web1", "pre-patch", memory=True)
    assert snap.memory and snap.live and not snap.frozen  # paused instead of frozen
    assert engine.show("web1").state == "running"  # resumed after the save
    layer = fake(engine).disk_chain(iid)[1]
    assert (layer.parent / f"{layer.name}.vmstate").exists()
    assert not list(layer.parent.rglob("*.part"))
    # the guest changes its memory and disk, reboots, takes a disk-only snapshot
    fake(engine).vms[iid].ram.clear()
    write(engine, "web1", "/root/keep", "")
    ops.snapshot_create("web1", "later", memory=True)
    later_state = ops.snapshots("web1")[1]
    assert later_state.memory
    message = ops.snapshot_revert("web1", "pre-patch", force=True).message
    assert "resumed from its memory state" in message
    assert engine.show("web1").state == "running"
    vm = fake(engine).vms[iid]
    assert vm.ram == {"/tmp/pid": "42"} and vm.config.incoming
    assert content(engine, "web1") == {"/root/keep": "v1"}
    assert [(s.name, s.memory) for s in ops.snapshots("web1")] == [("pre-patch", True)]
    states = list(engine.paths.instance_dir(iid).rglob("*.vmstate"))
    assert states == [layer.parent / f"{layer.name}.vmstate"]  # the later one went
    # reverting again works (the state is kept); deleting the snapshot drops it
    ops.snapshot_revert("web1", "pre-patch", force=True)
    assert fake(engine).vms[iid].ram == {"/tmp/pid": "42"}
    ops.snapshot_delete("web1", "pre-patch")
    assert not list(engine.paths.instance_dir(iid).rglob("*.vmstate"))


def test_memory_snapshot_of_a_stopped_vm_is_refused(engine: Engine, ops: StorageService) -> None:
    engine.create("web1", VMBody(state="stopped"))
    with pytest.raises(Conflict, match="cannot keep the memory of web1: it is stopped"):
        ops.snapshot_create("web1", "s1", memory=True)
    assert ops.snapshots("web1") == []


def test_memory_snapshot_of_a_paused_vm_leaves_it_paused(
    engine: Engine, ops: StorageService
) -> None:
    engine.create("web1", VMBody())
    engine.pause("web1")
    assert ops.snapshot_create("web1", "s1", memory=True).memory
    assert engine.show("web1").state == "paused"
    assert fake(engine).power_state(vm_id(engine, "web1")).value == "paused"


def test_memory_state_that_cannot_be_saved_or_loaded_is_a_clear_error(
    engine: Engine, ops: StorageService, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.create("web1", VMBody())
    iid = vm_id(engine, "web1")

    def refuse(instance_id: str, target: Path) -> None:
        target.write_text("half")
        raise Conflict("QEMU could not save the memory state: disk full")

    with monkeypatch.context() as m:
        m.setattr(fake(engine), "save_state", refuse)
        with pytest.raises(CloudletError, match="s1 of web1 was not taken: QEMU could not"):
            ops.snapshot_create("web1", "s1", memory=True)
    assert engine.show("web1").state == "running"  # resumed all the same
    assert ops.snapshots("web1") == []  # the disk half is taken back too
    assert not list(engine.paths.instance_dir(iid).rglob("*.vmstate*"))
    ops.snapshot_create("web1", "s2", memory=True)
    # a VM whose devices changed since cannot load the state: the disk is reverted all the same
    state = next(engine.paths.instance_dir(iid).rglob("*.vmstate"))
    state.write_text("garbage")
    with pytest.raises(CloudletError, match="reverted to s2, but its memory state could not"):
        ops.snapshot_revert("web1", "s2", force=True)
    assert engine.show("web1").state == "error"
    engine.start("web1")
    assert engine.show("web1").state == "running"


def test_a_stale_memory_state_never_makes_a_disk_snapshot_look_like_one(
    engine: Engine, ops: StorageService
) -> None:
    engine.create("web1", VMBody())
    layer = active_disk(engine, vm_id(engine, "web1"))
    Path(f"{layer}.vmstate").write_text("left by a killed snapshot")
    assert not ops.snapshot_create("web1", "s1").memory
    assert not Path(f"{layer}.vmstate").exists()


def test_a_memory_snapshot_with_no_room_for_its_state_is_not_taken_at_all(
    engine: Engine, ops: StorageService, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.create("web1", VMBody())
    iid = vm_id(engine, "web1")
    top = active_disk(engine, iid)

    def full(instance_id: str, target: Path) -> None:
        target.write_text("half")
        raise OutOfSpace("QEMU could not save the memory state: No space left", path=target)

    monkeypatch.setattr(fake(engine), "save_state", full)
    with pytest.raises(CapacityExceeded) as caught:
        ops.snapshot_create("web1", "m1", memory=True)
    assert "snapshot m1 of web1 was not taken: no space left" in caught.value.message
    assert "snapshot the disk only" in (caught.value.hint or "")
    # the disk snapshot went back too: no row, no layer, no state file, guest running
    assert ops.snapshots("web1") == []
    assert fake(engine).disk_chain(iid)[0] == top == active_disk(engine, iid)
    assert not list((engine.paths.instance_dir(iid) / "layers").iterdir())
    assert not list(engine.paths.instance_dir(iid).rglob("*.vmstate*"))
    assert engine.show("web1").state == "running"
