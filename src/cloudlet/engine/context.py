"""What every use case shares: settings, database, driver, locks, operations, events.

The services (instances, storage, networks, backups, process runs) each take one
``EngineContext`` instead of a back-reference to the ``Engine`` facade, so they
neither import the facade nor reach into its private names. Nothing per call is
kept here except through ``CallNotices``, which is per thread (or per
``collect_notices`` block): one context serves many threads at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from sqlalchemy import select

from cloudlet import logs
from cloudlet.config import Paths, Settings
from cloudlet.driver.base import Driver
from cloudlet.engine import locks, requester
from cloudlet.engine.deps import EngineDeps
from cloudlet.errors import Conflict, NotFound
from cloudlet.next_steps import NextStep, Step, step
from cloudlet.notices import CallNotices
from cloudlet.progress import CancelToken
from cloudlet.spec import names
from cloudlet.spec.states import VMState
from cloudlet.spec.suggest import did_you_mean
from cloudlet.store.database import Database
from cloudlet.store.models import EventRow, InstanceRow, OperationRow, utcnow

DEFAULT_AGENT_TIMEOUT = 300.0


def _agent_timeout_from_env() -> float:
    return float(os.environ.get("CLOUDLET_AGENT_TIMEOUT", DEFAULT_AGENT_TIMEOUT))


@dataclass
class EngineContext:
    """The shared parts of the engine; services hold one of these and nothing else."""

    settings: Settings
    deps: EngineDeps
    db: Database
    agent_timeout: float = field(default_factory=_agent_timeout_from_env)
    notices_store: CallNotices = field(default_factory=lambda: CallNotices("engine-notices"))

    @property
    def paths(self) -> Paths:
        return self.settings.paths

    @property
    def driver(self) -> Driver:
        return self.deps.driver

    # ------------------------------------------------------------------ notices
    @property
    def notices(self) -> list[str]:
        """What the calls of this thread (or of the open collect block) want said."""
        return self.notices_store.current

    def notice(self, text: str) -> None:
        self.notices_store.current.append(text)

    # ------------------------------------------------------------------ locks and rows
    def lock(
        self, name: str, wait: float | None = None, *, cancel: CancelToken | None = None
    ) -> AbstractContextManager[None]:
        """The VM's lock; every VM-name call locks or looks up first, so names are checked here."""
        names.vm_name(name)
        return locks.hold(self.paths.locks, name, wait=wait, what=f"VM {name}", cancel=cancel)

    def row(self, name: str) -> InstanceRow:
        names.vm_name(name)
        with self.db.session() as s:
            row = s.scalar(select(InstanceRow).where(InstanceRow.name == name))
        if row is None:
            raise self.no_vm(name)
        return row

    def no_vm(self, name: str) -> NotFound:
        """The error for a VM name nobody has, naming the closest VM that exists."""
        with self.db.session() as s:
            known = list(s.scalars(select(InstanceRow.name)).all())
        close = did_you_mean(name, known)
        if close:
            return NotFound(f"no VM named {name!r}", hint=close)
        return NotFound(
            f"no VM named {name!r}", hint="list your VMs", next_steps=[step(Step.VM_LIST)]
        )

    def set_state(self, instance_id: str, state: VMState, error: str | None = None) -> None:
        with self.db.session() as s:
            row = s.get(InstanceRow, instance_id)
            if row is not None:
                row.state = state.value
                row.last_error = error
                row.updated_at = utcnow()

    def require_state(self, row: InstanceRow, allowed: set[VMState], action: str) -> None:
        if row.state not in allowed:
            hint, steps = state_hint(row.state, row.name)
            raise Conflict(
                f"cannot {action} {row.name}: it is {row.state}", hint=hint, next_steps=steps
            )

    # ------------------------------------------------------------------ history
    def event(self, name: str, kind: str, message: str, op_id: int | None = None) -> None:
        with self.db.session() as s:
            s.add(event_row(name, kind, message, op_id))

    @contextmanager
    def operation(self, row: InstanceRow, kind: str) -> Iterator[int]:
        """Record the operation before acting; mark it done or failed afterwards."""
        with self.db.session() as s:
            op = OperationRow(
                instance_id=row.id,
                instance_name=row.name,
                kind=kind,
                status="running",
                pid=os.getpid(),
            )
            s.add(op)
            s.flush()
            op_id = op.id
        try:
            with logs.operation(op_id, kind, row.name):
                yield op_id
        except BaseException as exc:
            self.finish_operation(op_id, "failed", str(exc))
            raise
        self.finish_operation(op_id, "done")

    def finish_operation(self, op_id: int, status: str, error: str | None = None) -> None:
        with self.db.session() as s:
            op = s.get(OperationRow, op_id)
            if op is not None:
                op.status = status
                op.error = error
                op.finished_at = utcnow()


def event_row(name: str, kind: str, message: str, op_id: int | None = None) -> EventRow:
    """A lifecycle event naming who the current call acts for (see ``requester``)."""
    who = requester.current()
    return EventRow(
        instance_name=name,
        kind=kind,
        message=message,
        operation_id=op_id,
        requester=who.name,
        api_operation=who.operation,
    )


def state_hint(state: str, vm: str) -> tuple[str, list[NextStep]]:
    """What to do about VM ``vm`` in the wrong state for an action: in words, and as steps."""
    match VMState(state):
        case VMState.STOPPED:
            return "start it first", [step(Step.VM_START, vm=vm)]
        case VMState.PAUSED:
            return "resume it first", [step(Step.VM_RESUME, vm=vm)]
        case VMState.RUNNING:
            return "stop it first", [step(Step.VM_STOP, vm=vm)]
        case VMState.CRASHED:
            return "read its log, then start it again", [
                step(Step.VM_LOGS, vm=vm),
                step(Step.VM_START, vm=vm),
            ]
        case VMState.ERROR:
            return "read the error it shows, then start or delete it", [step(Step.VM_SHOW, vm=vm)]
        case VMState.CREATING:
            return "wait for the create to finish", []
        case VMState.STARTING:
            return "wait for the start to finish", []
        case VMState.STOPPING:
            return "wait for the stop to finish", []
    return "try again later", []
