"""The backup services on their own: built from an EngineContext, with the facade off.

VM web1 (running, volume data1 attached) is made through the Engine (creation is not a
backup use case); then a fresh context is built on the same settings, dependencies and
database, every method of the Engine class is replaced by one that fails the test, and
the backup service is built from that context and a storage service. A backup module
that still reached into the facade (for a show, a stop, a spec) fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from cloudlet.engine import call_options, instance_view, power
from cloudlet.engine.backup_requests import PolicyUpdate
from cloudlet.engine.backups import BackupService
from cloudlet.engine.context import EngineContext
from cloudlet.engine.engine import Engine
from cloudlet.engine.storage import StorageService
from cloudlet.engine.storage_rows import active_disk
from cloudlet.errors import Cancelled, Conflict, NotFound
from cloudlet.progress import CancelToken, ProgressEvent
from cloudlet.spec.states import VMState
from tests.cancelling import REASON
from tests.fakes import FakeDisks, make_vm_with_volume, switch_off_the_facade
from tests.unit.test_layering import SRC, imports_of, module_name, within

ENGINE = Path(SRC) / "cloudlet" / "engine"
# Every module that holds backup use cases or what only they use.
BACKUP_MODULES = sorted(
    [
        *ENGINE.glob("backup*.py"),
        ENGINE / "restore_disks.py",
        ENGINE / "vm_record.py",
    ]
)


@pytest.fixture
def ctx(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> EngineContext:
    engine = make_vm_with_volume(short_tmp / "home")
    context = EngineContext(engine.settings, engine.deps, engine.db)
    switch_off_the_facade(monkeypatch)
    return context


@pytest.fixture
def backups(ctx: EngineContext) -> BackupService:
    return BackupService(ctx, StorageService(ctx))


def root(ctx: EngineContext, vm: str) -> Path:
    return active_disk(ctx, ctx.row(vm).id)


def volume(ctx: EngineContext, name: str) -> Path:
    return Path(StorageService(ctx).volume(name).path)


def test_the_facade_really_is_off(ctx: EngineContext) -> None:
    """The guard the other tests rely on: any use of the Engine fails them."""
    with pytest.raises(AssertionError, match=r"facade \(__init__\)"):
        Engine(ctx.settings, ctx.deps, ctx.db)
    with pytest.raises(AssertionError, match=r"facade \(show\)"):
        Engine.show(object(), "web1")  # type: ignore[arg-type]


def test_create_list_verify_prune_and_schedule(ctx: EngineContext, backups: BackupService) -> None:
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    FakeDisks.write(volume(ctx, "data1"), "0", "data v1")
    full = backups.create("web1")
    assert full.kind == "full" and [d.name for d in full.disks] == ["root", "data1"]
    FakeDisks.write(volume(ctx, "data1"), "0", "data v2")
    inc = backups.create("web1")
    assert inc.kind == "incremental" and inc.read == len("data v2")
    assert [b.id for b in backups.backups("web1")] == [inc.id, full.id]
    report = backups.verify("web1")
    assert report.problems == [] and report.backups == [inc.id, full.id]
    assert [b.verified for b in backups.backups()] == ["ok", "ok"]
    # the policy lives in the VM's spec (through the lifecycle service, not the facade)
    policy = backups.set_policy("web1", PolicyUpdate(keep_last=1, every="1h"))
    assert backups.policy("web1") == policy and policy.keep_last == 1
    assert backups.prune("web1").pruned == (full.id,)
    assert [b.id for b in backups.backups("web1")] == [inc.id]
    # the newest backup is older than an hour from "now": run_due backs up and prunes
    result = backups.run_due(now=inc.created_at.replace(tzinfo=UTC).timestamp() + 10 * 3600)
    (run,) = result.runs
    assert result.failed == 0 and run.backup is not None and run.backup.kind == "incremental"
    assert len(backups.backups("web1")) == 1 and backups.backups("web1")[0].id != inc.id


def test_restore_in_place_stops_through_the_power_service(
    ctx: EngineContext, backups: BackupService
) -> None:
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    FakeDisks.write(volume(ctx, "data1"), "0", "data v1")
    backup = backups.create("web1")
    FakeDisks.write(root(ctx, "web1"), "0", "root v2")
    FakeDisks.write(volume(ctx, "data1"), "0", "data v2")
    with pytest.raises(Conflict, match="cannot restore web1 in place: it is running"):
        backups.restore("web1")
    assert FakeDisks.content(root(ctx, "web1")) == {"0": "root v2"}  # nothing changed
    message = backups.restore("web1", force=True).message
    assert message.startswith(f"web1 restored from backup {backup.id}")
    assert instance_view.show(ctx, "web1").state == VMState.STOPPED.value
    assert FakeDisks.content(root(ctx, "web1")) == {"0": "root v1"}
    assert FakeDisks.content(volume(ctx, "data1")) == {"0": "data v1"}


def test_restore_as_a_new_vm_with_its_volumes(ctx: EngineContext, backups: BackupService) -> None:
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    FakeDisks.write(volume(ctx, "data1"), "7", "volume data")
    backup = backups.create("web1")
    message = backups.restore("web1", as_name="copy").message
    assert message == (
        f"copy created from backup {backup.id} of web1 with volume(s) copy-data1 (stopped)"
    )
    view = instance_view.show(ctx, "copy")
    assert view.state == VMState.STOPPED.value and view.id != ctx.row("web1").id
    assert FakeDisks.content(root(ctx, "copy")) == {"0": "root v1"}
    assert FakeDisks.content(volume(ctx, "copy-data1")) == {"7": "volume data"}
    assert instance_view.show(ctx, "web1").state == VMState.RUNNING.value  # left alone


def test_export_then_import_as_a_new_vm(
    ctx: EngineContext, backups: BackupService, short_tmp: Path
) -> None:
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    FakeDisks.write(volume(ctx, "data1"), "0", "data v1")
    dest = short_tmp / "web1.cloudlet"
    with pytest.raises(Conflict, match="cannot export web1: it is running"):
        backups.export("web1", dest)
    assert not dest.exists()
    power.stop(ctx, "web1", force=True)
    assert backups.export("web1", dest).message.startswith(f"web1 exported to {dest}")
    view = backups.import_(dest, "imported")
    assert view.name == "imported" and view.state == VMState.STOPPED.value
    assert FakeDisks.content(root(ctx, "imported")) == {"0": "root v1"}
    assert FakeDisks.content(volume(ctx, "imported-data1")) == {"0": "data v1"}


def test_no_backup_module_imports_the_engine_facade() -> None:
    """Not even under TYPE_CHECKING or inside a function: the services take the context."""
    assert len(BACKUP_MODULES) >= 10, BACKUP_MODULES
    bad = [
        str(i)
        for path in BACKUP_MODULES
        for i in imports_of(path.read_text(), module_name(path, Path(SRC)), False)
        if within(i.target, "cloudlet.engine.engine")
    ]
    assert bad == []


def test_the_facade_check_sees_an_import_of_the_engine() -> None:
    """The check above would catch one: the scan resolves a lazy facade import."""
    source = "def late():\n    from cloudlet.engine.engine import Engine\n"
    found = imports_of(source, "cloudlet.engine.backup_x", False)
    assert any(within(i.target, "cloudlet.engine.engine") for i in found)


def test_a_backup_cancelled_during_its_copy_leaves_no_backup_and_no_chunk(
    ctx: EngineContext, backups: BackupService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call's token (call_options) ends the chunk copy; what it stored goes."""
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    FakeDisks.write(volume(ctx, "data1"), "0", "data v1")
    token = CancelToken()
    read_extents = ctx.deps.disks.extents

    def extents_then_cancel(path: Path, piece: int) -> Iterator[tuple[int, bytes | None, int]]:
        yield from read_extents(path, piece)
        token.cancel(REASON)  # the first disk is stored; the second must not be

    monkeypatch.setattr(ctx.deps.disks, "extents", extents_then_cancel)
    chunks = ctx.settings.backup_store / "chunks"

    def stored() -> list[Path]:
        return sorted(p for p in chunks.rglob("*") if p.is_file())

    before = stored()
    with call_options.per_call(cancel=token), pytest.raises(Cancelled, match=REASON):
        backups.create("web1")
    assert backups.backups("web1") == []
    assert stored() == before
    monkeypatch.undo()
    assert backups.create("web1").kind == "full"  # nothing half-made stands in the way


