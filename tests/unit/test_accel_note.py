"""The TCG note: said on the first create or start after a host boot, not again until
the next boot; the host's details say it every time."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import main
from cloudlet.engine import accel_note
from cloudlet.engine.engine import Engine
from cloudlet.host import resources
from cloudlet.spec.document import VMBody
from tests.fakes import make_fake_engine

NOTE = "runs under TCG software emulation"


@pytest.fixture
def boot(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The host's boot id, changed by a test to stand for a reboot."""
    current = ["boot-1"]
    monkeypatch.setattr(resources, "boot_id", lambda: current[0])
    return current


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home")  # its accelerator is tcg ("fake host")
    monkeypatch.setattr(main, "open_engine", lambda: e)
    return e


def _notes(engine: Engine, action: str, name: str) -> list[str]:
    with engine.collect_notices() as notes:
        if action == "create":
            engine.create(name, VMBody())
        else:
            engine.stop(name, force=True)
            engine.start(name)
    return [n for n in notes if NOTE in n]


def test_the_tcg_note_is_said_once_per_host_boot(engine: Engine, boot: list[str]) -> None:
    first = _notes(engine, "create", "web1")
    assert (
        len(first) == 1 and first[0].startswith("web1 runs under TCG") and "fake host" in first[0]
    )
    assert _notes(engine, "create", "web2") == []
    assert _notes(engine, "start", "web1") == []
    boot[0] = "boot-2"  # the host rebooted
    assert len(_notes(engine, "start", "web2")) == 1
    assert _notes(engine, "start", "web1") == []


def test_an_unreadable_record_only_means_the_note_is_said_again(
    engine: Engine, boot: list[str]
) -> None:
    assert _notes(engine, "create", "web1")
    record = accel_note.record_file(engine.paths.home)
    for junk in ("{not json", '{"boot_id": "boot-1", "said": "x86_64"}', "[1, 2]", '"x"'):
        record.write_text(junk)
        assert len(_notes(engine, "start", "web1")) == 1
        assert _notes(engine, "start", "web1") == []


def test_the_host_details_always_say_it(engine: Engine, boot: list[str]) -> None:
    engine.create("web1", VMBody())
    assert engine.host().accel_note == accel_note.host_note("fake host")
    for _ in range(2):
        result = CliRunner().invoke(main.app, ["host"])
        assert result.exit_code == 0
        assert (
            "Note" in result.stdout and "VMs here run under TCG software emulation" in result.stdout
        )
    result = CliRunner().invoke(main.app, ["host", "-o", "json"])
    assert "TCG software emulation" in result.stdout
