"""`cloudlet backup|restore|export|import` on the fake engine, through Typer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import backup_commands, main, wording
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError
from cloudlet.spec.document import VMBody
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    e.create("web1", VMBody())
    monkeypatch.setattr(backup_commands, "open_engine", lambda: e)
    return e


def cli(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr as `cloudlet` gives them (main() turns a
    CloudletError into one line and its class's exit code)."""
    result = CliRunner().invoke(main.app, list(args))
    error = result.exception
    if isinstance(error, CloudletError):
        return error.exit_code, result.stdout, result.stderr + wording.error_line(error)
    return result.exit_code, result.stdout, result.stderr


def test_policy_is_shown_set_and_stored_in_the_spec(engine: Engine) -> None:
    code, _, err = cli("backup", "policy", "web1")
    assert code == 0 and "not scheduled; keep everything" in err
    code, _, err = cli("backup", "policy", "web1", "--every", "1h", "--keep-hourly", "24",
                       "--keep-daily", "7")  # fmt: skip
    assert code == 0 and "every 1h; keep hourly 24, daily 7" in err
    policy = engine.spec("web1").backup
    assert (policy.every, policy.keep_hourly, policy.keep_daily) == (3600, 24, 7)
    code, out, _ = cli("backup", "policy", "web1", "--every", "off", "-o", "json")
    assert code == 0 and json.loads(out)["every"] is None and json.loads(out)["keep_daily"] == 7
    code, _, err = cli("backup", "policy", "web1", "--every", "10s")
    assert code == 2 and "at most once a minute" in err


def test_backup_list_verify_and_restore_arguments(engine: Engine) -> None:
    code, _, err = cli("backup", "create", "web1")
    assert code == 0 and "full backup" in err and "(file systems frozen)" in err
    code, out, _ = cli("backup", "list", "web1", "-o", "json")
    (backup,) = json.loads(out)
    assert backup["vm"] == "web1" and backup["kind"] == "full"
    code, _, err = cli("backup", "verify", "web1")
    assert code == 0 and "1 backup(s) of web1 verified" in err
    code, _, err = cli("restore", "web1")
    assert code == 2 and "--latest or --backup" in err
    code, _, err = cli("restore", "web1", "--latest")
    assert code == 4 and "--force" in err
    code, _, err = cli("restore", "web1", "--backup", "20200101T000000-abcdef", "--as", "x")
    assert code == 3 and "no backup '20200101T000000-abcdef'" in err
    code, _, err = cli("restore", "web1", "--backup", "nope", "--as", "x")
    assert code == 2 and "invalid backup id 'nope'" in err
    code, _, err = cli("restore", "web1", "--latest", "--as", "web1-restored")
    assert code == 0 and "web1-restored created from backup" in err
    assert engine.show("web1-restored").state == "stopped"


def test_a_terminal_sees_the_backup_and_restore_stages_and_json_sees_none(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The phase line on a terminal (a counted stage with its percentage); -o json and a
    pipe get no progress at all."""
    import io

    from rich.console import Console

    from cloudlet.cli import progress as cli_progress
    from tests.fakes import FakeDisks

    FakeDisks.write(Path(engine.show("web1").paths["disk"]), "0", "root v1")
    for output, terminal, shown in (
        ((), True, True),
        (("-o", "json"), True, False),
        ((), False, False),
    ):
        buffer = io.StringIO()
        monkeypatch.setattr(cli_progress, "err", Console(file=buffer, force_terminal=terminal))
        code, _, _ = cli("backup", "create", "web1", *output)
        text = buffer.getvalue()
        assert code == 0
        if shown:
            assert "backing up web1: storing chunks 100%" in text, text
            assert "backing up web1: signing the manifest" in text, text
        else:
            assert text == ""
    buffer = io.StringIO()
    monkeypatch.setattr(cli_progress, "err", Console(file=buffer, force_terminal=True))
    code, _, _ = cli("restore", "web1", "--latest", "--as", "copy")
    assert code == 0 and "restoring copy: writing disk root" in buffer.getvalue()
