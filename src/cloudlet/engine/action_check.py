"""Whether an action can change a VM in its present state, asked before work is queued.

A server answers an action it will run later (an operation) at once: an action the
VM's state makes pointless or refused is a Conflict (409) now, not an operation that
fails a moment later. The action itself checks again under the VM's lock. A delete is
checked by the engine's own ``check_delete`` (the rules delete applies), not here.
"""

from __future__ import annotations

from cloudlet.engine.views import InstanceView
from cloudlet.errors import Conflict
from cloudlet.spec.states import STARTABLE_STATES, VMState


def refuse_pointless(vm: InstanceView, action: str) -> None:
    """Raise Conflict when ``action`` (start, stop, restart) cannot apply now."""
    state = vm.state
    if action == "start" and state not in STARTABLE_STATES:
        raise Conflict(f"{vm.name} is {state}", hint="only a stopped VM starts")
    if action == "stop" and state not in (VMState.RUNNING, VMState.PAUSED):
        raise Conflict(f"{vm.name} is {state}", hint="only a running or paused VM stops")
    if action == "restart" and state not in (VMState.RUNNING, VMState.PAUSED, *STARTABLE_STATES):
        raise Conflict(f"{vm.name} is {state}", hint="wait until it has settled and try again")
