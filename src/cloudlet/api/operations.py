"""Long work in worker threads, followed as operations (202 + Location, wait, cancel).

Each operation is recorded before its work starts (engine.operations), runs in its own
thread with a progress sink and a cancel token, and records its result or its error at
the end. Locks are taken without waiting (a VM another caller holds fails the
operation as "busy" at once, never queues). Waiting is an in-memory event for the
operations of this server, so a long poll costs no database polling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cloudlet.engine import call_options
from cloudlet.engine.engine import Engine
from cloudlet.engine.operation_records import (
    CANCELLED,
    FAILURE,
    SUCCESS,
    OperationView,
    error_body,
)
from cloudlet.engine.requester import LOCAL, acting_for
from cloudlet.errors import Cancelled, CloudletError, Conflict
from cloudlet.progress import CancelToken, ProgressEvent, ProgressSink

log = logging.getLogger("cloudlet.api")

Work = Callable[[ProgressSink, CancelToken], Any]
MAX_WAIT = 120.0  # a long poll answers within this, finished or not
# The route answered 423 at once if the VM was held; in the worker a short wait lets
# brief locks (the host's, while a create claims capacity) pass instead of failing.
LOCK_WAIT = 30.0
CANCEL_GRACE = 5.0  # a cancel answers once the work stopped, or after this
PROGRESS_EVERY = 0.5  # seconds between progress writes of one stage


class _Running:
    def __init__(self, may_cancel: bool) -> None:
        self.cancel = CancelToken()
        self.done = threading.Event()
        self.may_cancel = may_cancel
        self.thread: threading.Thread | None = None


class OperationRunner:
    """Runs operations for one server; marks those of a dead server interrupted."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        for op_id in engine.operations.mark_interrupted():
            log.info("operation %s was interrupted by a server stop", op_id)

    def submit(
        self,
        kind: str,
        resources: dict[str, list[str]],
        work: Work,
        *,
        may_cancel: bool,
        requester: str = LOCAL,
    ) -> OperationView:
        """Record the operation and start its work; its events name ``requester``."""
        view = self.engine.operations.begin(
            kind, resources, may_cancel=may_cancel, requester=requester
        )
        state = _Running(may_cancel)
        with self._lock:
            self._running[view.id] = state
        state.thread = threading.Thread(
            target=self._run,
            args=(view.id, work, state, requester),
            name=f"op-{kind}",
            daemon=True,
        )
        state.thread.start()
        return view

    def _sink(self, op_id: str) -> ProgressSink:
        last: list[Any] = [None, 0.0]

        def sink(event: ProgressEvent) -> None:
            now = time.monotonic()
            if event.stage != last[0] or now - last[1] >= PROGRESS_EVERY:
                last[0], last[1] = event.stage, now
                self.engine.operations.progress(op_id, event)

        return sink

    def _run(self, op_id: str, work: Work, state: _Running, requester: str) -> None:
        records = self.engine.operations
        try:
            with (
                self.engine.collect_notices(),
                call_options.per_call(lock_wait=LOCK_WAIT, cancel=state.cancel),
                acting_for(requester, op_id),
            ):
                result = work(self._sink(op_id), state.cancel)
            records.finish(op_id, SUCCESS, result=result)
        except Cancelled as exc:
            records.finish(op_id, CANCELLED, error=error_body(exc))
        except CloudletError as exc:
            records.finish(op_id, FAILURE, error=error_body(exc))
        except Exception:
            log.exception("operation %s failed unexpectedly", op_id)
            error = {"code": "internal", "message": "internal error", "hint": "see the log"}
            records.finish(op_id, FAILURE, error=error)
        finally:
            state.done.set()
            with self._lock:
                self._running.pop(op_id, None)

    def get(self, op_id: str) -> OperationView:
        return self.engine.operations.get(op_id)

    def wait(self, op_id: str, timeout: float) -> OperationView:
        """The operation once finished, or as it is after ``timeout`` (capped) seconds."""
        view = self.get(op_id)
        with self._lock:
            state = self._running.get(view.id)
        if state is not None:
            state.done.wait(min(max(timeout, 0.0), MAX_WAIT))
        return self.get(view.id)

    def cancel(self, op_id: str) -> OperationView:
        view = self.get(op_id)
        with self._lock:
            state = self._running.get(view.id)
        if view.finished:
            raise Conflict(f"operation {view.id} is {view.status}", hint="only a running one stops")
        if state is None:
            raise Conflict(
                f"operation {view.id} runs in another server process",
                hint="cancel it through the server that runs it",
            )
        if not state.may_cancel:
            raise Conflict(
                f"a {view.kind} operation cannot be cancelled",
                hint="wait for it to finish",
            )
        state.cancel.cancel("cancelled by an API client")
        state.done.wait(CANCEL_GRACE)
        return self.get(view.id)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel what can be cancelled and give the rest ``timeout`` seconds to end."""
        with self._lock:
            states = list(self._running.values())
        for state in states:
            if state.may_cancel:
                state.cancel.cancel("the server is stopping")
        deadline = time.monotonic() + timeout
        for state in states:
            state.done.wait(max(0.0, deadline - time.monotonic()))
