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
from cloudlet.errors import Cancelled, Conflict
from cloudlet.progress import CancelToken
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
