"""Backup, restore, export, prune and scheduled runs answer with typed results, and
their hints say what to do in words with the actions as next steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.backup.store import VerifyProblem
from cloudlet.cli import wording
from cloudlet.engine.backup_requests import PolicyUpdate
from cloudlet.engine.backup_views import PruneResult, RunDueResult
from cloudlet.engine.engine import Engine
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import VMBody
from cloudlet.store.models import BackupRow
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    made = make_fake_engine(short_tmp / "home")
    made.create("web1", VMBody())
    return made


def test_restore_and_export_are_done_results(engine: Engine, short_tmp: Path) -> None:
    ops = engine.backups
    backup = ops.create("web1")
    copy = ops.restore("web1", as_name="copy")
    assert isinstance(copy, Done)
    assert (copy.kind, copy.name, copy.action) == ("vm", "copy", "created")
    assert copy.next_steps == (step(Step.VM_START, vm="copy"),)
    assert wording.with_commands(copy.message, copy.next_steps).endswith(
        "(stopped) (cloudlet start copy)"
    )
    back = ops.restore("web1", backup_id=backup.id, force=True)
    assert (back.kind, back.name, back.action) == ("vm", "web1", "restored")
    assert back.message == f"web1 restored from backup {backup.id}"
    exported = ops.export("web1", short_tmp / "web1.tar")
    assert (exported.kind, exported.name, exported.action) == ("vm", "web1", "exported")
    assert set(exported.to_dict()) == {"kind", "name", "action", "message", "changed", "next_steps"}


def test_prune_and_run_due_are_typed(engine: Engine) -> None:
    ops = engine.backups
    first = ops.create("web1")
    ops.create("web1")
    result = ops.prune("web1", policy=ops.policy("web1").model_copy(update={"keep_last": 1}))
    assert isinstance(result, PruneResult)
    assert result.pruned == (first.id,) and result.freed >= 0
    assert result.to_dict() == {"vm": "web1", "pruned": [first.id], "freed": result.freed}
    ops.set_policy("web1", PolicyUpdate(every="1h"))
    due = ops.run_due(now=10**10)
    assert isinstance(due, RunDueResult) and due.failed == 0
    (run,) = due.runs
    assert run.vm == "web1" and run.backup is not None and run.error is None
    data = due.to_dict()
    assert data["failed"] == 0 and data["runs"][0]["backup"]["id"] == run.backup.id


def test_backup_hints_name_no_command_and_carry_next_steps(engine: Engine) -> None:
    ops = engine.backups
    with pytest.raises(NotFound) as none:
        ops.verify("web1")
    assert step(Step.BACKUP_CREATE, vm="web1") in none.value.next_steps
    ops.create("web1")
    with pytest.raises(NotFound) as unknown:
        ops.restore("web1", backup_id="20200101T000000-abcdef", as_name="x")
    assert step(Step.BACKUP_LIST, vm="web1") in unknown.value.next_steps
    with pytest.raises(Conflict) as running:
        ops.restore("web1")
    assert "cloudlet" not in running.value.one_line() and "--" not in running.value.one_line()
    assert wording.error_line(running.value) == (
        "cannot restore web1 in place: it is running: stop it first, let the restore stop it "
        "(force), or restore beside it as a new VM (cloudlet stop web1 or cloudlet restore "
        "web1 --latest --force or cloudlet restore web1 --latest --as web1-restored)"
    )
    with pytest.raises(Conflict) as exporting:
        ops.export("web1", Path("/nonexistent-dir/web1.tar"))
    assert step(Step.VM_STOP, vm="web1") in exporting.value.next_steps


def test_a_file_that_is_no_export_says_how_to_make_one(engine: Engine, short_tmp: Path) -> None:
    junk = short_tmp / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidInput) as refused:
        engine.backups.import_(junk)
    assert "cloudlet " not in (refused.value.hint or "")
    assert wording.error_line(refused.value).endswith("(cloudlet export VM FILE)")


def test_a_changed_manifest_is_a_typed_verify_problem_with_the_same_words(engine: Engine) -> None:
    ops = engine.backups
    backup = ops.create("web1")
    with engine.db.session() as s:
        row = s.get(BackupRow, backup.id)
        assert row is not None
        row.manifest_sha256 = "0" * 64  # recorded one manifest, the store holds another
    (problem,) = ops.verify("web1").problems
    assert problem == VerifyProblem("manifest-changed", backup.id)
    assert str(problem) == f"backup {backup.id}: its manifest is not the one recorded"
    assert str(VerifyProblem("missing", "b1", "data1", "ab" * 32)) == (
        f"backup b1: disk data1: chunk {'ab' * 32} is missing"
    )
