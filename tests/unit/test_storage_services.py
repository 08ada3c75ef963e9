"""The storage services on their own: built from an EngineContext, with the facade off.

Each test makes its VMs through the Engine (creation is not storage), then builds a
fresh context on the same settings, dependencies and database, and replaces every
method of the Engine class with one that fails the test. A storage service that
still reached into the facade (for a stop, a show, a lock or a boot) fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine import instance_view, power
from cloudlet.engine.clones import Clones
from cloudlet.engine.context import EngineContext
from cloudlet.engine.pools import Pools
from cloudlet.engine.snapshots import Snapshots
from cloudlet.engine.storage import StorageService
from cloudlet.engine.storage_rows import active_disk, boot_disks, owner_name, snapshot_rows
from cloudlet.engine.volumes import Volumes
from cloudlet.errors import Cancelled, Conflict, NotFound
from cloudlet.progress import CancelToken, ProgressEvent
from cloudlet.spec.document import VMBody
from cloudlet.spec.units import GIB, MIB
from tests.fakes import FakeDisks, make_fake_engine, switch_off_the_facade


def make_ctx(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    running: tuple[str, ...] = (),
    stopped: tuple[str, ...] = (),
) -> EngineContext:
    """VMs made through the Engine, then a context of their own and the facade off."""
    engine = make_fake_engine(home)
    for name in running:
        engine.create(name, VMBody())
    for name in stopped:
        engine.create(name, VMBody(state="stopped"))
    ctx = EngineContext(engine.settings, engine.deps, engine.db)
    switch_off_the_facade(monkeypatch)
    return ctx


def fake(ctx: EngineContext) -> FakeDriver:
    assert isinstance(ctx.driver, FakeDriver)
    return ctx.driver


def vm_id(ctx: EngineContext, name: str) -> str:
    return ctx.row(name).id


def write(ctx: EngineContext, vm: str, key: str, value: str) -> None:
    FakeDisks.write(active_disk(ctx, vm_id(ctx, vm)), key, value)


def content(ctx: EngineContext, vm: str) -> dict[str, str]:
    return FakeDisks.content(active_disk(ctx, vm_id(ctx, vm)))


def test_the_facade_really_is_off(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard the other tests rely on: any use of the Engine fails them."""
    engine = make_fake_engine(short_tmp / "home")
    make_ctx(short_tmp / "other", monkeypatch)
    with pytest.raises(AssertionError, match=r"facade \(show\)"):
        engine.show("web1")
    with pytest.raises(AssertionError, match=r"facade \(notices\)"):
        _ = engine.notices


def test_pools_on_the_context(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch)
    pools = Pools(ctx)
    assert [p.name for p in pools.pools()] == ["default"]
    assert pools.pools()[0].path == str(ctx.paths.pools / "default")
    fast = pools.pool_create("fast", short_tmp / "fast")
    assert (fast.kind, fast.volumes, fast.committed) == ("dir", 0, 0)
    assert fast.limit == int(fast.fs_total * ctx.settings.storage_overcommit)
    with pytest.raises(Conflict, match="already exists"):
        pools.pool_create("fast", short_tmp / "elsewhere")
    row, backend = pools.lookup("fast")
    assert (row.name, backend.kind) == ("fast", "dir")
    assert "deleted" in pools.pool_delete("fast").message
    with pytest.raises(NotFound, match="no pool named 'fast'"):
        pools.pool("fast")
    with pytest.raises(Conflict, match="default pool cannot be deleted"):
        pools.pool_delete("default")


def test_volumes_create_attach_detach_delete_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, running=("web1",), stopped=("db1",))
    volumes = Volumes(ctx, Pools(ctx))
    view = volumes.volume_create("data1", GIB)
    assert (view.size, view.attached_to, view.pool) == (GIB, None, "default")
    assert Path(view.path).exists()
    # hot-plugged into the running VM now
    assert "now" in volumes.volume_attach("data1", "web1").message
    iid = vm_id(ctx, "web1")
    assert len(fake(ctx).attached_disks(iid)) == 1
    assert [d.serial for d in boot_disks(ctx, iid)] == ["data1"]
    assert owner_name(ctx, iid) == "web1"
    with pytest.raises(Conflict, match="attached to web1"):
        volumes.volume_attach("data1", "db1")
    with pytest.raises(Conflict, match="attached to web1"):
        volumes.volume_delete("data1")
    assert "detached from web1" in volumes.volume_detach("data1").message
    assert fake(ctx).attached_disks(iid) == []
    # a stopped VM takes it at its next start
    assert "next start" in volumes.volume_attach("data1", "db1").message
    assert volumes.volume("data1").attached_to == "db1"
    assert "offline" in volumes.volume_resize("data1", 2 * GIB).message
    volumes.volume_detach("data1")
    assert volumes.volume_delete("data1").message == "volume data1 deleted"
    assert not Path(view.path).exists()
    assert volumes.volumes() == []
    # each step left an operation and an event of the VM
    assert "volume-attached" in {e.kind for e in _events(ctx, "web1")}


def _events(ctx: EngineContext, vm: str) -> list[Any]:
    from sqlalchemy import select

    from cloudlet.store.models import EventRow

    with ctx.db.session() as s:
        return list(s.scalars(select(EventRow).where(EventRow.instance_name == vm)).all())


