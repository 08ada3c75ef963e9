"""What a QEMU process is doing, from its runtime record: alive, and QMP's run state.

Apart from the driver so a reader (engine/read_model.py) asks the same question without
loading the launcher; QMP (asyncio) loads only when a process is alive to be asked.
"""

from __future__ import annotations

from cloudlet.driver.base import PowerState, RuntimeInfo
from cloudlet.errors import CloudletError
from cloudlet.host import processes

FAILED_STATES = {"internal-error", "guest-panicked", "io-error"}
# A saved or awaited memory state (migration) leaves the vCPUs stopped, like a pause.
PAUSED_STATES = {"paused", "suspended", "postmigrate", "inmigrate", "finish-migrate"}


def power_state(info: RuntimeInfo | None) -> PowerState:
    """The power state of the QEMU ``info`` records (ABSENT without a record)."""
    if info is None:
        return PowerState.ABSENT
    if not processes.is_alive(info.pid, info.pid_start):
        return PowerState.GONE
    from cloudlet.driver.qemu import qmp

    try:
        state = qmp.status(info.qmp_socket, timeout=5.0)
    except CloudletError:
        # Alive but the monitor is busy with another client: it still runs.
        return PowerState.RUNNING
    if state == "shutdown":
        return PowerState.SHUTDOWN
    if state in PAUSED_STATES:
        return PowerState.PAUSED
    if state == "io-error" and io_status(info) == "nospace":
        return PowerState.NO_SPACE
    if state in FAILED_STATES:
        return PowerState.FAILED
    return PowerState.RUNNING


def io_status(info: RuntimeInfo) -> str:
    """ "nospace" when a disk's last write failed for want of space ("ok", "failed")."""
    from cloudlet.driver.qemu import qmp

    try:
        blocks = qmp.execute(info.qmp_socket, "query-block", timeout=5.0)
    except CloudletError:
        return "unknown"
    statuses = {str(b.get("io-status", "ok")) for b in blocks}
    return "nospace" if "nospace" in statuses else ("failed" if "failed" in statuses else "ok")
