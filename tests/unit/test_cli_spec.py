"""The CLI side of spec files on the fake engine: flags == file, wizard answers, plan output."""

from __future__ import annotations

from pathlib import Path

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
