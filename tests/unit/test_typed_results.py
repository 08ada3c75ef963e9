"""Instances, images and licences hand typed results to every frontend (fake driver).

The engine returns views and ``Done`` records, not prose or dicts; the CLI renders them
and its ``-o json`` keeps the keys it always printed. Hints are words; the actions
travel as ``NextStep`` data that the CLI alone words as its commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import main, wording
from cloudlet.engine import apply as apply_mod
from cloudlet.engine.engine import Engine, SpecChanges
from cloudlet.engine.image_views import CatalogEntryView, ImageView, LicenceView
from cloudlet.engine.views import Done
from cloudlet.errors import CloudletError, Conflict, InvalidInput, StillRunning
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import VMBody, parse_documents
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine

IMAGE_KEYS = [
    "name", "arch", "format", "os", "os_family", "licence", "min_disk_bytes",
    "default_user", "cloud_init", "guest_agent", "boot", "path", "used_by",
]  # fmt: skip


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    monkeypatch.setattr(main, "open_engine", lambda: e)
    return e


def cli(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr; a CloudletError as the CLI words it."""
    result = CliRunner().invoke(main.app, list(args))
    error = result.exception
    if isinstance(error, CloudletError):
        return error.exit_code, result.stdout, wording.error_line(error)
    return result.exit_code, result.stdout, result.stderr


def test_delete_returns_what_it_did(engine: Engine) -> None:
    engine.create("web1", VMBody())
    with pytest.raises(StillRunning) as refused:
        engine.delete("web1")
    assert "cloudlet" not in refused.value.one_line()
    assert refused.value.next_steps == (
        step(Step.VM_STOP, vm="web1"),
        step(Step.VM_FORCE_DELETE, vm="web1"),
    )
    done = engine.delete("web1", force=True)
    assert done == Done("vm", "web1", "deleted", "web1 deleted")
    assert done.to_dict() == {
        "kind": "vm", "name": "web1", "action": "deleted", "message": "web1 deleted",
        "changed": True, "next_steps": [],
    }  # fmt: skip


def test_images_are_views_and_json_keeps_its_keys(engine: Engine) -> None:
    engine.create("web1", VMBody(state="stopped"))
    images = engine.images()
    assert all(isinstance(i, ImageView) for i in images)
    tiny = engine.image_show("tiny")
    assert tiny.used_by == ("web1",) and tiny.boot == "kernel"
    code, out, _ = cli("image", "list", "-o", "json")
    listed = json.loads(out)
    assert code == 0 and [list(i) for i in listed] == [IMAGE_KEYS] * len(images)
    assert {i["name"]: i["used_by"] for i in listed}["tiny"] == ["web1"]
    code, out, _ = cli("image", "show", "tiny", "-o", "json")
    assert code == 0 and json.loads(out) == tiny.to_dict()
    code, out, _ = cli("image", "show", "tiny")
    assert code == 0 and "used_by" in out and "web1" in out


def test_image_delete_is_done_or_refused_with_the_vms_to_delete(engine: Engine) -> None:
    engine.create("a1", VMBody(image="acme", state="stopped"))
    engine.create("a2", VMBody(image="acme", state="stopped"))
    code, _, err = cli("image", "delete", "acme")
    assert code == 4
    assert err == (
        "image acme is used by a1, a2: delete those VMs first "
        "(cloudlet delete a1 or cloudlet delete a2)"
    )
    engine.delete("a1")
    engine.delete("a2")
    assert engine.image_delete("acme") == Done("image", "acme", "deleted", "image acme deleted")
    assert "acme" not in [i.name for i in engine.images()]


def test_catalog_entries_are_views(engine: Engine) -> None:
    entries = engine.catalog()
    assert entries and all(isinstance(e, CatalogEntryView) for e in entries)
    code, out, _ = cli("image", "catalog", "-o", "json")
    assert code == 0 and json.loads(out) == [e.to_dict() for e in entries]
    assert list(json.loads(out)[0]) == ["name", "title", "arch", "licence", "default_user", "url"]


def test_licences_are_views_and_a_missing_seat_names_the_licence(engine: Engine) -> None:
    with pytest.raises(Conflict) as refused:
        engine.create("a1", VMBody(image="acme"))
    assert refused.value.next_steps == (step(Step.LICENCE_ADD, licence="acme-os"),)
    assert engine.license_add("acme-os", 1) == LicenceView("acme-os", 1, 0)
    engine.create("a1", VMBody(image="acme"))
    with pytest.raises(Conflict) as full:
        engine.create("a2", VMBody(image="acme"))
    assert full.value.next_steps == (step(Step.LICENCE_ADD, licence="acme-os", seats="2"),)
    assert wording.error_line(full.value).endswith("(cloudlet license add acme-os --seats 2)")
    code, out, _ = cli("license", "list", "-o", "json")
    assert code == 0 and json.loads(out) == [{"name": "acme-os", "seats": 1, "in_use": 1}]
    code, _, err = cli("license", "add", "acme-os", "--seats", "3")
    assert code == 0 and "licence acme-os: 3 seats, 1 in use" in err


def test_a_fixed_field_change_is_refused_with_steps_the_cli_words(engine: Engine) -> None:
    engine.create("web1", VMBody(state="stopped"))
    with pytest.raises(InvalidInput) as refused:
        engine.lifecycle.update_spec("web1", {"cpus": 4})
    assert refused.value.next_steps == (
        step(Step.VM_DELETE, vm="web1"),
        step(Step.VM_CREATE, vm="web1"),
    )
    text = (
        "apiVersion: cloudlet/v1\nkind: VM\nmetadata:\n  name: web1\n"
        "spec:\n  image: tiny\n  location: zone-b\n  state: stopped\n"
    )
    entries = parse_documents(text, "lab.yaml")
    refusal = apply_mod.plan(engine, entries).refusals[0]
    assert "cloudlet" not in refusal.detail
    assert refusal.next_steps == (step(Step.VM_DELETE, vm="web1"),)
    assert refusal.to_dict()["next_steps"] == [{"step": "vm.delete", "args": {"vm": "web1"}}]
    with pytest.raises(Conflict) as whole:
        apply_mod.apply(engine, entries)
    assert wording.error_line(whole.value).endswith(
        "apply the file again: nothing was changed (cloudlet delete web1)"
    )


def test_exec_without_a_command_and_ssh_without_access_name_the_steps(engine: Engine) -> None:
    engine.create("web1", VMBody())
    with pytest.raises(InvalidInput) as no_command:
        engine.exec("web1", [])
    assert no_command.value.next_steps == (step(Step.VM_EXEC, vm="web1"),)
    with pytest.raises(Conflict) as no_ssh:
        engine.ssh_argv("web1", [])
    assert no_ssh.value.next_steps == (
        step(Step.VM_EXEC, vm="web1"),
        step(Step.VM_CONSOLE, vm="web1"),
    )
    assert "cloudlet" not in no_ssh.value.one_line()


def test_spec_changes_are_a_typed_request(engine: Engine) -> None:
    engine.create("web1", VMBody(state="stopped"))
    assert SpecChanges().as_dict() == {}
    assert SpecChanges(api_access=False, volumes=()).as_dict() == {
        "volumes": (),
        "api_access": False,
    }
    result = engine.update_spec("web1", SpecChanges(api_access=True, volumes=(GIB,)))
    assert result.changed and result.message == "web1: api_access, volumes"
    assert engine.spec("web1").api_access and engine.spec("web1").volumes == (GIB,)
    assert not engine.update_spec("web1", SpecChanges(api_access=True)).changed
