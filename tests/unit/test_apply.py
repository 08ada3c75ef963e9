"""plan/apply/create --from/export on the fake engine: decisions, idempotence, refusals."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest

from cloudlet.cli import wording
from cloudlet.engine import apply as apply_mod
from cloudlet.engine.engine import Engine
from cloudlet.engine.local_files import read_files
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import AccessDoc, VMBody, dump_yaml, parse_documents
from cloudlet.spec.instance import FirewallSpec
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl own"


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    engine = make_fake_engine(short_tmp / "home")
    keys = engine.paths.home / "keys"  # cloudlet's own pair, made already (no ssh-keygen)
    keys.mkdir()
    (keys / "id_ed25519").write_text("private\n")
    (keys / "id_ed25519.pub").write_text(KEY + "\n")
    return engine


def vm(name: str, **spec: str) -> str:
    body = "".join(f"  {k}: {v}\n" for k, v in spec.items()) or "  {}\n"
    return f"apiVersion: cloudlet/v1\nkind: VM\nmetadata:\n  name: {name}\nspec:\n{body}"


LAB = vm("web1", type="gp.micro") + "---\n" + vm("db1", type="gp.medium", state="stopped")


def entries(text: str, source: str = "lab.yaml") -> list[apply_mod.VMEntry]:
    return parse_documents(text, source)


def actions(plan: apply_mod.Plan) -> list[tuple[str, str]]:
    return [(d.name, d.action) for d in plan.decisions]


def test_apply_creates_then_a_second_apply_changes_nothing(engine: Engine) -> None:
    assert actions(apply_mod.plan(engine, entries(LAB))) == [("web1", "create"), ("db1", "create")]
    assert engine.instances() == []  # plan does nothing
    apply_mod.apply(engine, entries(LAB))
    states = {v.name: (v.state, v.type) for v in engine.instances()}
    assert states == {"web1": ("running", "gp.micro"), "db1": ("stopped", "gp.medium")}
    again = apply_mod.apply(engine, entries(LAB))
    assert actions(again) == [("web1", "none"), ("db1", "none")] and not again.changes


def test_power_state_follows_the_file(engine: Engine) -> None:
    apply_mod.apply(engine, entries(LAB))
    flipped = vm("web1", type="gp.micro", state="stopped") + "---\n" + vm("db1", type="gp.medium")
    plan = apply_mod.apply(engine, entries(flipped))
    assert actions(plan) == [("web1", "stop"), ("db1", "start")]
    assert {v.name: v.state for v in engine.instances()} == {"web1": "stopped", "db1": "running"}


def test_type_change_on_a_stopped_vm_applies_at_once(engine: Engine) -> None:
    apply_mod.apply(engine, entries(LAB))
    bigger = vm("db1", type="mem.small", state="stopped")
    plan = apply_mod.apply(engine, entries(bigger))
    assert actions(plan) == [("db1", "reshape")]
    assert "gp.medium (2 vCPUs, 4 GiB) -> mem.small (1 vCPU, 8 GiB)" in plan.decisions[0].detail
    shown = engine.show("db1")
    assert (shown.type, shown.cpus, shown.memory, shown.state) == (
        "mem.small",
        1,
        8 * GIB,
        "stopped",
    )
    assert engine.spec("db1").type == "mem.small"  # the stored spec follows the row
    assert not apply_mod.apply(engine, entries(bigger)).changes


def test_type_change_on_a_running_vm_is_refused_unless_it_may_stop(engine: Engine) -> None:
    apply_mod.apply(engine, entries(LAB))
    running = vm("web1", type="gp.small")
    plan = apply_mod.plan(engine, entries(running))
    assert actions(plan) == [("web1", "refuse")] and "needs a stop" in plan.decisions[0].detail
    with pytest.raises(Conflict, match=r"^lab.yaml:6: web1: machine type .* needs a stop"):
        apply_mod.apply(engine, entries(running))
    assert engine.show("web1").type == "gp.micro"
    stop_then = vm("web1", type="gp.small", state="stopped")
    assert actions(apply_mod.apply(engine, entries(stop_then))) == [
        ("web1", "stop"),
        ("web1", "reshape"),
    ]
    assert (engine.show("web1").type, engine.show("web1").state) == ("gp.small", "stopped")


def test_fixed_fields_are_refused_with_the_way_there(engine: Engine) -> None:
    apply_mod.apply(engine, entries(LAB))
    moved = vm("web1", type="gp.micro", location="zone-b") + "---\n" + vm("new1")
    plan = apply_mod.plan(engine, entries(moved))
    assert actions(plan) == [("web1", "refuse"), ("new1", "create")]
    detail = plan.decisions[0].detail
    assert "location is local, the file says zone-b" in detail and "delete and re-create" in detail
    with pytest.raises(Conflict, match=r"lab.yaml:7: web1: location"):
        apply_mod.apply(engine, entries(moved))
    assert {v.name for v in engine.instances()} == {"web1", "db1"}  # all or nothing
    image = vm("web1", type="gp.micro", image="acme")
    assert (
        "image is tiny, the file says acme"
        in apply_mod.plan(engine, entries(image)).decisions[0].detail
    )


def test_data_fields_are_recorded(engine: Engine) -> None:
    apply_mod.apply(engine, entries(LAB))
    text = vm("web1", type="gp.micro", volumes="[5G]", backup="{schedule: daily, keep: 7}")
    plan = apply_mod.apply(engine, entries(text))
    assert actions(plan) == [("web1", "update")]
    spec = engine.spec("web1")
    assert spec.volumes == (5 * GIB,) and (spec.backup.schedule, spec.backup.keep) == ("daily", 7)
    assert not apply_mod.plan(engine, entries(text)).changes


def test_bad_files_create_nothing_and_name_line_and_field(engine: Engine) -> None:
    missing_image = vm("a") + "---\n" + vm("b", image="nosuch")
    with pytest.raises(NotFound, match=r"^lab.yaml:13: spec.image: unknown image 'nosuch'"):
        apply_mod.apply(engine, entries(missing_image))
    pull = vm("b", image="ubuntu-24.04")
    with pytest.raises(NotFound) as exc:
        apply_mod.apply(engine, entries(pull))
    assert exc.value.next_steps == (step(Step.IMAGE_PULL, image="ubuntu-24.04"),)
    assert "cloudlet image pull ubuntu-24.04" in wording.error_line(exc.value)
    bad_key = vm("c", image="cloudy", access="{ssh_keys: ['ssh-ed25519 !!notbase64']}")
    with pytest.raises(
        InvalidInput, match=r"^lab.yaml:7: spec.access.ssh_keys.0: the key has a damaged"
    ):
        apply_mod.apply(engine, entries(bad_key))
    where = vm("d", location="mars")
    with pytest.raises(InvalidInput, match=r"^lab.yaml:6: spec.location: unknown location 'mars'"):
        apply_mod.apply(engine, entries(where))
    assert engine.instances() == [] and not any(engine.paths.instances.iterdir())


def test_containers_need_cloud_init(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="image tiny has no cloud-init") as exc:
        apply_mod.create_from(engine, entries(vm("c1", containers="true"))[0])
    assert "\n" not in exc.value.one_line()
    created = apply_mod.create_from(engine, entries(vm("c2", containers="true", image="cloudy"))[0])
    assert created.state == "running" and engine.spec("c2").containers
    seed = (Path(created.paths["disk"]).parent / "seed.iso").read_bytes()
    assert b"podman.socket" in seed and b"- podman" in seed


def test_export_round_trip_gives_an_equal_spec(engine: Engine) -> None:
    body = VMBody.model_validate(
        {
            "image": "cloudy", "cpus": 3, "memory": "3G", "disk_size": "2G", "volumes": ["1G"],
            "firewall": {"inbound_ports": [80, 22]}, "access": {"api_access": True},
            "containers": True, "state": "stopped",
        }
    )  # fmt: skip
    engine.create("src", body)
    original = engine.spec("src")
    text = dump_yaml([apply_mod.export(engine, "src")])
    assert "ssh_keys" not in text  # cloudlet's own pair: left out
    engine.delete("src")
    (entry,) = parse_documents(text, "src.yaml")
    apply_mod.create_from(engine, entry)
    assert engine.spec("src") == original
    assert engine.show("src").state == "stopped"
    assert dump_yaml([apply_mod.export(engine, "src")]) == text
    assert not apply_mod.plan(engine, [entry]).changes


def test_create_says_what_is_only_recorded(engine: Engine) -> None:
    engine.create("plain", VMBody())
    assert not [n for n in engine.notices if "recorded" in n]
    more = VMBody.model_validate({"volumes": ["1G"], "firewall": {"inbound_ports": [80]}})
    engine.create("more", more)
    (note,) = [n for n in engine.notices if "recorded" in n]
    assert "volumes" not in note and "enforced on virtual networks" in note
    with pytest.raises(InvalidInput, match="invalid port 0"):
        closed = FirewallSpec.model_construct(inbound_ports=(0,))  # a caller that skips checks
        engine.create("bad", VMBody.model_construct(firewall=closed))


def test_round_trip_keeps_a_user_key_and_its_private_half(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    user_key = f"ssh-ed25519 {base64.b64encode(blob).decode()} me"  # not cloudlet's own key
    (ssh / "id_me.pub").write_text(user_key + "\n")
    (ssh / "id_me").write_text("private\n")
    local = read_files(VMBody(image="cloudy", access=AccessDoc(ssh_keys=[str(ssh / "id_me.pub")])))
    assert local.body.access.ssh_keys == [user_key] and local.key_files == (ssh / "id_me.pub",)
    engine.create("k1", local.body, key_files=local.key_files)
    original = engine.spec("k1")
    assert original.access.ssh_private_key == str(ssh / "id_me")
    text = dump_yaml([apply_mod.export(engine, "k1")])
    assert user_key in text  # written out, so the file works on another host too
    engine.delete("k1", force=True)
    apply_mod.create_from(engine, parse_documents(text, "k1.yaml")[0])
    assert engine.spec("k1") == original


def test_create_makes_and_attaches_the_volumes_it_asks_for(engine: Engine) -> None:

    engine.create("db1", VMBody.model_validate({"volumes": ["1G", "2G"]}))
    vols = {v.name: v for v in engine.storage.volumes()}
    assert sorted(vols) == ["db1-vol0", "db1-vol1"]
    assert all(v.to_dict()["attached_to"] == "db1" for v in vols.values())
    with pytest.raises(InvalidInput, match="4 at most"):
        engine.create("db2", VMBody.model_validate({"volumes": ["1G"] * 5}))
    assert engine.instances() == [engine.show("db1")]


def test_a_failed_create_takes_its_new_volumes_along(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudlet.engine import launch

    def broken_boot(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boot failed")

    monkeypatch.setattr(launch, "boot", broken_boot)
    with pytest.raises(RuntimeError):
        engine.create("db3", VMBody.model_validate({"volumes": ["1G"]}))
    assert engine.storage.volumes() == []
    assert engine.instances() == []
