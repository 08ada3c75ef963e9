"""One engine, sixteen threads: create, start, stop, snapshot and delete colliding on a
few names for a minute (CLOUDLET_STRESS_SECONDS shortens it), on the fake driver."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine import locks, ports
from cloudlet.errors import Conflict
from cloudlet.spec.document import VMBody
from cloudlet.spec.instance import FirewallSpec
from cloudlet.spec.units import GIB
from tests.concurrency import check_consistent, for_seconds, run_threads
from tests.fakes import make_fake_engine

SECONDS = float(os.environ.get("CLOUDLET_STRESS_SECONDS", "60"))
NAMES = [f"vm{i}" for i in range(6)]


def test_sixteen_threads_leave_a_whole_state(short_tmp: Path) -> None:
    # Room for three default VMs at once: starts race for capacity as well as names.
    engine = make_fake_engine(short_tmp / "home", cpus=4, memory=4 * GIB)
    ledger = run_threads(engine, NAMES, 16, for_seconds(SECONDS))
    rows = check_consistent(engine, NAMES, ledger)
    driver = engine.driver
    assert isinstance(driver, FakeDriver)
    # Nothing the driver runs is unknown to the database.
    alive = {i for i, vm in driver.vms.items() if vm.alive}
    assert alive == {r.id for r in rows if r.state in ("running", "paused")}
    assert len({vm.pid for vm in driver.vms.values()}) == len(driver.vms)
    # The threads really collided: every operation succeeded sometimes and was refused
    # sometimes, and starts were turned away for capacity.
    print(dict(ledger.calls))
    for op in ("create", "start", "stop", "snapshot", "delete", "clone"):
        assert ledger.calls[f"{op} ok"] > 0, ledger.calls
    assert ledger.calls["create Conflict"] > 0, ledger.calls
    assert ledger.calls["start CapacityExceeded"] + ledger.calls["create CapacityExceeded"] > 0


def test_notices_belong_to_the_call_that_made_them(short_tmp: Path) -> None:
    engine = make_fake_engine(short_tmp / "home")

    # Every such create has a notice that names it (the TCG note is said once a boot).
    ported = VMBody(firewall=FirewallSpec(inbound_ports=(8080,)))

    seen: dict[str, list[str]] = {}
    go = threading.Barrier(2)

    def create(name: str) -> None:
        go.wait()
        engine.create(name, ported)
        seen[name] = list(engine.notices)

    threads = [threading.Thread(target=create, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("one", "two"):
        assert seen[name] and all(name in n for n in seen[name]), seen
    # A request scope starts empty and ends with the outer list untouched.
    engine.create("outer", ported)
    outer = list(engine.notices)
    with engine.collect_notices() as mine:
        engine.create("inner", ported)
        assert mine and all("inner" in n for n in mine)
    assert engine.notices == outer and all("outer" in n for n in outer)


def test_ssh_ports_are_handed_out_once(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_fake_engine(short_tmp / "home")
    stopped = engine.create("web1", VMBody(state="stopped"))
    assert stopped.ssh_port is not None
    # The kernel offers a stopped VM's port (its forward is not bound), then one port twice.
    offers = iter([stopped.ssh_port, 61001, 61001, 61002])
    monkeypatch.setattr(ports, "free_loopback_port", lambda: next(offers))
    assert ports.ssh_port(engine.db, engine.paths.locks) == 61001
    assert ports.ssh_port(engine.db, engine.paths.locks) == 61002


CHILD_PORT = """
import sys
from pathlib import Path
from cloudlet.engine import ports
from cloudlet.store.database import Database
offers = iter([61001, 61002, 61003])
ports.free_loopback_port = lambda: next(offers)
print(ports.ssh_port(Database(Path(sys.argv[1])), Path(sys.argv[2])))
"""


@pytest.mark.integration  # it starts two Python processes
def test_ssh_ports_are_handed_out_once_across_processes(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two CLIs (or the server and a CLI) creating at once: the kernel offers both the
    same free port, the row of the first is not written yet, and still each gets its own."""
    engine = make_fake_engine(short_tmp / "home")
    given = []
    for _ in range(2):
        child = subprocess.run(
            [sys.executable, "-c", CHILD_PORT, str(engine.db.path), str(engine.paths.locks)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(ports.__file__).parents[2])},
        )
        given.append(int(child.stdout))
    assert given == [61001, 61002]
    reservations = engine.paths.locks / "ports"
    assert sorted(p.name for p in reservations.iterdir()) == ["61001", "61002"]
    # A reservation as old as a create can take is gone by the next call.
    stale = time.time() - ports.RESERVATION_SECONDS - 1
    os.utime(reservations / "61001", (stale, stale))
    monkeypatch.setattr(ports, "free_loopback_port", lambda: 61001)
    assert ports.ssh_port(engine.db, engine.paths.locks) == 61001


def test_try_hold_never_waits_and_holds_for_the_whole_block(short_tmp: Path) -> None:
    held_elsewhere, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.hold(short_tmp, "vm1"):
            held_elsewhere.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held_elsewhere.wait(10)
    with locks.try_hold(short_tmp, "vm1") as got:
        assert got is False
    release.set()
    thread.join()
    with locks.try_hold(short_tmp, "vm1") as got:
        assert got is True
        assert not locks.is_free(short_tmp, "vm1")  # held, not merely checked
    assert locks.is_free(short_tmp, "vm1")


def test_one_host_port_goes_to_one_vm(short_tmp: Path) -> None:
    engine = make_fake_engine(short_tmp / "home")
    for name in ("web1", "db1"):
        engine.create(name, VMBody())
    ops = engine.networks
    won: dict[int, list[str]] = {}
    go = threading.Barrier(2)

    def claim(vm: str) -> None:
        for port in range(20000, 20030):
            go.wait()
            try:
                ops.port_add(vm, f"{port}:80/tcp")
                won.setdefault(port, []).append(vm)
            except Conflict:
                pass

    threads = [threading.Thread(target=claim, args=(vm,)) for vm in ("web1", "db1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == list(range(20000, 20030))
    assert all(len(vms) == 1 for vms in won.values()), won
