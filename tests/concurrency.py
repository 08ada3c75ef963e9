"""Many threads on one engine: the workload and the checks the fake and real tests share.

Each thread picks create, start, stop, snapshot or delete on a small set of names, so
calls collide all the time. A ledger notes what the engine said happened (ids it
created, pids it reported, errors it raised); ``check_consistent`` then holds the
engine's database, its files and the driver against each other and against the ledger.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from cloudlet.driver.base import PowerState
from cloudlet.engine.engine import Engine
from cloudlet.errors import Busy, CapacityExceeded, CloudletError, Conflict, NotFound
from cloudlet.spec.document import VMBody
from cloudlet.spec.states import CAPACITY_STATES, VMState
from cloudlet.store.models import InstanceRow, OperationRow, SnapshotRow

# What a caller may be told when another thread got there first; anything else is a bug.
EXPECTED = (Conflict, Busy, NotFound, CapacityExceeded)
SETTLED = {VMState.STOPPED.value, VMState.RUNNING.value, VMState.PAUSED.value}
OPERATIONS = ("create", "start", "stop", "snapshot", "delete", "clone")
# Deletes are rarer than the rest, so VMs live long enough to be started and stopped.
WEIGHTS = (2, 3, 3, 2, 1, 1)


@dataclass
class Ledger:
    """What the threads were told, gathered under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    created: set[str] = field(default_factory=set)  # instance ids a create returned
    pids: set[tuple[int, int]] = field(default_factory=set)  # hypervisor pid, start time
    calls: Counter[str] = field(default_factory=Counter)  # "op ok" / "op ErrorClass"
    unexpected: list[str] = field(default_factory=list)
    notices_of_others: list[str] = field(default_factory=list)
    peak_cpus: int = 0  # the most vCPUs / memory counted against the host at any instant
    peak_memory: int = 0

    def note(self, key: str) -> None:
        with self.lock:
            self.calls[key] += 1


def _note_process(engine: Engine, ledger: Ledger, instance_id: str) -> None:
    """Remember the hypervisor process a VM got (it may be stopped again already)."""
    info = engine.driver.runtime(instance_id)
    if info is not None:
        with ledger.lock:
            ledger.pids.add((info.pid, info.pid_start))


def _one_call(
    engine: Engine,
    op: str,
    name: str,
    names: list[str],
    rng: random.Random,
    ledger: Ledger,
    vm_type: str | None,
) -> None:
    if op == "create":
        state = "running" if rng.random() < 0.7 else "stopped"
        body = VMBody(type=vm_type, restrict_network=True, state=state)
        vm = engine.create(name, body)
        with ledger.lock:
            ledger.created.add(vm.id)
        _note_process(engine, ledger, vm.id)
    elif op == "start":
        result = engine.start(name)
        _note_process(engine, ledger, result.instance.id)
    elif op == "stop":
        engine.stop(name, force=rng.random() < 0.5)
    elif op == "snapshot":
        engine.storage.snapshot_create(name, f"s{rng.randrange(1_000_000)}")
    elif op == "delete":
        engine.delete(name, force=True)
    elif op == "clone":  # from the newest snapshot or the stopped disk, to any name
        ops = engine.storage
        snaps = ops.snapshots(name) if rng.random() < 0.5 else []
        snapshot = snaps[-1].name if snaps else None
        vm = ops.clone(name, rng.choice(names), snapshot=snapshot)
        with ledger.lock:
            ledger.created.add(vm.id)


def worker(
    engine: Engine,
    names: list[str],
    *,
    seed: int,
    ledger: Ledger,
    go: threading.Barrier,
    keep_going: Callable[[int], bool],
    vm_type: str | None,
) -> None:
    """Random operations on random names until ``keep_going(round)`` says stop."""
    rng = random.Random(seed)
    go.wait()
    rounds = 0
    while keep_going(rounds):
        rounds += 1
        op, name = rng.choices(OPERATIONS, WEIGHTS)[0], rng.choice(names)
        try:
            _one_call(engine, op, name, names, rng, ledger, vm_type)
            ledger.note(f"{op} ok")
        except EXPECTED as exc:
            ledger.note(f"{op} {type(exc).__name__}")
            if "\n" in exc.one_line() or not exc.hint:
                with ledger.lock:
                    ledger.unexpected.append(f"{op} {name}: unclear error {exc.one_line()!r}")
        except BaseException as exc:  # anything else is what this test is for
            kind = exc.one_line() if isinstance(exc, CloudletError) else repr(exc)
            with ledger.lock:
                ledger.unexpected.append(
                    f"{op} {name} (seed {seed}): {kind}\n{traceback.format_exc()}"
                )
    # The notices this thread reads name only the VMs this thread's calls touched.
    for notice in engine.notices:
        if not any(n in notice for n in names):
            with ledger.lock:
                ledger.notices_of_others.append(notice)


