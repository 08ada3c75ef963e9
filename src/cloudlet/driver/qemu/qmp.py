"""Short QMP conversations over the VM's unix socket, with timeouts.

Built on the ``qemu.qmp`` library. Each call connects, negotiates, runs one command
and disconnects, so any process (CLI, server) can talk to any VM without holding
the monitor.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from cloudlet.errors import CloudletError, Timeout


class MonitorError(CloudletError):
    """QEMU's monitor refused a command or could not be reached."""

    http_status = 502
    exit_code = 9
    code = "monitor_error"


async def _execute(path: Path, command: str, args: dict[str, Any] | None, timeout: float) -> Any:
    client = QMPClient("cloudlet")
    try:
        await asyncio.wait_for(client.connect(str(path)), timeout)
        return await asyncio.wait_for(client.execute(command, args), timeout)
    finally:
        await client.disconnect()


def execute(
    path: Path, command: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> Any:
    """Run one QMP command and return its result."""
    try:
        return asyncio.run(_execute(path, command, args, timeout))
    except ExecuteError as exc:
        raise MonitorError(f"QEMU refused {command}: {exc.error.error.desc}") from None
    except (ConnectError, OSError, EOFError, QMPError) as exc:
        raise MonitorError(
            f"cannot reach QEMU's monitor at {path}: {exc}", hint="is the VM running?"
        ) from None
    except TimeoutError:
        raise Timeout(f"QEMU's monitor did not answer {command} within {timeout:.0f} s") from None


def status(path: Path, *, timeout: float = 5.0) -> str:
    """QEMU's run state: "running", "paused", "shutdown", "prelaunch", ..."""
    result = execute(path, "query-status", timeout=timeout)
    return str(result["status"])
