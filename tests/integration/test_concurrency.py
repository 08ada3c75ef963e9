"""One engine, four threads, real QEMU: create, start, stop, snapshot and delete
colliding on three tiny VMs for a bounded number of rounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudlet.config import Settings
from cloudlet.engine.factory import open_engine
from cloudlet.host import processes
from cloudlet.spec.document import VMBody
from tests.concurrency import Ledger, check_consistent, for_rounds, run_threads
from tests.integration import cli

pytestmark = pytest.mark.integration

NAMES = ["cc0", "cc1", "cc2"]
ROUNDS = int(os.environ.get("CLOUDLET_STRESS_ROUNDS", "12"))


def test_four_threads_on_real_qemu(cloudlet_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli.in_process_env(cloudlet_home, monkeypatch)
    engine = open_engine(Settings.load())
    try:
        ledger = Ledger()
        for name in NAMES:  # something to start, stop and snapshot from the first round
            body = VMBody(type="gp.micro", restrict_network=True, state="stopped")
            ledger.created.add(engine.create(name, body).id)
        run_threads(engine, NAMES, 4, for_rounds(ROUNDS), vm_type="gp.micro", ledger=ledger)
        print(dict(ledger.calls))
        rows = check_consistent(engine, NAMES, ledger)
        for op in ("start", "stop", "snapshot"):
            assert ledger.calls[f"{op} ok"] > 0, ledger.calls
        assert ledger.pids, "no VM ever ran"
        # No orphan QEMU: of the processes cloudlet reported, exactly those of the VMs
        # the database calls running still live, and no other QEMU names this state.
        running = {
            (info.pid, info.pid_start)
            for r in rows
            if r.state in ("running", "paused")
            and (info := engine.driver.runtime(r.id)) is not None
        }
        assert len(running) == sum(r.state in ("running", "paused") for r in rows)
        alive = {(pid, start) for pid, start in ledger.pids if processes.is_alive(pid, start)}
        assert alive == running, f"orphans: {alive - running}"
        assert sorted(cli.our_processes(str(cloudlet_home))) == sorted(p for p, _ in running)
        # What this engine recorded, a new process sees the same way.
        listed = {v["name"]: v["state"] for v in cli.run_json(cloudlet_home, "list")}
        assert listed == {r.name: r.state for r in rows}
    finally:
        engine.db.close()
