"""The instance services built from an EngineContext alone, on the fake driver.

No Engine facade exists in these tests: a service that still needed it (or one of
its private helpers) could not be built or would fail here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cloudlet.driver.base import PowerState
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine import recovery
from cloudlet.engine.context import EngineContext
from cloudlet.engine.creation import Creation
from cloudlet.engine.guest_access import GuestAccess
from cloudlet.engine.host_info import HostInfo
from cloudlet.engine.image_views import LicenceView
from cloudlet.engine.images import Images
from cloudlet.engine.licences import Licences
from cloudlet.engine.lifecycle import Lifecycle
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, InvalidInput, NotFound, StillRunning
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import AccessDoc, VMBody
from cloudlet.spec.instance import FirewallSpec
from cloudlet.spec.states import VMState
from cloudlet.spec.units import GIB
from cloudlet.store.models import InstanceRow, OperationRow
from tests.fakes import add_interrupted_create, make_fake_context

SERVICE_MODULES = (
    "creation", "lifecycle", "images", "licences", "host_info", "recovery",
    "guest_access", "process_vms", "process_io",
)  # fmt: skip
ENGINE_DIR = Path(__file__).resolve().parents[2] / "src" / "cloudlet" / "engine"


class RecordingVolumes:
    """The storage hooks a create uses, recording what it asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def check_new_vm_volumes(self, vm: str, sizes: tuple[int, ...]) -> None:
        self.calls.append(("check", sizes))

    def create_for_new_vm(self, instance_id: str, vm: str, sizes: tuple[int, ...]) -> list[str]:
        self.calls.append(("create", sizes))
        return [f"{vm}-vol{i}" for i in range(len(sizes))]

    def undo_new_vm_volumes(self, instance_id: str, made: list[str]) -> None:
        self.calls.append(("undo", tuple(made)))


@pytest.fixture
def ctx(short_tmp: Path) -> EngineContext:
    return make_fake_context(short_tmp / "home")


def creation(ctx: EngineContext, volumes: RecordingVolumes | None = None) -> Creation:
    return Creation(ctx, volumes or RecordingVolumes(), size_cap=lambda: 1024 * GIB)


def fake(ctx: EngineContext) -> FakeDriver:
    assert isinstance(ctx.driver, FakeDriver)
    return ctx.driver


def state(ctx: EngineContext, name: str) -> str:
    return ctx.row(name).state


