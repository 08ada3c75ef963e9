"""The CLI's lazy root: the same commands and help as the full Typer app, built on demand."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperGroup

from cloudlet.cli import main
from cloudlet.cli.startup import lazy_root
from cloudlet.engine.engine import Engine
from cloudlet.spec.document import VMBody
from tests.fakes import make_fake_engine


def entry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the real entry point (`cloudlet ARGS`)."""
    monkeypatch.setattr(sys, "argv", ["cloudlet", *args])
    with pytest.raises(SystemExit) as exited:
        main.main()
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    monkeypatch.setattr(main, "open_engine", lambda: e)
    return e


def _first_paragraph(text: str | None) -> str:
    return (text or "").strip().split("\n\n")[0].replace("\n", " ")


def test_root_lists_the_full_apps_commands_in_order_with_their_help() -> None:
    full = typer.main.get_command(main.app)
    assert isinstance(full, TyperGroup)
    root = lazy_root(main.app)
    ctx = root.make_context("cloudlet", ["--help"], resilient_parsing=True)
    assert root.list_commands(ctx) == list(full.commands)
    assert root.commands == {}, "listing must not build any command"
    for name, command in full.commands.items():
        stub = root._stub(name)
        assert stub.get_short_help_str(500) == _first_paragraph(command.help), name
        assert stub.hidden == command.hidden, name
    assert root.commands == {}


def test_help_lists_commands_without_building_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[str] = []
    real = typer.main.get_command_from_info

    def counting(info: typer.models.CommandInfo, **kwargs: object) -> object:
        built.append(info.callback.__name__ if info.callback else "?")
        return real(info, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("cloudlet.cli.startup.get_command_from_info", counting)
    code, out, _ = entry(monkeypatch, capsys, "--help")
    assert code == 0
    for name in ("create", "list", "delete", "image", "backup", "firewall", "run"):
        assert f"\n  {name} " in out, name
    assert built == []
    code, out, _ = entry(monkeypatch, capsys, "delete", "--help")
    assert code == 0 and "--force" in out
    assert built == ["delete"]


def test_only_the_invoked_command_is_built(engine: Engine) -> None:
    engine.create("web1", VMBody(state="stopped"))
    root = lazy_root(main.app)
    root.main(["list", "-o", "json"], prog_name="cloudlet", standalone_mode=False)
    assert set(root.commands) == {"list"}
    root.main(["volume", "list", "-o", "json"], prog_name="cloudlet", standalone_mode=False)
    assert set(root.commands) == {"list", "volume"}


def test_version_comes_from_the_package_metadata(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = entry(monkeypatch, capsys, "--version")
    assert (code, out, err) == (0, f"cloudlet {metadata.version('cloudlet')}\n", "")


def test_unknown_command_and_no_command_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = entry(monkeypatch, capsys, "lsit")
    assert code == 2 and "No such command 'lsit'" in err
    code, out, err = entry(monkeypatch, capsys)
    assert code == 2 and "Commands:" in out + err


def test_entry_runs_a_command_and_its_errors_are_one_line(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.create("web1", VMBody(state="stopped"))
    code, out, _ = entry(monkeypatch, capsys, "list")
    assert code == 0 and "web1" in out and "stopped" in out
    code, out, err = entry(monkeypatch, capsys, "show", "nope")
    assert code == 3 and out == ""
    assert err.startswith("error: no VM named 'nope'") and err.count("\n") == 1