def stages(events: list[ProgressEvent]) -> list[str]:
    """The stages in the order they began (a counted stage once)."""
    seen: list[str] = []
    for event in events:
        if not seen or seen[-1] != event.stage:
            seen.append(event.stage)
    return seen


def counted(events: list[ProgressEvent], stage: str) -> list[tuple[int, int]]:
    found = [(e.done, e.total) for e in events if e.stage == stage]
    assert found and all(d is not None and t is not None for d, t in found)
    return [(d, t) for d, t in found if d is not None and t is not None]


def assert_counts_up(pairs: list[tuple[int, int]]) -> None:
    """done never goes back, never passes the one total, and reaches it."""
    dones = [d for d, _ in pairs]
    (total,) = {t for _, t in pairs}
    assert dones == sorted(dones) and dones[0] == 0 and dones[-1] == total > 0


def test_a_backup_and_its_restores_report_their_stages_in_order(
    ctx: EngineContext, backups: BackupService
) -> None:
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    FakeDisks.write(volume(ctx, "data1"), "0", "data v1")
    events: list[ProgressEvent] = []
    backup = backups.create("web1", progress=events.append)
    assert stages(events) == [
        "freezing the guest",
        "copying disks",
        "storing chunks",
        "signing the manifest",
    ]
    stored = counted(events, "storing chunks")
    assert_counts_up(stored)
    assert stored[-1][1] == sum(d.size for d in backup.disks)

    events.clear()
    backups.restore("web1", as_name="copy", progress=events.append)
    assert stages(events) == [
        f"reading backup {backup.id}",
        "writing disk root",
        "checking disk root",
        "writing disk data1",
        "checking disk data1",
        "creating copy",
    ]
    assert_counts_up(counted(events, "writing disk root"))
    assert counted(events, "writing disk data1")[-1][1] == backup.disks[1].size

    events.clear()
    backups.restore("web1", force=True, progress=events.append)
    assert stages(events)[0] == "stopping web1"
    assert stages(events)[-1] == "switching to the restored disks"


