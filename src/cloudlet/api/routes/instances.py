"""/api/v1/instances: the VMs, as the CLI's ``-o json`` shows them, and their actions.

Reads answer at once. Create, start, stop, restart and delete answer 202 with the
operation (and ``Location`` to it); their work runs in the operation's thread. A VM
another caller holds is 423 at once, never a request that hangs behind the lock.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from cloudlet.api.auth import Caller, EngineDep
from cloudlet.api.etags import NOT_MODIFIED, require_match, tagged
from cloudlet.api.idempotency import Idempotent, Once
from cloudlet.api.operations import Work
from cloudlet.api.routes.operations import OPERATION, runner_of
from cloudlet.engine import call_options
from cloudlet.engine.action_check import refuse_pointless
from cloudlet.engine.body_request import body_request
from cloudlet.engine.engine import Engine
from cloudlet.engine.tokens import TokenView
from cloudlet.engine.views import InstanceView
from cloudlet.errors import Busy, Conflict, NotFound
from cloudlet.progress import CancelToken, ProgressSink
from cloudlet.spec.document import VMDocument
from cloudlet.spec.names import vm_name

router = APIRouter(prefix="/api/v1/instances", tags=["instances"])
INSTANCE: dict[str, Any] = {
    "model": InstanceView,
    "description": "the VM, the same JSON as the CLI shows for one VM",
}
INSTANCES: dict[str, Any] = {
    "model": list[InstanceView],
    "description": "the VMs, the same JSON as the CLI lists",
}
ACCEPTED: dict[int | str, dict[str, Any]] = {202: OPERATION}
IfMatch = Annotated[
    str | None, Header(description="act only if the VM still has this ETag (412 otherwise)")
]


def _accepted(
    request: Request, caller: TokenView, kind: str, name: str, work: Work, *, may_cancel: bool
) -> JSONResponse:
    view = runner_of(request).submit(
        kind,
        {"instances": [f"/api/v1/instances/{name}"]},
        work,
        may_cancel=may_cancel,
        requester=caller.name,
    )
    return JSONResponse(
        view.to_dict(), status_code=202, headers={"Location": f"/api/v1/operations/{view.id}"}
    )


def _existing(
    engine: Engine, name: str, action: str, if_match: str | None, *, force: bool = False
) -> None:
    """Refuse now what the operation would refuse: a bad name, no such VM (404), a VM
    changed since the client's If-Match (412), another caller holds (423) or in a state
    the action cannot change (409)."""
    vm = engine.show(vm_name(name))
    require_match(if_match, vm.to_dict(), f"VM {name}")
    if engine.busy(name):
        raise Busy(f"VM {name} is busy with another operation", hint="try again in a moment")
    if action == "delete":
        with call_options.per_call(lock_wait=0):  # busy is 423 at once, never a wait
            engine.check_delete(name, force=force)
    else:
        refuse_pointless(vm, action)


@router.get("", responses={200: INSTANCES}, response_model=None)
def list_instances(engine: EngineDep, _caller: Caller) -> list[dict[str, Any]]:
    return [vm.to_dict() for vm in engine.instances()]


@router.get("/{name}", responses={200: INSTANCE, 304: NOT_MODIFIED}, response_model=None)
def show_instance(name: str, request: Request, engine: EngineDep, _caller: Caller) -> Response:
    """The VM, with an ETag (If-None-Match: 304 when it has not changed)."""
    return tagged(request, engine.show(vm_name(name)).to_dict())


@router.post("", status_code=202, responses=ACCEPTED, response_model=None)
def create_instance(
    doc: VMDocument, request: Request, engine: EngineDep, caller: Caller, once: Idempotent
) -> Response:
    """Create a VM from a spec file's document (host file paths are refused)."""

    def answer() -> JSONResponse:
        name = doc.metadata.name
        try:
            engine.show(name)
        except NotFound:
            pass
        else:
            raise Conflict(f"VM {name} exists already", hint="choose another name")
        body = body_request(engine, doc)

        def work(progress: ProgressSink, cancel: CancelToken) -> Any:
            return engine.create(name, body, progress=progress, cancel=cancel).to_dict()

        return _accepted(request, caller, "create", name, work, may_cancel=True)

    return once.run(answer)


def _act(
    request: Request,
    engine: Engine,
    caller: TokenView,
    once: Once,
    name: str,
    action: str,
    if_match: str | None,
    work: Work,
    *,
    may_cancel: bool,
    force: bool = False,
) -> Response:
    """An action on an existing VM: checked now, done in an operation, answered once
    per Idempotency-Key."""

    def answer() -> JSONResponse:
        _existing(engine, name, action, if_match, force=force)
        return _accepted(request, caller, action, name, work, may_cancel=may_cancel)

    return once.run(answer)


@router.post("/{name}/start", status_code=202, responses=ACCEPTED, response_model=None)
def start_instance(
    name: str,
    request: Request,
    engine: EngineDep,
    caller: Caller,
    once: Idempotent,
    if_match: IfMatch = None,
) -> Response:
    def work(progress: ProgressSink, cancel: CancelToken) -> Any:
        return engine.start(name, progress=progress, cancel=cancel).to_dict()

    return _act(request, engine, caller, once, name, "start", if_match, work, may_cancel=True)


@router.post("/{name}/stop", status_code=202, responses=ACCEPTED, response_model=None)
def stop_instance(
    name: str,
    request: Request,
    engine: EngineDep,
    caller: Caller,
    once: Idempotent,
    if_match: IfMatch = None,
    force: bool = False,
) -> Response:
    """ACPI power button, then forced after the engine's timeout (``force``: at once)."""

    def work(_progress: ProgressSink, _cancel: CancelToken) -> Any:
        return engine.stop(name, force=force).to_dict()

    return _act(request, engine, caller, once, name, "stop", if_match, work, may_cancel=False)


@router.post("/{name}/restart", status_code=202, responses=ACCEPTED, response_model=None)
def restart_instance(
    name: str,
    request: Request,
    engine: EngineDep,
    caller: Caller,
    once: Idempotent,
    if_match: IfMatch = None,
    force: bool = False,
) -> Response:
    def work(progress: ProgressSink, cancel: CancelToken) -> Any:
        return engine.restart(name, force=force, progress=progress, cancel=cancel).to_dict()

    return _act(request, engine, caller, once, name, "restart", if_match, work, may_cancel=True)


@router.delete("/{name}", status_code=202, responses=ACCEPTED, response_model=None)
def delete_instance(
    name: str,
    request: Request,
    engine: EngineDep,
    caller: Caller,
    once: Idempotent,
    if_match: IfMatch = None,
    force: bool = False,
) -> Response:
    """Delete a VM; a running one only with ``force`` (409 otherwise)."""

    def work(_progress: ProgressSink, _cancel: CancelToken) -> Any:
        return engine.delete(name, force=force).to_dict()

    return _act(
        request, engine, caller, once, name, "delete", if_match, work,
        may_cancel=False, force=force,
    )  # fmt: skip
