"""The command line as people expect it: completion, aliases, "did you mean", sizes
with units. Driven through the real entry point (main.main) on a fake engine's state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cloudlet.cli import main
from cloudlet.engine.engine import Engine
from cloudlet.spec.document import VMBody
from tests.fakes import make_vm_with_volume
from tests.tree_hash import tree_hash


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    home = short_tmp / "home"
    e = make_vm_with_volume(home)  # web1 (running) with volume data1
    e.create("vm1", VMBody())
    e.create("vm2", VMBody(state="stopped"))
    ops = e.storage
    ops.snapshot_create("vm1", "before-upgrade")
    ops.snapshot_create("web1", "base")
    monkeypatch.setattr(main, "open_engine", lambda: e)
    monkeypatch.setenv("CLOUDLET_HOME", str(home))
    return e


def entry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `cloudlet ARGS` through the real entry point."""
    monkeypatch.setattr(sys, "argv", ["cloudlet", *args])
    code: object = 0
    try:
        main.main()
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def refused(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exit_code: int,
    *args: str,
) -> str:
    """The one error line of `cloudlet ARGS`, checked to exit ``exit_code`` and change nothing."""
    before = tree_hash(engine.paths.home)
    code, out, err = entry(monkeypatch, capsys, *args)
    assert code == exit_code and out == "", (code, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert tree_hash(engine.paths.home) == before
    return err


def tab(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str
) -> list[str]:
    """What bash gets for Tab at the end of ``line`` (the variables bash's script sets)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    monkeypatch.setenv("_CLOUDLET_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", line)
    monkeypatch.setenv("COMP_CWORD", str(cword))
    code, out, err = entry(monkeypatch, capsys)
    assert code == 0 and err == "", err
    return out.split()


# ---------------------------------------------------------------- completion
def test_completion_gives_the_vm_names_that_start_with_the_partial_name(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tab(monkeypatch, capsys, "cloudlet start v") == ["vm1", "vm2"]
    assert tab(monkeypatch, capsys, "cloudlet stop w") == ["web1"]
    assert tab(monkeypatch, capsys, "cloudlet rm ") == ["vm1", "vm2", "web1"]
    assert tab(monkeypatch, capsys, "cloudlet nic list vm") == ["vm1", "vm2"]


def test_completion_gives_commands_options_and_other_names(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert {"start", "stop", "snapshot", "ssh"} <= set(tab(monkeypatch, capsys, "cloudlet s"))
    assert "ls" not in tab(monkeypatch, capsys, "cloudlet l")  # hidden aliases are not offered
    assert tab(monkeypatch, capsys, "cloudlet image l") == ["list"]
    assert tab(monkeypatch, capsys, "cloudlet create --ty") == ["--type"]
    # the snapshots of the VM named earlier on the line, not another VM's
    assert tab(monkeypatch, capsys, "cloudlet snapshot revert vm1 ") == ["before-upgrade"]
    assert tab(monkeypatch, capsys, "cloudlet snapshot delete web1 ") == ["base"]
    assert tab(monkeypatch, capsys, "cloudlet volume attach d") == ["data1"]
    assert tab(monkeypatch, capsys, "cloudlet create x --network ") == ["nat", "none"]
    images = tab(monkeypatch, capsys, "cloudlet create x --image ")
    assert {"tiny", "debian-12", "ubuntu-24.04"} <= set(images)
    assert tab(monkeypatch, capsys, "cloudlet image pull ubuntu-2") == [
        "ubuntu-22.04",
        "ubuntu-24.04",
    ]


def test_a_missing_or_foreign_database_completes_nothing_without_an_error(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLOUDLET_HOME", str(short_tmp / "nothing-here"))
    assert tab(monkeypatch, capsys, "cloudlet start ") == []
    assert not (short_tmp / "nothing-here").exists()  # a completion makes no state
    home = short_tmp / "garbage"
    home.mkdir()
    (home / "cloudlet.db").write_bytes(b"not a database" * 100)
    monkeypatch.setenv("CLOUDLET_HOME", str(home))
    assert tab(monkeypatch, capsys, "cloudlet start ") == []
    assert tab(monkeypatch, capsys, "cloudlet snapshot revert vm1 ") == []


def test_completion_prints_a_script_for_each_shell(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for shell, marker in (("bash", "complete -o default"), ("zsh", "compdef"), ("fish", "--")):
        code, out, _ = entry(monkeypatch, capsys, "completion", shell)
        assert code == 0 and marker in out and "_CLOUDLET_COMPLETE=complete_" in out, shell
    code, _, err = entry(monkeypatch, capsys, "completion", "tcsh")
    assert code == 2 and "tcsh" in err


# ---------------------------------------------------------------- aliases
def test_launch_info_ls_and_rm_are_create_show_list_and_delete(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = entry(monkeypatch, capsys, "launch", "new1", "--no-start")
    assert code == 0, err
    assert engine.show("new1").state == "stopped"
    code, out, _ = entry(monkeypatch, capsys, "ls")
    assert code == 0 and "new1" in out and "web1" in out
    code, out, _ = entry(monkeypatch, capsys, "info", "new1", "-o", "json")
    assert code == 0 and '"name": "new1"' in out
    code, _, _ = entry(monkeypatch, capsys, "rm", "new1")
    assert code == 0
    assert "new1" not in {vm.name for vm in engine.instances()}
    code, out, _ = entry(monkeypatch, capsys, "--help")
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert "launch" in listed and not {"info", "ls", "rm"} & listed


# ---------------------------------------------------------------- did you mean
def test_unknown_commands_get_the_closest_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = entry(monkeypatch, capsys, "lanch")
    assert code == 2 and "Did you mean 'launch'" in err
    code, _, err = entry(monkeypatch, capsys, "snapshott")
    assert code == 2 and "Did you mean 'snapshot'?" in err


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--type", "gp.smal"], ": did you mean 'gp.small'?\n"),
        (
            ["--image", "debain-12"],
            "did you mean 'debian-12-genericcloud'? (cloudlet image pull debian-12-genericcloud)\n",
        ),
        (["--image", "tny"], "did you mean 'tiny'?\n"),
        (
            ["--image", "ubuntu"],
            "did you mean 'ubuntu-24.04' or 'ubuntu-22.04'? (cloudlet image pull ubuntu-24.04 "
            "or cloudlet image pull ubuntu-22.04)\n",
        ),
        (
            ["--image", "ubuntu-24.04"],
            ": download it first (cloudlet image pull ubuntu-24.04)\n",
        ),
    ],
)
def test_create_with_a_mistyped_type_or_image_names_the_closest_and_makes_nothing(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    hint: str,
) -> None:
    err = refused(engine, monkeypatch, capsys, 3, "create", "new1", *args)
    assert hint in err, err


def test_a_mistyped_vm_name_gets_the_closest_vm(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = entry(monkeypatch, capsys, "start", "vm11")
    assert code == 3
    assert err == "error: no VM named 'vm11': did you mean 'vm1'?\n"
    code, _, err = entry(monkeypatch, capsys, "show", "zzzz")
    assert code == 3 and "did you mean" not in err


# ---------------------------------------------------------------- sizes need a unit
@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["create", "new1", "--memory", "512"], "512 what? write 512M or 512MiB"),
        (["create", "new1", "--disk-size", "10"], "10 what? write 10G or 10GiB"),
        (["create", "new1", "--volume", "5"], "5 what? write 5G or 5GiB"),
        (["volume", "create", "v9", "--size", "5"], "5 what? write 5G or 5GiB"),
        (["volume", "resize", "data1", "80"], "80 what? write 80G or 80GiB"),
        (["run", "--memory", "256", "--", "true"], "256 what? write 256M or 256MiB"),
    ],
)
def test_a_size_without_a_unit_is_refused_with_a_hint(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    hint: str,
) -> None:
    err = refused(engine, monkeypatch, capsys, 2, *args)
    assert err.rstrip("\n").endswith(hint), err


def test_sizes_with_units_still_work(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = entry(monkeypatch, capsys, "create", "new1", "--memory", "512M", "--no-start")
    assert code == 0, err
    assert engine.show("new1").memory == 512 * 1024 * 1024
