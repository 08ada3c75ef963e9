"""The engine's use cases on the fake driver: validation, state machine, capacity, recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudlet.driver.base import PowerState
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.engine import Engine
from cloudlet.engine.views import Cleanup, Done
from cloudlet.errors import (
    CapacityExceeded,
    CloudletError,
    Conflict,
    InvalidInput,
    NotFound,
    StillRunning,
)
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import VMBody
from cloudlet.spec.units import GIB, MIB
from cloudlet.store.models import InstanceRow, OperationRow
from tests.fakes import add_interrupted_create, make_fake_engine
from tests.tree_hash import tree_hash


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


def fake(engine: Engine) -> FakeDriver:
    assert isinstance(engine.driver, FakeDriver)
    return engine.driver


def nothing_left(engine: Engine) -> bool:
    return not engine.instances() and not any(engine.paths.instances.iterdir())


def test_create_starts_and_exec_sees_the_shape(engine: Engine) -> None:
    vm = engine.create("web1", VMBody(type="gp.medium"))
    assert (vm.state, vm.type, vm.cpus, vm.memory) == ("running", "gp.medium", 2, 4 * GIB)
    assert engine.exec("web1", ["nproc"]).stdout == b"2\n"
    assert vm.ssh_port is not None
    assert [v.name for v in engine.instances()] == ["web1"]


def test_custom_shape_and_disk(engine: Engine) -> None:
    body = VMBody.model_validate({"cpus": 3, "memory": "1536M", "disk_size": "1G"})
    vm = engine.create("c1", body)
    assert (vm.type, vm.cpus, vm.memory, vm.disk_size) == ("custom", 3, 1536 * MIB, GIB)


def _body(**fields: object) -> VMBody:
    """A body as a caller that skips the model's validation could send it."""
    return VMBody.model_construct(**fields)


@pytest.mark.parametrize(
    ("name", "body", "error"),
    [
        ("Web1", VMBody(), InvalidInput),
        ("1abc", VMBody(), InvalidInput),
        ("a" * 64, VMBody(), InvalidInput),
        ("ok", VMBody(type="gp.nope"), NotFound),
        ("ok", VMBody(image="nope"), NotFound),
        ("ok", _body(cpus=0), InvalidInput),
        ("ok", _body(cpus=300), InvalidInput),
        ("ok", _body(image="../etc"), InvalidInput),
        ("ok", _body(profile="future"), InvalidInput),
        ("ok", _body(arch="sparc"), InvalidInput),
        ("ok", _body(memory=16 * MIB), InvalidInput),
        ("ok", VMBody(cpus=17), CapacityExceeded),
        ("ok", _body(memory=9 * GIB), CapacityExceeded),
        ("ok", _body(disk_size=100 * MIB), InvalidInput),
        ("ok", VMBody(network="none", networks=["bridge0"]), NotFound),
        ("ok", VMBody(networks=["none"]), InvalidInput),
        ("ok", VMBody(user_data_file="/etc/hostname"), InvalidInput),
    ],
)
def test_bad_create_input_creates_nothing(
    engine: Engine, name: str, body: VMBody, error: type[CloudletError]
) -> None:
    with pytest.raises(error) as exc:
        engine.create(name, body)
    assert exc.value.hint, "every error says what to do next"
    assert "\n" not in exc.value.one_line()
    assert nothing_left(engine)


def test_duplicate_name_is_refused(engine: Engine) -> None:
    engine.create("web1", VMBody())
    with pytest.raises(Conflict, match="already exists"):
        engine.create("web1", VMBody())
    assert len(engine.instances()) == 1


def test_capacity_names_what_is_left(engine: Engine) -> None:
    # host: 4 cores x 4 = 16 vCPUs, 8 GiB - 1 GiB reserve = 7 GiB
    engine.create("a", VMBody.model_validate({"cpus": 1, "memory": "4G"}))
    with pytest.raises(CapacityExceeded) as exc:
        engine.create("b", VMBody.model_validate({"cpus": 1, "memory": "4G"}))
    assert "3 GiB of 7 GiB are free" in exc.value.message
    engine.stop("a")
    engine.create("b", VMBody.model_validate({"cpus": 1, "memory": "4G"}))
    with pytest.raises(CapacityExceeded):
        engine.start("a")
    assert engine.show("a").state == "stopped"


def test_commands_on_missing_vm(engine: Engine) -> None:
    for call in (
        lambda: engine.start("ghost"),
        lambda: engine.stop("ghost"),
        lambda: engine.pause("ghost"),
        lambda: engine.resume("ghost"),
        lambda: engine.delete("ghost"),
        lambda: engine.show("ghost"),
        lambda: engine.exec("ghost", ["true"]),
    ):
        with pytest.raises(NotFound, match="no VM named 'ghost'"):
            call()


def test_state_machine_answers(engine: Engine) -> None:
    engine.create("vm", VMBody())
    again = engine.start("vm")
    assert not again.changed and "already running" in again.message
    assert engine.pause("vm").instance.state == "paused"
    with pytest.raises(Conflict, match="it is paused"):
        engine.exec("vm", ["true"])
    assert not engine.pause("vm").changed
    assert engine.resume("vm").instance.state == "running"
    assert not engine.resume("vm").changed
    engine.stop("vm")
    with pytest.raises(Conflict, match="cannot pause vm: it is stopped") as exc:
        engine.pause("vm")
    assert exc.value.hint == "start it first"
    assert exc.value.next_steps == (step(Step.VM_START, vm="vm"),)
    assert not engine.stop("vm").changed