def test_export_and_import_report_their_stages(
    ctx: EngineContext, backups: BackupService, short_tmp: Path
) -> None:
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    power.stop(ctx, "web1", force=True)
    dest = short_tmp / "web1.cloudlet"
    events: list[ProgressEvent] = []
    backups.export("web1", dest, progress=events.append)
    assert stages(events) == [
        "copying the root disk",
        "copying volume data1",
        "hashing the files",
        "writing the archive",
    ]
    assert_counts_up(counted(events, "writing the archive"))
    events.clear()
    backups.import_(dest, "imported", progress=events.append)
    assert stages(events) == [
        "checking the archive",
        "checking the disks' SHA-256",
        "extracting disk.qcow2",
        "extracting volumes/data1.qcow2",
    ]
    checked = counted(events, "checking the disks' SHA-256")
    assert checked[-1][0] == checked[-1][1] > 0


def test_a_backup_cancelled_while_it_stores_chunks_leaves_nothing(
    ctx: EngineContext, backups: BackupService
) -> None:
    """Cancelled from its own progress sink (as a Ctrl-C would, mid-copy): no backup row,
    manifest, chunk or work file stays, and the next backup is a full one."""
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    store = ctx.settings.backup_store
    token = CancelToken()

    def files() -> list[Path]:
        return sorted(p for p in store.rglob("*") if p.is_file() and p.name != "host.key")

    before = files()

    def sink(event: ProgressEvent) -> None:
        if event.stage == "storing chunks" and event.done:
            token.cancel(REASON)

    with pytest.raises(Cancelled, match=REASON):
        backups.create("web1", progress=sink, cancel=token)
    assert backups.backups("web1") == []
    assert files() == before
    assert backups.create("web1").kind == "full"


def test_a_restore_cancelled_while_it_writes_keeps_the_old_disks(
    ctx: EngineContext, backups: BackupService
) -> None:
    FakeDisks.write(root(ctx, "web1"), "0", "root v1")
    backups.create("web1")
    FakeDisks.write(root(ctx, "web1"), "0", "root v2")
    power.stop(ctx, "web1", force=True)
    token = CancelToken()
    old = root(ctx, "web1")
    instance_dir = old.parent

    def sink(event: ProgressEvent) -> None:
        if event.stage == "writing disk data1":
            token.cancel(REASON)

    before = sorted(instance_dir.iterdir())
    with pytest.raises(Cancelled, match=REASON):
        backups.restore("web1", progress=sink, cancel=token)
    assert root(ctx, "web1") == old and FakeDisks.content(old) == {"0": "root v2"}
    assert sorted(instance_dir.iterdir()) == before  # no .restore-* file left
    token = CancelToken()  # again, as a new VM: the root disk is written when it stops
    with pytest.raises(Cancelled, match=REASON):
        backups.restore("web1", as_name="copy", progress=sink, cancel=token)
    with pytest.raises(NotFound):
        ctx.row("copy")
