"""Backup decisions every frontend shares (engine/backup_requests.py), on the fake driver:
policy changes from words, which backup a restore means, verify problems as an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import backup_commands, main
from cloudlet.engine.backup_requests import (
    PolicyUpdate,
    check_verified,
    chosen_backup,
)
from cloudlet.engine.backups import BackupService
from cloudlet.engine.engine import Engine
from cloudlet.engine.storage_rows import active_disk
from cloudlet.errors import BackupsCorrupt, InvalidInput, StoreCorrupt
from cloudlet.spec.document import VMBody
from tests.fakes import FakeDisks, make_fake_engine


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    engine = make_fake_engine(short_tmp / "home")
    engine.create("web1", VMBody())
    return engine


@pytest.fixture
def ops(engine: Engine) -> BackupService:
    return engine.backups


def test_an_update_sets_only_what_it_names_and_reads_back_the_stored_policy(
    engine: Engine,
    ops: BackupService,
) -> None:
    assert PolicyUpdate().changes() == {}
    assert ops.set_policy("web1", PolicyUpdate()) == ops.policy("web1")
    policy = ops.set_policy("web1", PolicyUpdate(every="1h", keep_daily=7))
    assert (policy.every, policy.keep_daily, policy.keep_last) == (3600, 7, 0)
    assert engine.spec("web1").backup == policy  # stored in the VM's spec
    policy = ops.set_policy("web1", PolicyUpdate(keep_last=3))
    assert (policy.every, policy.keep_daily, policy.keep_last) == (3600, 7, 3)


@pytest.mark.parametrize("off", ["off", "OFF", "none", "0", " off "])
def test_off_stops_the_schedule_and_keeps_the_retention(ops: BackupService, off: str) -> None:
    ops.set_policy("web1", PolicyUpdate(every="1d", keep_weekly=4))
    policy = ops.set_policy("web1", PolicyUpdate(every=off))
    assert policy.every is None and policy.schedule == "none" and policy.interval() is None
    assert policy.keep_weekly == 4


@pytest.mark.parametrize(
    ("update", "words"),
    [
        (PolicyUpdate(every="10s"), "at most once a minute"),
        (PolicyUpdate(every="59s"), "at most once a minute"),
        (PolicyUpdate(every="soon"), "invalid backup interval"),
        (PolicyUpdate(every="-1h"), "invalid backup interval"),
        (PolicyUpdate(keep_last=-1), "keep last must be 0 to 10000"),
        (PolicyUpdate(keep_monthly=10**9), "keep monthly must be 0 to 10000"),
    ],
)
def test_bad_updates_are_one_line_and_change_nothing(
    ops: BackupService, update: PolicyUpdate, words: str
) -> None:
    before = ops.policy("web1")
    with pytest.raises(InvalidInput, match=words) as caught:
        ops.set_policy("web1", update)
    assert "\n" not in caught.value.one_line()
    assert ops.policy("web1") == before


def test_a_restore_names_exactly_one_backup() -> None:
    assert chosen_backup(latest=True, backup_id=None) is None
    assert chosen_backup(latest=False, backup_id="b1") == "b1"
    for latest, backup_id in ((False, None), (True, "b1")):
        with pytest.raises(InvalidInput, match="say which backup") as caught:
            chosen_backup(latest=latest, backup_id=backup_id)
        assert "--" not in caught.value.one_line()  # the CLI adds its flag names


def test_verify_problems_become_backups_corrupt(engine: Engine, ops: BackupService) -> None:
    FakeDisks.write(active_disk(engine, engine.show("web1").id), "0", "data")
    ops.create("web1")
    clean = ops.verify("web1")
    assert check_verified(clean) is clean
    chunk = sorted(ops.store.all_chunks())[0]
    chunk.write_bytes(b"not what was stored")
    report = ops.verify("web1")
    with pytest.raises(BackupsCorrupt, match=r"1 problem\(s\) in the backups of web1") as caught:
        check_verified(report)
    assert isinstance(caught.value, StoreCorrupt) and caught.value.exit_code == 13


def test_the_cli_prints_the_problems_then_exits_with_the_corrupt_code(
    engine: Engine, ops: BackupService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_commands, "open_engine", lambda: engine)
    FakeDisks.write(active_disk(engine, engine.show("web1").id), "0", "data")
    ops.create("web1")
    sorted(ops.store.all_chunks())[0].write_bytes(b"flipped")
    result = CliRunner().invoke(main.app, ["backup", "verify", "web1"])
    error = result.exception
    assert isinstance(error, BackupsCorrupt) and error.exit_code == 13
    assert "is corrupt" in result.stderr and "1 problem(s)" in error.one_line()
    restore = CliRunner().invoke(main.app, ["restore", "web1"])
    assert isinstance(restore.exception, InvalidInput)
    assert restore.exception.hint == "give --latest or --backup ID"
