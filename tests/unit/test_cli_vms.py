"""`cloudlet list`, `show` and `delete` on the fake engine: addresses, and --force."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import main
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError
from cloudlet.spec.document import VMBody
from tests.fakes import make_fake_engine
from tests.tree_hash import tree_hash


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    monkeypatch.setattr(main, "open_engine", lambda: e)
    return e


def cli(*args: str, input: str | None = None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr as `cloudlet` gives them (main() turns a
    CloudletError into one line and its class's exit code)."""
    result = CliRunner().invoke(main.app, list(args), input=input)
    error = result.exception
    if isinstance(error, CloudletError):
        return error.exit_code, result.stdout, result.stderr + error.one_line()
    return result.exit_code, result.stdout, result.stderr


def test_list_and_show_give_the_addresses_instead_of_the_ssh_forward(engine: Engine) -> None:
    engine.create("web1", VMBody())
    engine.create("dark", VMBody(network="none", state="stopped"))
    code, out, _ = cli("list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "STATE", "TYPE", "IMAGE", "ADDRESSES"]
    by_name = {row.split()[0]: row for row in rows}
    assert "10.0.2.15 (nat)" in by_name["web1"] and "127.0.0.1" not in by_name["web1"]
    assert "10.0.2.15" not in by_name["dark"]
    code, out, _ = cli("show", "web1")
    assert code == 0
    assert "Addresses" in out and "10.0.2.15 (nat)" in out
    assert "SSH forward" in out  # show keeps the line (tiny: no SSH, said so)


def test_delete_of_a_running_vm_without_force_is_one_line_and_touches_nothing(
    engine: Engine,
) -> None:
    engine.create("web1", VMBody())
    engine.create("old", VMBody(state="stopped"))
    before = tree_hash(engine.paths.home)
    code, out, err = cli("delete", "web1")
    assert code == 4 and out == ""
    assert err == ("web1 is running: 'cloudlet stop web1' first, or 'cloudlet delete --force web1'")
    assert tree_hash(engine.paths.home) == before
    assert engine.show("web1").state == "running"
    code, _, err = cli("delete", "--force", "web1", "old")
    assert code == 0 and "web1 deleted" in err and "old deleted" in err
    assert engine.instances() == []


def test_delete_in_a_terminal_asks_instead(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.create("web1", VMBody())
    monkeypatch.setattr(main, "_can_ask", lambda: True)
    code, out, err = cli("delete", "web1", input="n\n")
    assert code == 4 and "stop and delete it?" in out and "--force web1" in err
    assert engine.show("web1").state == "running"
    code, out, err = cli("delete", "web1", input="y\n")
    assert code == 0 and "web1 deleted" in err
    assert engine.instances() == []


def test_delete_of_several_checks_them_all_before_the_first_goes(engine: Engine) -> None:
    engine.create("old", VMBody(state="stopped"))
    engine.create("web1", VMBody())
    before = tree_hash(engine.paths.home)
    code, _, err = cli("delete", "old", "olb")  # a typo late in the list
    assert code == 3 and "olb" in err
    code, _, err = cli("delete", "old", "web1")  # a running VM late in the list
    assert code == 4 and "web1 is running" in err
    assert tree_hash(engine.paths.home) == before
    assert sorted(v.name for v in engine.instances()) == ["old", "web1"]
    code, _, err = cli("delete", "--force", "old", "web1", "old")  # a name twice: once
    assert code == 0 and err.count("old deleted") == 1 and "web1 deleted" in err
    assert engine.instances() == []