def test_graceful_then_forced_stop(engine: Engine) -> None:
    vm = engine.create("vm", VMBody())
    assert "forced" not in engine.stop("vm").message
    engine.start("vm")
    fake(engine).ignore_acpi(vm.id)
    result = engine.stop("vm")
    assert "forced" in result.message
    assert result.instance.state == "stopped"
    assert fake(engine).power_state(vm.id) == PowerState.ABSENT


def test_stop_of_paused_vm_resumes_to_press_the_button(engine: Engine) -> None:
    engine.create("vm", VMBody())
    engine.pause("vm")
    result = engine.stop("vm")
    assert "forced" not in result.message and result.instance.state == "stopped"


def test_dead_qemu_is_crashed_not_running(engine: Engine) -> None:
    vm = engine.create("vm", VMBody())
    fake(engine).crash(vm.id)
    assert engine.show("vm").state == "crashed"
    assert "died" in (engine.show("vm").last_error or "")
    assert engine.start("vm").instance.state == "running"


def test_guest_poweroff_is_stopped_not_crashed(engine: Engine) -> None:
    vm = engine.create("vm", VMBody())
    fake(engine).vms[vm.id].state = PowerState.SHUTDOWN
    assert engine.show("vm").state == "stopped"


def test_failed_start_leaves_error_state_and_no_process(engine: Engine) -> None:
    engine.create("vm", VMBody(state="stopped"))
    fake(engine).fail_next_start = "qemu: could not open disk"
    with pytest.raises(CloudletError, match="could not open disk"):
        engine.start("vm")
    vm = engine.show("vm")
    assert vm.state == "error" and "could not open disk" in (vm.last_error or "")
    assert engine.start("vm").instance.state == "running"


def test_create_whose_first_boot_fails_leaves_nothing(engine: Engine) -> None:
    fake(engine).fail_next_start = "boom"
    with pytest.raises(CloudletError, match="boom"):
        engine.create("vm", VMBody())
    assert nothing_left(engine)
    assert engine.create("vm", VMBody()).state == "running"


def test_delete_removes_everything(engine: Engine) -> None:
    vm = engine.create("vm", VMBody())
    engine.delete("vm", force=True)
    assert nothing_left(engine)
    assert fake(engine).power_state(vm.id) == PowerState.ABSENT
    with pytest.raises(NotFound):
        engine.show("vm")


def test_delete_of_a_running_or_paused_vm_needs_force_and_touches_nothing(
    engine: Engine,
) -> None:
    vm = engine.create("vm", VMBody())
    for state in ("running", "paused"):
        before = tree_hash(engine.paths.home)
        with pytest.raises(StillRunning) as refused:
            engine.delete("vm")
        assert isinstance(refused.value, Conflict) and refused.value.exit_code == 4
        assert refused.value.one_line() == (
            f"vm is {state}: stop it first, or delete it with force (it is stopped at once)"
        )
        assert engine.show("vm").state == state
        assert fake(engine).power_state(vm.id) != PowerState.ABSENT
        assert tree_hash(engine.paths.home) == before
        if state == "running":
            engine.pause("vm")
    engine.delete("vm", force=True)
    assert nothing_left(engine)


def test_delete_of_a_stopped_or_crashed_vm_needs_no_force(engine: Engine) -> None:
    engine.create("off", VMBody(state="stopped"))
    crashed = engine.create("dead", VMBody())
    fake(engine).crash(crashed.id)  # the record still says running until looked at
    assert engine.delete("off").message == "off deleted"
    assert engine.delete("dead") == Done("vm", "dead", "deleted", "dead deleted")
    assert nothing_left(engine)


def test_interrupted_create_is_rolled_back_by_the_next_engine(short_tmp: Path) -> None:
    home = short_tmp / "home"
    first = make_fake_engine(home)
    # A create that died half way: row and operation recorded, disk made, process gone.
    add_interrupted_create(first.db, "dead-1", "half")
    (first.paths.instance_dir("dead-1")).mkdir(parents=True)
    second = make_fake_engine(home)
    notes = second.recover()
    assert notes == [
        Cleanup("operation", "half", "rolled back", "rolled back the interrupted create of half")
    ]
    with second.db.session() as s:
        assert s.get(InstanceRow, "dead-1") is None
        ops = s.query(OperationRow).all()
        assert [o.status for o in ops] == ["rolled_back"]
    assert not second.paths.instance_dir("dead-1").exists()


def test_operation_in_progress_elsewhere_is_left_alone(short_tmp: Path) -> None:
    from cloudlet.engine import locks

    engine = make_fake_engine(short_tmp / "home")
    with engine.db.session() as s:
        s.add(
            OperationRow(
                instance_id="x", instance_name="busy", kind="create", status="running",
                pid=os.getpid(),
            )
        )  # fmt: skip
    with locks.hold(engine.paths.locks, "busy"):
        assert engine.recover() == []


def test_host_view_counts_usage(engine: Engine) -> None:
    engine.create("a", VMBody(type="gp.medium"))
    engine.create("b", VMBody(type="gp.small", state="stopped"))
    host = engine.host()
    assert (host.cpus_used, host.memory_used) == (2, 4 * GIB)
    assert (host.cpu_limit, host.memory_limit) == (16, 7 * GIB)
    assert (host.instances, host.running, host.accel) == (2, 1, "tcg")


def test_a_guest_paused_for_want_of_disk_space_is_paused_not_crashed(engine: Engine) -> None:
    vm = engine.create("vm", VMBody())
    fake(engine).vms[vm.id].state = PowerState.NO_SPACE
    view = engine.show("vm")
    assert view.state == "paused" and "no space left" in (view.last_error or "")
    assert "then resume it" in (view.last_error or "")
    assert fake(engine).vms[vm.id].alive  # QEMU keeps the write waiting: never killed
    engine.resume("vm")
    view = engine.show("vm")
    assert view.state == "running" and view.last_error is None
