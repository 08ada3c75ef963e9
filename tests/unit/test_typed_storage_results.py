"""Storage changes answer with typed results, and their hints carry the actions as data.

A frontend reads what a detach or a revert did from fields (``kind``, ``name``,
``action``, ``changed``), never by parsing prose, and a hint says what to do in words
while the action itself travels as a ``NextStep`` the CLI words as its command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cloudlet.cli import wording
from cloudlet.engine.engine import Engine
from cloudlet.engine.views import Done
from cloudlet.errors import CloudletError, Conflict, InvalidInput, NotFound
from cloudlet.next_steps import NextStep, Step, step
from cloudlet.spec.document import VMBody
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine

DONE_KEYS = {"kind", "name", "action", "message", "changed", "next_steps"}


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


def test_volume_changes_are_done_results(engine: Engine) -> None:
    storage = engine.storage
    engine.create("web1", VMBody())
    storage.volume_create("data1", GIB)
    attached = storage.volume_attach("data1", "web1")
    assert isinstance(attached, Done)
    assert (attached.kind, attached.name, attached.action, attached.changed) == (
        "volume",
        "data1",
        "attached",
        True,
    )
    assert set(attached.to_dict()) == DONE_KEYS
    again = storage.volume_attach("data1", "web1")
    assert (again.action, again.changed) == ("attached", False)
    grown = storage.volume_resize("data1", 2 * GIB)
    assert (grown.action, grown.changed) == ("resized", True)
    assert not storage.volume_resize("data1", 2 * GIB).changed
    detached = storage.volume_detach("data1")
    assert (detached.action, detached.changed, detached.name) == ("detached", True, "data1")
    assert not storage.volume_detach("data1").changed
    deleted = storage.volume_delete("data1")
    assert deleted.to_dict() == {
        "kind": "volume",
        "name": "data1",
        "action": "deleted",
        "message": "volume data1 deleted",
        "changed": True,
        "next_steps": [],
    }


def test_pool_and_snapshot_changes_are_done_results(engine: Engine, short_tmp: Path) -> None:
    storage = engine.storage
    storage.pool_create("fast", short_tmp / "fast")
    gone = storage.pool_delete("fast")
    assert (gone.kind, gone.name, gone.action) == ("pool", "fast", "deleted")
    engine.create("web1", VMBody(state="stopped"))
    storage.snapshot_create("web1", "s1")
    storage.snapshot_create("web1", "s2")
    reverted = storage.snapshot_revert("web1", "s1")
    assert (reverted.kind, reverted.name, reverted.action) == ("vm", "web1", "reverted")
    assert "discarded later snapshots: s2" in reverted.message
    merged = storage.snapshot_delete("web1", "s1")
    assert (merged.kind, merged.name, merged.action) == ("snapshot", "s1", "deleted")


def test_storage_hints_name_no_command_and_carry_next_steps(engine: Engine) -> None:
    storage = engine.storage
    engine.create("web1", VMBody())
    engine.create("db1", VMBody(state="stopped"))
    engine.create("app1", VMBody(state="stopped"))
    storage.volume_create("data1", GIB)
    storage.volume_attach("data1", "web1")
    storage.snapshot_create("db1", "base")
    storage.snapshot_create("web1", "w1")
    cases: list[tuple[type[CloudletError], Callable[[], object], NextStep]] = [
        (NotFound, lambda: storage.volume("nope"), step(Step.VOLUME_LIST)),
        (NotFound, lambda: storage.pool("nope"), step(Step.POOL_LIST)),
        (
            Conflict,
            lambda: storage.volume_attach("data1", "db1"),
            step(Step.VOLUME_DETACH, volume="data1"),
        ),
        (
            Conflict,
            lambda: storage.volume_delete("data1"),
            step(Step.VOLUME_DETACH, volume="data1"),
        ),
        (
            NotFound,
            lambda: storage.snapshot_revert("web1", "nope"),
            step(Step.SNAPSHOT_LIST, vm="web1"),
        ),
        (
            NotFound,
            lambda: storage.snapshot_revert("web1", "base"),
            step(Step.CLONE, vm="db1", snapshot="base"),
        ),
        (Conflict, lambda: storage.snapshot_revert("web1", "w1"), step(Step.VM_STOP, vm="web1")),
        (
            InvalidInput,
            lambda: storage.clone("app1", "app2", linked=True),
            step(Step.SNAPSHOT_CREATE, vm="app1"),
        ),
        (Conflict, lambda: storage.clone("web1", "web2"), step(Step.VM_STOP, vm="web1")),
        (
            Conflict,
            lambda: storage.snapshot_create("db1", "m1", memory=True),
            step(Step.VM_START, vm="db1"),
        ),
    ]
    for kind, call, expected in cases:
        with pytest.raises(kind) as caught:
            call()
        assert expected in caught.value.next_steps, (caught.value.one_line(), expected)
        assert "cloudlet " not in caught.value.one_line()
    with pytest.raises(Conflict) as running:
        storage.snapshot_revert("web1", "w1")
    assert wording.error_line(running.value) == (
        "cannot revert web1: it is running: stop it first, or revert with force to stop it "
        "now (cloudlet stop web1 or cloudlet snapshot revert --force web1 w1)"
    )