def test_no_service_imports_the_facade() -> None:
    for module in SERVICE_MODULES:
        tree = ast.parse((ENGINE_DIR / f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
        }
        assert "cloudlet.engine.engine" not in imported, module


def test_create_records_boots_and_notes_what_is_only_recorded(ctx: EngineContext) -> None:
    creation(ctx).create("web1", VMBody(access=AccessDoc(api_access=True)))
    row = ctx.row("web1")
    assert row.state == VMState.RUNNING
    assert fake(ctx).power_state(row.id) == PowerState.RUNNING
    assert (ctx.paths.instance_dir(row.id) / "disk.qcow2").exists()
    assert any("API access" in n for n in ctx.notices)
    with pytest.raises(Conflict):
        creation(ctx).create("web1", VMBody())


def test_create_without_start_leaves_it_stopped(ctx: EngineContext) -> None:
    creation(ctx).create("web1", VMBody(state="stopped"))
    assert state(ctx, "web1") == VMState.STOPPED
    assert fake(ctx).power_state(ctx.row("web1").id) == PowerState.ABSENT


def test_create_refuses_bad_answers_before_anything_exists(ctx: EngineContext) -> None:
    with pytest.raises(InvalidInput, match="unknown location"):
        creation(ctx).create("web1", VMBody(location="mars"))
    with pytest.raises(InvalidInput, match="invalid port"):
        closed = FirewallSpec.model_construct(inbound_ports=(0,))  # as a caller that skips checks
        creation(ctx).create("web1", VMBody.model_construct(firewall=closed))
    with pytest.raises(InvalidInput, match="the disk of web1"):
        small = Creation(ctx, RecordingVolumes(), size_cap=lambda: GIB)
        small.create("web1", VMBody.model_validate({"disk_size": "2G"}))
    with pytest.raises(NotFound):
        ctx.row("web1")
    assert not any(ctx.paths.instances.iterdir())


def test_a_failed_create_undoes_its_volumes_and_files(
    ctx: EngineContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudlet.engine import launch

    def broken_boot(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boot failed")

    monkeypatch.setattr(launch, "boot", broken_boot)
    volumes = RecordingVolumes()
    with pytest.raises(RuntimeError):
        creation(ctx, volumes).create("db1", VMBody.model_validate({"volumes": ["1G"]}))
    assert volumes.calls == [("check", (GIB,)), ("create", (GIB,)), ("undo", ("db1-vol0",))]
    with pytest.raises(NotFound):
        ctx.row("db1")
    assert not any(ctx.paths.instances.iterdir())


def test_start_pause_resume_and_delete(ctx: EngineContext) -> None:
    creation(ctx).create("web1", VMBody(state="stopped"))
    life = Lifecycle(ctx)
    assert life.start("web1").changed
    assert not life.start("web1").changed
    assert state(ctx, "web1") == VMState.RUNNING
    assert life.pause("web1").message == "web1 paused"
    assert state(ctx, "web1") == VMState.PAUSED
    assert not life.pause("web1").changed
    assert life.resume("web1").changed
    assert state(ctx, "web1") == VMState.RUNNING
    with pytest.raises(StillRunning):
        life.delete("web1")
    instance_id = ctx.row("web1").id
    assert life.delete("web1", force=True) == Done("vm", "web1", "deleted", "web1 deleted")
    assert fake(ctx).power_state(instance_id) in (PowerState.ABSENT, PowerState.GONE)
    with pytest.raises(NotFound):
        ctx.row("web1")
    assert not ctx.paths.instance_dir(instance_id).exists()


def test_delete_without_force_of_a_stopped_vm(ctx: EngineContext) -> None:
    creation(ctx).create("off", VMBody(state="stopped"))
    assert Lifecycle(ctx).delete("off").message == "off deleted"
    with pytest.raises(NotFound):
        ctx.row("off")


def test_a_crashed_vm_is_reconciled_before_start(ctx: EngineContext) -> None:
    creation(ctx).create("web1", VMBody())
    fake(ctx).crash(ctx.row("web1").id)
    assert Lifecycle(ctx).start("web1").changed
    assert state(ctx, "web1") == VMState.RUNNING


def test_reshape_and_spec_updates(ctx: EngineContext) -> None:
    creation(ctx).create("web1", VMBody(state="stopped"))
    life = Lifecycle(ctx)
    outcome = life.reshape("web1", None, 2, 2 * GIB)
    assert outcome.changed and "2 vCPU" in outcome.message
    assert (life.spec("web1").cpus, ctx.row("web1").memory) == (2, 2 * GIB)
    assert life.update_spec("web1", {"api_access": True}).changed
    assert life.spec("web1").api_access
    with pytest.raises(InvalidInput, match="cannot change cpus"):
        life.update_spec("web1", {"cpus": 4})


def test_recover_rolls_back_an_interrupted_create(ctx: EngineContext) -> None:
    add_interrupted_create(ctx.db, "dead-1", "half")
    ctx.paths.instance_dir("dead-1").mkdir(parents=True)
    (done,) = recovery.recover(ctx)
    assert (done.what, done.name, done.action) == ("operation", "half", "rolled back")
    assert str(done) == "rolled back the interrupted create of half"
    with ctx.db.session() as s:
        assert s.get(InstanceRow, "dead-1") is None
        assert [o.status for o in s.query(OperationRow).all()] == ["rolled_back"]
    assert not ctx.paths.instance_dir("dead-1").exists()
    assert recovery.recover(ctx) == []


def test_licences_count_seats_of_running_vms(ctx: EngineContext) -> None:
    licences = Licences(ctx)
    assert licences.license_add("acme-os", 1) == LicenceView("acme-os", 1, 0)
    creation(ctx).create("a1", VMBody(image="acme"))
    assert licences.licences() == [LicenceView("acme-os", 1, 1)]
    assert licences.licences()[0].to_dict() == {"name": "acme-os", "seats": 1, "in_use": 1}
    with pytest.raises(Conflict, match="1 seats and 1 are in use"):
        creation(ctx).create("a2", VMBody(image="acme"))
    with pytest.raises(InvalidInput):
        licences.license_add("acme-os", -1)


def test_images_list_the_vms_using_them(ctx: EngineContext) -> None:
    creation(ctx).create("web1", VMBody(state="stopped"))
    images = Images(ctx, size_cap=lambda: GIB)
    listed = {i.name: i.used_by for i in images.images()}
    assert listed["tiny"] == ("web1",) and listed["acme"] == ()
    shown = images.image_show("tiny")
    assert shown.used_by == ("web1",) and shown.boot == "kernel"
    assert list(shown.to_dict()) == [
        "name", "arch", "format", "os", "os_family", "licence", "min_disk_bytes",
        "default_user", "cloud_init", "guest_agent", "boot", "path", "used_by",
    ]  # fmt: skip
    assert shown.to_dict()["used_by"] == ["web1"]
    with pytest.raises(Conflict, match="used by web1") as refused:
        images.image_delete("tiny")
    assert refused.value.next_steps == (step(Step.VM_DELETE, vm="web1"),)
    assert images.image_delete("acme") == Done("image", "acme", "deleted", "image acme deleted")
    with pytest.raises(NotFound):
        images.image_show("acme")


def test_host_and_guest_reads(ctx: EngineContext) -> None:
    creation(ctx).create("web1", VMBody())
    host = HostInfo(ctx).host()
    assert (host.instances, host.running, host.accel) == (1, 1, "tcg")
    guest = GuestAccess(ctx)
    assert guest.guest_info("web1").hostname == "web1"
    with pytest.raises(InvalidInput, match="no command"):
        guest.exec("web1", [])
    Lifecycle(ctx).pause("web1")
    with pytest.raises(Conflict, match="it is paused"):
        guest.exec("web1", ["true"])
