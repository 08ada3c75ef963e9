"""The CLI side of spec files on the fake engine: flags == file, wizard answers, plan output."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudlet.cli import main, spec_commands
from cloudlet.cli.wizard import Answers
from cloudlet.engine.engine import Engine
from cloudlet.errors import InvalidInput
from cloudlet.spec import document
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine


@pytest.fixture
def engines(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Engine]:
    """Two fake hosts: 'flags' serves `cloudlet create NAME ...`, 'file' serves --from/apply."""
    made = {"flags": make_fake_engine(short_tmp / "a"), "file": make_fake_engine(short_tmp / "b")}
    monkeypatch.setattr(main, "_engine", lambda: made["flags"])
    monkeypatch.setattr(spec_commands, "open_engine", lambda: made["file"])
    return made


def test_wizard_answers_and_their_printed_flags_make_the_same_vm(
    engines: dict[str, Engine], tmp_path: Path
) -> None:
    answers = Answers(
        name="w1", type="custom", cpus=3, memory=3 * GIB, disk_size=GIB, volumes=[GIB, 2 * GIB],
        image="tiny", arch="x86_64", api_access=True, inbound_ports=[22, 80], network="none",
        backup_schedule="weekly", backup_keep=4,
    )  # fmt: skip
    doc = answers.document()
    argv = spec_commands.create_argv(doc)
    assert argv[:3] == ["cloudlet", "create", "w1"]
    result = CliRunner().invoke(main.app, argv[1:])
    assert result.exit_code == 0, result.output
    path = tmp_path / "w1.yaml"
    path.write_text(document.dump_yaml([doc]))
    result = CliRunner().invoke(main.app, ["create", "--from", str(path)])
    assert result.exit_code == 0, result.output
    from_flags, from_file = engines["flags"].spec("w1"), engines["file"].spec("w1")
    assert from_flags == from_file
    assert (from_file.cpus, from_file.volumes, from_file.backup.keep) == (3, (GIB, 2 * GIB), 4)


def test_plan_prints_decisions_and_exits_4_on_refusal(
    engines: dict[str, Engine], tmp_path: Path
) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text("apiVersion: cloudlet/v1\nkind: VM\nmetadata: {name: p1}\nspec: {}\n")
    result = CliRunner().invoke(main.app, ["plan", str(lab)])
    assert result.exit_code == 0 and "create" in result.output
    assert CliRunner().invoke(main.app, ["apply", "-f", str(lab)]).exit_code == 0
    lab.write_text(lab.read_text().replace("{}", "{location: far}"))
    result = CliRunner().invoke(main.app, ["plan", str(lab)])
    assert result.exit_code == 4 and "refuse" in result.output


def test_create_with_name_and_from_is_refused(engines: dict[str, Engine]) -> None:
    result = CliRunner().invoke(main.app, ["create", "x", "--from", "x.yaml"])
    assert isinstance(result.exception, InvalidInput) and "not both" in str(result.exception)
    assert engines["flags"].instances() == []


# Each `cloudlet create` parameter and the spec-file field that stands for it.
FLAG_FIELDS = {
    "name": "metadata.name", "image": "image", "type_": "type", "cpus": "cpus",
    "memory": "memory", "disk_size": "disk_size", "network": "network",
    "restrict_network": "restrict_network", "arch": "arch", "profile": "profile",
    "user": "access.user", "ssh_key": "access.ssh_keys", "user_data": "user_data_file",
    "iso": "iso", "wait": "wait", "no_start": "state", "no_wait": "wait",
    "location": "location", "containers": "containers", "volume": "volumes",
    "open_port": "firewall.inbound_ports", "backup": "backup", "api_access": "access.api_access",
}  # fmt: skip
NOT_FIELDS = {"from_", "output"}


def has_field(path: str) -> bool:
    model: Any = document.VMDocument
    parts = path.split(".") if path.startswith("metadata.") else ["spec", *path.split(".")]
    for part in parts:
        if part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


def test_every_create_flag_has_a_spec_field() -> None:
    params = set(inspect.signature(main.create).parameters) - NOT_FIELDS
    assert params == set(FLAG_FIELDS), "a new create flag needs a spec-file field"
    assert [path for path in FLAG_FIELDS.values() if not has_field(path)] == []
    assert not has_field("nosuch") and not has_field("access.nosuch")


def test_wizard_on_a_cloud_init_image_asks_for_user_and_key(
    short_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    from cloudlet.cli.wizard import Wizard

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me"
    (tmp_path / ".ssh" / "id_me.pub").write_text(key + "\n")
    answers = [
        "db1", "", "", "custom", "3", "3G", "4G", "1G,2G", "y",
        "tiny",  # refused: containers need cloud-init; asked again
        "cloudy", "-oProxyCommand=x", "ops",  # not a login user: asked again
        "9",  # no key 9: asked again
        "1", "y", "80, 22", "none", "custom", "weekly", "4", "", "y",
    ]  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(answers) + "\n"))
    screen = io.StringIO()
    wizard = Wizard(make_fake_engine(short_tmp / "h"), Console(file=screen, width=200))
    result = wizard.run()
    assert result is not None, screen.getvalue()
    path, doc = result
    text = screen.getvalue()
    assert "error: image tiny has no cloud-init" in text and "cannot read SSH public key" in text
    assert "error: invalid login user '-oProxyCommand=x'" in text
    assert path == Path("db1.yaml")
    spec = doc.spec
    assert (spec.image, spec.type, spec.cpus, spec.memory) == ("cloudy", "custom", 3, 3 * GIB)
    assert (spec.disk_size, spec.volumes, spec.containers) == (4 * GIB, [GIB, 2 * GIB], True)
    assert spec.access.user == "ops" and spec.access.ssh_keys == [str(tmp_path / ".ssh/id_me.pub")]
    assert spec.access.api_access and spec.firewall.inbound_ports == (22, 80)
    assert (spec.network, spec.backup.schedule, spec.backup.keep) == ("none", "weekly", 4)
    assert "[fixed]" in text and "same as: cloudlet create db1 --image cloudy" in text
