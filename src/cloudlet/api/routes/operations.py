"""/api/v1/operations: read, long-poll and cancel the API's operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cloudlet.api.auth import Caller
from cloudlet.api.etags import NOT_MODIFIED, tagged
from cloudlet.api.operations import MAX_WAIT, OperationRunner
from cloudlet.engine.operation_records import OperationView

router = APIRouter(prefix="/api/v1/operations", tags=["operations"])
OPERATION: dict[str, Any] = {"model": OperationView, "description": "the operation"}


def runner_of(request: Request) -> OperationRunner:
    runner: OperationRunner = request.app.state.runner
    return runner


@router.get("/{op_id}", responses={200: OPERATION, 304: NOT_MODIFIED}, response_model=None)
def get_operation(op_id: str, request: Request, _caller: Caller) -> Response:
    """The operation, with an ETag (If-None-Match: 304 when it has not changed)."""
    return tagged(request, runner_of(request).get(op_id).to_dict())


@router.get("/{op_id}/wait", responses={200: OPERATION})
def wait_operation(
    op_id: str,
    request: Request,
    _caller: Caller,
    timeout: Annotated[float, Query(ge=0, le=MAX_WAIT, description="seconds to wait")] = 30.0,
) -> dict[str, Any]:
    """The operation once it has finished, or as it is after ``timeout`` seconds."""
    return runner_of(request).wait(op_id, timeout).to_dict()


@router.delete("/{op_id}", responses={200: OPERATION})
def cancel_operation(op_id: str, request: Request, _caller: Caller) -> dict[str, Any]:
    """Cancel a running operation whose work allows it (409 otherwise)."""
    return runner_of(request).cancel(op_id).to_dict()
