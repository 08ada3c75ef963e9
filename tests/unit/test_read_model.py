"""The read path (engine/read_model.py) and the quick CLI reads (cli/entry.py, cli/quick.py):
the same views and the same bytes as the engine and the full CLI, and the engine's answer
whenever the engine would do more than read."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudlet.cli import complete, entry, main, quick
from cloudlet.cli.formats import Output
from cloudlet.engine import read_model, state_modes
from cloudlet.engine.engine import Engine
from cloudlet.spec.document import AccessDoc, VMBody
from cloudlet.spec.instance import AccessSpec, NetworkSpec
from cloudlet.spec.network import NicSpec, PortForward
from cloudlet.spec.states import VMState
from cloudlet.store.database import HEAD_REVISION
from tests.fakes import make_fake_engine
from tests.unit.test_network import FakeHost

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",)
READS = (
    ("list",),
    ("list", "-o", "json"),
    ("list", "-o", "wide"),
    ("ls", "--output=wide"),
    ("list", "-a", "-ojson"),
    ("show", "web-frontend-01"),
    ("show", "db-primary", "-o", "json"),
    ("info", "broken", "--output", "table"),
    ("show", "dark"),
    ("show", "lost", "-o", "json"),
)


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """VMs in every state the read path answers for (none live: the fake driver keeps
    no runtime records), with NICs, a port forward, SSH access and a moved disk."""
    FakeHost().install(monkeypatch)
    home = short_tmp / "home"
    monkeypatch.setenv("CLOUDLET_HOME", str(home))
    e = make_fake_engine(home)
    monkeypatch.setattr(main, "open_engine", lambda: e)
    e.networks.network_create("backend-01", "10.80.1.0/24")
    e.create("web-frontend-01", VMBody(network="nat", networks=["backend-01"]))
    e.networks.port_add("web-frontend-01", "8080:80")
    e.create(
        "db-primary",
        VMBody(
            image="cloudy",
            network="none",
            networks=["backend-01"],
            access=AccessDoc(ssh_keys=list(KEY)),
        ),
    )
    e.create("dark", VMBody(network="none", state="stopped"))
    e.create("broken", VMBody(state="stopped"))
    e.create("lost", VMBody(state="stopped"))
    for name in ("web-frontend-01", "db-primary"):
        e.stop(name, force=True)
    e.storage.snapshot_create("web-frontend-01", "before")  # the active disk moves
    e.ctx.set_state(e.ctx.row("broken").id, VMState.ERROR, "the image [tiny] was gone")
    e.ctx.set_state(e.ctx.row("lost").id, VMState.CRASHED, "the QEMU process died")
    state_modes.tighten(e.settings)  # as the CLI's engine leaves its state directory
    return e


def _full(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["cloudlet", *args])
    try:
        main.main()
    except SystemExit as exit_:
        assert exit_.code in (None, 0)
    captured = capsys.readouterr()
    return captured.out + "|" + captured.err


def _quick(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert entry.quick(list(args)), f"the read path left {args} to the engine"
    captured = capsys.readouterr()
    return captured.out + "|" + captured.err


def test_views_equal_the_engines(engine: Engine) -> None:
    assert read_model.instances() == engine.instances()
    assert read_model.instances(include_process=True) == engine.instances(include_process=True)
    for vm in engine.instances():
        assert read_model.show(vm.name) == engine.show(vm.name)
    moved = read_model.show("web-frontend-01")
    assert moved is not None and "before" not in moved.paths["disk"]  # not the default path
    assert moved.paths["disk"] != str(engine.paths.instance_dir(moved.id) / "disk.qcow2")


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_quick_reads_print_what_the_full_cli_prints(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
) -> None:
    full = _full(monkeypatch, capsys, *args)
    assert _quick(capsys, *args) == full
    assert full.strip("|\n")


def test_the_forced_restriction_shows_the_same(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLOUDLET_FORCE_RESTRICT_NETWORK", "1")
    engine.settings = engine.settings.load(engine.paths.home)
    assert engine.settings.force_restrict_network
    shown = _quick(capsys, "show", "dark", "-o", "json")
    assert json.loads(shown.split("|")[0])["network"]["restrict"] is True
    assert shown == _full(monkeypatch, capsys, "show", "dark", "-o", "json")


def test_no_vms_says_so_like_the_full_cli(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = short_tmp / "empty"
    monkeypatch.setenv("CLOUDLET_HOME", str(home))
    e = make_fake_engine(home)
    state_modes.tighten(e.settings)
    monkeypatch.setattr(main, "open_engine", lambda: e)
    assert _quick(capsys, "list") == _full(monkeypatch, capsys, "list")
    assert "no VMs yet" in _quick(capsys, "list")


def _db(engine: Engine) -> sqlite3.Connection:
    return sqlite3.connect(engine.paths.database)


def test_a_live_vm_the_driver_does_not_run_is_left_to_the_engine(engine: Engine) -> None:
    """The engine records such a VM crashed: the read path never writes, so it asks."""
    engine.start("dark")  # the fake driver keeps no runtime record
    assert read_model.instances() is None
    assert read_model.show("dark") is None
    assert read_model.show("db-primary") is not None  # a VM at rest is still read


def test_a_live_vm_another_command_holds_is_shown_as_recorded(engine: Engine) -> None:
    from cloudlet.engine import locks

    engine.start("dark")
    with locks.hold(engine.paths.locks, "dark"):
        shown = read_model.show("dark")
        listed = read_model.instances()
    assert shown is not None and shown.state == "running"  # as recorded: not reconciled
    assert listed is not None and shown in listed
    assert read_model.show("dark") is None  # lock free: the engine reconciles it


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE alembic_version SET version_num = 'older'",
        "INSERT INTO operations (instance_id, instance_name, kind, status, pid, started_at) "
        "SELECT id, name, 'start', 'running', 1, created_at FROM instances WHERE name = 'dark'",
        "UPDATE instances SET kind = 'process' WHERE name = 'lost'",
        "UPDATE instances SET spec_json = json_set(spec_json, '$.network.future', 1) "
        "WHERE name = 'dark'",
        "UPDATE instances SET spec_json = json_remove(spec_json, '$.access.user') "
        "WHERE name = 'dark'",
        "UPDATE instances SET created_at = '2026-12-07T10:00:00+02:00' WHERE name = 'dark'",
    ],
    ids=["migration", "operation", "process-vm", "newer-spec", "older-spec", "timestamp"],
)
def test_what_the_engine_would_repair_or_read_otherwise_is_left_to_it(
    engine: Engine, sql: str
) -> None:
    with _db(engine) as db:
        db.execute(sql)
    db.close()
    assert read_model.instances() is None
    assert read_model.show("dark") is None


def test_staging_and_loose_modes_are_left_to_the_engine(engine: Engine) -> None:
    assert read_model.instances() is not None
    staged = engine.paths.images / ".cloudlet-staging-x"
    staged.mkdir()
    assert read_model.instances() is None
    staged.rmdir()
    engine.paths.database.chmod(0o644)
    assert read_model.instances() is None
    engine.paths.database.chmod(0o600)
    assert read_model.instances() is not None


def test_no_database_unknown_name_or_bad_config_is_left_to_the_engine(
    engine: Engine, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read_model.show("nobody") is None  # the engine names the closest VM
    assert read_model.show("Bad Name!") is None
    engine.paths.config_file.write_text("not [toml")
    assert read_model.instances() is None
    monkeypatch.setenv("CLOUDLET_HOME", str(short_tmp / "nothing-here"))
    assert read_model.instances() is None
    assert not (short_tmp / "nothing-here").exists()  # a read makes nothing


def test_the_read_path_does_not_write(engine: Engine) -> None:
    before = {p: p.stat().st_mtime_ns for p in engine.paths.home.rglob("*") if p.is_file()}
    assert read_model.instances() is not None
    after = {p: p.stat().st_mtime_ns for p in engine.paths.home.rglob("*") if p.is_file()}
    assert after == before


def test_the_field_lists_match_the_spec_models() -> None:
    assert tuple(NetworkSpec.model_fields) == read_model.NETWORK_FIELDS
    assert tuple(NicSpec.model_fields) == read_model.NIC_FIELDS
    assert tuple(PortForward.model_fields) == read_model.PORT_FIELDS
    assert tuple(AccessSpec.model_fields) == read_model.ACCESS_FIELDS
    assert read_model.HEAD_REVISION == HEAD_REVISION


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list"], quick.ReadCall("list")),
        (["ls", "-a", "-o", "wide"], quick.ReadCall("list", Output.wide, all=True)),
        (["list", "--output=json", "--all"], quick.ReadCall("list", Output.json, all=True)),
        (["show", "web1", "-ojson"], quick.ReadCall("show", Output.json, name="web1")),
        (["info", "-o", "table", "web1"], quick.ReadCall("show", name="web1")),
    ],
)
def test_plain_reads_are_recognised(argv: list[str], expected: quick.ReadCall) -> None:
    assert quick.parse(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["create", "web1"],
        ["list", "--help"],
        ["list", "-o"],
        ["list", "-o", "JSON"],
        ["list", "-o", "json", "-o", "wide"],
        ["list", "-a", "-a"],
        ["list", "web1"],
        ["list", "--"],
        ["list", "--al"],
        ["show"],
        ["show", "a", "b"],
        ["show", "-a", "web1"],
        ["show", "--", "web1"],
        ["show", "web1", "-o=json"],
    ],
    ids=lambda argv: " ".join(argv) or "nothing",
)
def test_everything_else_goes_to_the_full_cli(argv: list[str]) -> None:
    assert quick.parse(argv) is None


def test_root_options_and_completion_go_to_the_full_cli(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not entry.quick(["--debug", "list"])
    assert not entry.quick(["--version", "list"])
    monkeypatch.setenv(complete.COMPLETE_VAR, "complete_bash")
    assert not entry.quick(["list"])
    assert entry._COMPLETE_VAR == complete.COMPLETE_VAR


def test_version_is_the_full_clis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _quick(capsys, "--version") == _full(monkeypatch, capsys, "--version")


def test_a_failure_in_a_quick_read_is_said_as_the_full_cli_says_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(call: quick.ReadCall) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(quick, "answer", broken)
    monkeypatch.setattr(sys, "argv", ["cloudlet", "list"])
    monkeypatch.delenv("CLOUDLET_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        entry.main()
    assert exited.value.code == 1
    assert "internal error (RuntimeError: boom)" in capsys.readouterr().err


def _rich(capsys: pytest.CaptureFixture[str], draw: Callable[[], None]) -> str:
    """What Rich (cli/render.py) prints to stdout."""
    draw()
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "table", "detail"),
    [
        ({}, True, True),
        (
            {"name": "n" * 63, "addresses": {"nat": "10.0.2.15", "b" * 15: "10.80.1.250"}},
            True,
            True,
        ),
        ({"last_error": "paused at 23:20:05, see :10: and ::"}, True, True),
        ({"accel": None, "pid": 4242, "ssh_access": True, "ssh_port": 2222}, True, True),
        ({"last_error": "the image [tiny] was gone"}, True, False),
        ({"last_error": "a \\ backslash"}, True, False),
        ({"last_error": "so :smile: then"}, True, False),
        ({"last_error": "a :100: score"}, True, False),
        ({"last_error": "a :x-text: variant"}, True, False),
        ({"last_error": "d\u00e9j\u00e0 vu"}, True, False),
        ({"last_error": "a\ttab"}, True, False),
        ({"image": "im[g]"}, False, False),
        ({"type": "gp:smile:"}, False, False),
    ],
)
def test_plain_text_is_richs_byte_for_byte(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, object],
    table: bool,
    detail: bool,
) -> None:
    from cloudlet.cli import plain, render

    monkeypatch.setenv("COLUMNS", "80")
    change = {"last_error": "it stopped", **change}
    views = [dataclasses.replace(vm, **change) for vm in engine.instances()]  # type: ignore[arg-type]
    for wide in (False, True):
        assert plain.write_table(views, wide=wide) is table
        written = capsys.readouterr().out
        drawn = _rich(capsys, lambda w=wide: render.instances_table(views, wide=w))
        assert written == (drawn if table else "")
    for vm in views:
        assert plain.write_detail(vm) is detail
        written = capsys.readouterr().out
        assert written == (_rich(capsys, lambda v=vm: render.instance_detail(v)) if detail else "")


def test_a_terminal_or_a_forced_one_is_left_to_rich(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloudlet.cli import plain

    views = engine.instances()
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert not plain.write_table(views)
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert not plain.write_table(views)
    assert not plain.write_detail(views[0])
    assert capsys.readouterr().out == ""
