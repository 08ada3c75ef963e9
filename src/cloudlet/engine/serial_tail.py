"""A VM's serial console log as a frontend shows it: all of it, or its last lines.

The log is kept in two parts (serial.log.1 then serial.log, see the serial pump); a
frontend asks for the VM's log by name and gets the bytes, never a path to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloudlet.engine.access import read_serial_log
from cloudlet.errors import InvalidInput


@dataclass(frozen=True)
class SerialLog:
    """The serial log of ``vm``; ``data`` is None when the VM was never started."""

    vm: str
    data: bytes | None

    @property
    def started(self) -> bool:
        return self.data is not None


def tail(vm: str, path: Path, lines: int | None = None) -> SerialLog:
    """The log at ``path`` (its older rotated part first), or only its last ``lines``
    lines, each ending in a newline."""
    if lines is not None and lines < 0:
        raise InvalidInput(f"cannot show {lines} lines", hint="give 0 or more lines")
    data = read_serial_log(path)
    if data is None or lines is None:
        return SerialLog(vm, data)
    kept = data.splitlines()[-lines:] if lines else []
    return SerialLog(vm, b"".join(line + b"\n" for line in kept))