def _watch_capacity(engine: Engine, ledger: Ledger, done: threading.Event) -> None:
    """Sample what counts against the host while the threads run: a limit exceeded for
    a moment is a race lost, even when the end state is back under it."""
    counted = [st.value for st in CAPACITY_STATES]
    while not done.is_set():
        with engine.db.session() as s:
            rows = s.execute(
                select(InstanceRow.cpus, InstanceRow.memory).where(InstanceRow.state.in_(counted))
            ).all()
        ledger.peak_cpus = max(ledger.peak_cpus, sum(r.cpus for r in rows))
        ledger.peak_memory = max(ledger.peak_memory, sum(r.memory for r in rows))
        done.wait(0.002)


def run_threads(
    engine: Engine,
    names: list[str],
    threads: int,
    keep_going: Callable[[int], bool],
    *,
    vm_type: str | None = None,
    ledger: Ledger | None = None,
) -> Ledger:
    ledger = ledger or Ledger()
    go = threading.Barrier(threads)
    done = threading.Event()
    watcher = threading.Thread(target=_watch_capacity, args=(engine, ledger, done))
    watcher.start()
    pool = [
        threading.Thread(
            target=worker,
            args=(engine, names),
            kwargs={
                "seed": 1000 + i,
                "ledger": ledger,
                "go": go,
                "keep_going": keep_going,
                "vm_type": vm_type,
            },
            name=f"stress-{i}",
        )
        for i in range(threads)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    done.set()
    watcher.join()
    return ledger


def for_seconds(seconds: float) -> Callable[[int], bool]:
    deadline = time.monotonic() + seconds
    return lambda _round: time.monotonic() < deadline


def for_rounds(rounds: int) -> Callable[[int], bool]:
    return lambda done: done < rounds


def check_consistent(engine: Engine, names: list[str], ledger: Ledger) -> list[InstanceRow]:
    """The end state is whole: returns the VMs left, after asserting on everything."""
    assert not ledger.unexpected, "unexpected errors:\n" + "\n".join(ledger.unexpected)
    with engine.db.session() as s:
        rows = list(s.scalars(select(InstanceRow)).all())
        ops = list(s.scalars(select(OperationRow)).all())
        snaps = list(s.scalars(select(SnapshotRow)).all())
    by_name = Counter(r.name for r in rows)
    assert all(n == 1 for n in by_name.values()), f"duplicated VMs: {by_name}"
    assert {r.name for r in rows} <= set(names)
    forwards = [r.ssh_port for r in rows if r.ssh_port is not None]
    assert len(set(forwards)) == len(forwards), f"two VMs share an SSH port: {forwards}"
    # Every VM left is one a create call returned; every VM a create returned is still
    # there or was removed by a delete that finished.
    ids = {r.id for r in rows}
    assert ids <= ledger.created, f"VMs nobody created: {ids - ledger.created}"
    deleted = {o.instance_id for o in ops if o.kind == "delete" and o.status == "done"}
    lost = ledger.created - ids - deleted
    assert not lost, f"lost VMs (created, never deleted, gone): {lost}"
    assert ledger.calls["delete ok"] == len(deleted)
    # Nothing half done: no VM in a transitional state, no operation still running.
    unsettled = {r.name: r.state for r in rows if r.state not in SETTLED}
    assert not unsettled, f"VMs left in transitional or failed states: {unsettled}"
    running = [o for o in ops if o.status == "running" or o.finished_at is None]
    assert not running, f"unfinished operations: {[(o.kind, o.instance_name) for o in running]}"
    failed = {o.status for o in ops} - {"done", "failed"}
    assert not failed, f"operations ended as {failed}"
    # The database and the driver agree.
    for r in rows:
        power = engine.driver.power_state(r.id)
        expected = {
            VMState.RUNNING.value: {PowerState.RUNNING},
            VMState.PAUSED.value: {PowerState.PAUSED},
            VMState.STOPPED.value: {PowerState.ABSENT},
        }[r.state]
        assert power in expected, f"{r.name} is {r.state} in the database, {power} in the driver"
    # Files: runtime records and instance directories only for the VMs left.
    run_dirs = {p.name for p in engine.paths.run.iterdir()} if engine.paths.run.exists() else set()
    live = {r.id for r in rows if r.state in (VMState.RUNNING, VMState.PAUSED)}
    assert run_dirs & ledger.created <= live, f"runtime records of VMs not running: {run_dirs}"
    instance_dirs = {p.name for p in engine.paths.instances.iterdir()}
    assert instance_dirs <= ids, f"disks of VMs that are gone: {instance_dirs - ids}"
    assert {s.instance_id for s in snaps} <= ids, "snapshots of VMs that are gone"
    # Capacity held while threads raced for it.
    used = [r for r in rows if r.state in {st.value for st in CAPACITY_STATES}]
    limit = int(engine.deps.host_cpus * engine.settings.cpu_overcommit)
    memory_limit = engine.deps.host_memory - engine.settings.memory_reserve
    assert sum(r.cpus for r in used) <= limit, "more vCPUs running than the host allows"
    assert sum(r.memory for r in used) <= memory_limit, "more memory running than allowed"
    assert ledger.peak_cpus <= limit, f"{ledger.peak_cpus} vCPUs counted at once, limit {limit}"
    assert ledger.peak_memory <= memory_limit, f"memory peaked at {ledger.peak_memory}"
    assert not ledger.notices_of_others, f"notices of other calls: {ledger.notices_of_others}"
    return rows