def test_volumes_of_a_new_vm_are_made_and_undone_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, stopped=("db1",))
    volumes = Volumes(ctx, Pools(ctx))
    volumes.check_new_vm_volumes("db1", (MIB, 2 * MIB))
    made = volumes.create_for_new_vm(vm_id(ctx, "db1"), "db1", (MIB, 2 * MIB))
    assert made == ["db1-vol0", "db1-vol1"]
    assert [v.attached_to for v in volumes.volumes()] == ["db1", "db1"]
    volumes.undo_new_vm_volumes(vm_id(ctx, "db1"), made)
    assert volumes.volumes() == []


def test_snapshots_create_revert_delete_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, running=("web1",))
    snaps = Snapshots(ctx)
    write(ctx, "web1", "f", "1")
    view = snaps.snapshot_create("web1", "s1")
    assert (view.name, view.vm, view.live) == ("s1", "web1", True)
    write(ctx, "web1", "f", "2")
    snaps.snapshot_create("web1", "s2")
    write(ctx, "web1", "g", "3")
    assert [(v.name, v.parent) for v in snaps.snapshots("web1")] == [("s1", None), ("s2", "s1")]
    with pytest.raises(Conflict, match="cannot revert web1: it is running"):
        snaps.snapshot_revert("web1", "s1")
    # --force stops the VM through the power module, not the facade
    message = snaps.snapshot_revert("web1", "s1", force=True).message
    assert "discarded later snapshots: s2" in message
    assert ctx.row("web1").state == "stopped"
    assert content(ctx, "web1") == {"f": "1"}
    write(ctx, "web1", "h", "4")
    snaps.snapshot_create("web1", "s3")
    assert "deleted" in snaps.snapshot_delete("web1", "s1").message
    assert content(ctx, "web1") == {"f": "1", "h": "4"}
    assert [s.name for s in snapshot_rows(ctx, vm_id(ctx, "web1"))] == ["s3"]
    with pytest.raises(NotFound, match="web1 has no snapshot 's1'"):
        snaps.snapshot_delete("web1", "s1")


def test_a_memory_snapshot_revert_boots_through_launch_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, running=("web1",))
    snaps = Snapshots(ctx)
    assert snaps.snapshot_create("web1", "m1", memory=True).memory
    power.stop(ctx, "web1", force=True)
    message = snaps.snapshot_revert("web1", "m1").message
    assert "resumed from its memory state" in message
    assert instance_view.show(ctx, "web1").state == "running"


def test_clones_full_and_linked_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, stopped=("web1",))
    snaps = Snapshots(ctx)
    clones = Clones(ctx, snaps)
    write(ctx, "web1", "f", "1")
    full = clones.clone("web1", "copy")
    assert (full.name, full.state) == ("copy", "stopped")
    assert content(ctx, "copy") == {"f": "1"}
    snaps.snapshot_create("web1", "base")
    write(ctx, "web1", "f", "2")
    linked = clones.clone("web1", "lc", linked=True)
    assert linked.name == "lc"
    assert content(ctx, "lc") == {"f": "1"}
    assert snaps.snapshots("web1")[0].linked_clones == ["lc"]
    with pytest.raises(Conflict, match="already exists"):
        clones.clone("web1", "lc")
    with pytest.raises(NotFound, match="no VM named 'ghost'"):
        clones.clone("ghost", "other")


def test_the_storage_facade_composes_the_services(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, stopped=("web1",))
    storage = StorageService(ctx)
    storage.volume_create("data1", MIB)
    storage.volume_attach("data1", "web1")
    assert storage.volume_row("data1").instance_id == vm_id(ctx, "web1")
    storage.snapshot_create("web1", "s1")
    assert storage.clone("web1", "c1", snapshot="s1").name == "c1"
    assert storage.notices is ctx.notices
    assert [p.name for p in storage.pools()] == ["default"]


def test_memory_snapshots_and_reverts_report_their_stages(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, running=("web1",))
    storage = StorageService(ctx)
    events: list[ProgressEvent] = []
    storage.snapshot_create("web1", "d1", progress=events.append)
    assert [e.stage for e in events] == ["freezing the guest", "taking the disk snapshot"]
    events.clear()
    storage.snapshot_create("web1", "m1", memory=True, progress=events.append)
    assert [e.stage for e in events] == [
        "pausing web1",
        "taking the disk snapshot",
        "saving the memory state",
    ]
    events.clear()
    storage.snapshot_revert("web1", "m1", force=True, progress=events.append)
    assert [e.stage for e in events] == [
        "stopping web1",
        "reverting the disk",
        "loading the memory state",
    ]
    assert instance_view.show(ctx, "web1").state == "running"


def test_a_cancelled_snapshot_or_revert_changes_nothing(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, stopped=("web1",))
    storage = StorageService(ctx)
    write(ctx, "web1", "f", "1")
    storage.snapshot_create("web1", "s1")
    write(ctx, "web1", "f", "2")
    layers = sorted(active_disk(ctx, vm_id(ctx, "web1")).parent.rglob("*"))
    token = CancelToken()
    token.cancel("stop")
    with pytest.raises(Cancelled, match="stop"):
        storage.snapshot_create("web1", "s2", cancel=token)
    with pytest.raises(Cancelled, match="stop"):
        storage.snapshot_revert("web1", "s1", cancel=token)
    assert [s.name for s in storage.snapshots("web1")] == ["s1"]
    assert content(ctx, "web1") == {"f": "2"}
    assert sorted(active_disk(ctx, vm_id(ctx, "web1")).parent.rglob("*")) == layers
