"""The VM state machine: which request is allowed in which state."""

from __future__ import annotations

from enum import StrEnum


class VMState(StrEnum):
    CREATING = "creating"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    CRASHED = "crashed"
    ERROR = "error"
    DELETING = "deleting"


# States in which a QEMU process is expected to exist.
LIVE_STATES = frozenset({VMState.STARTING, VMState.RUNNING, VMState.PAUSED, VMState.STOPPING})
# States from which `start` may boot the VM.
STARTABLE_STATES = frozenset({VMState.STOPPED, VMState.CRASHED, VMState.ERROR})
# States whose vCPUs and memory count against host capacity.
CAPACITY_STATES = LIVE_STATES
