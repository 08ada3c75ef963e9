"""The runtime record: a JSON file per running VM so any process can re-adopt it.

The record carries a format version, so that a VM keeps being adoptable after an
upgrade. Formats:

1. the first one, with no ``version`` field;
2. the same fields plus ``"version": 2``.

A record of a version this code knows is read; one of a newer version is not guessed
at: reading it raises RuntimeRecordUnknown, so nothing stops, kills or clears a VM
that a newer cloudlet runs. A damaged record (not JSON, fields missing or of the
wrong type) reads as no record, as it always did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cloudlet.driver.base import RuntimeInfo
from cloudlet.errors import RuntimeRecordUnknown

RECORD_NAME = "runtime.json"
RECORD_VERSION = 2
_PATHS = ("qmp_socket", "agent_socket", "console_socket", "serial_log")


def write_record(runtime_dir: Path, info: RuntimeInfo) -> None:
    """Write atomically (temp file + rename): a reader never sees half a record."""
    data: dict[str, Any] = {"version": RECORD_VERSION, **asdict(info)}
    for key, value in data.items():
        if isinstance(value, Path):
            data[key] = str(value)
    tmp = runtime_dir / f".{RECORD_NAME}.{os.getpid()}"
    # QEMU may add files to this directory (sticky): a link planted at the temp name
    # must not be written through, so the file is made new, never opened.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2))
    tmp.replace(runtime_dir / RECORD_NAME)


def read_record(runtime_dir: Path) -> RuntimeInfo | None:
    """The record in ``runtime_dir``: None when there is none or it is damaged.

    Raises RuntimeRecordUnknown for a record of a newer format than RECORD_VERSION.
    """
    try:
        data = json.loads((runtime_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    version = data.pop("version", 1)
    if not _is_int(version) or version < 1:
        return None
    if version > RECORD_VERSION:
        raise RuntimeRecordUnknown(
            f"VM {runtime_dir.name} has a runtime record of format {version}, newer than "
            f"this cloudlet reads (up to {RECORD_VERSION}); the VM is left as it is",
            hint="manage it with the newer cloudlet that started it, or upgrade this one",
        )
    return _parse(data)  # formats 1 and 2 hold the same fields


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_path(value: object) -> bool:
    return isinstance(value, str) and "\0" not in value and Path(value).is_absolute()


def _optional_int(value: object) -> bool:
    return value is None or _is_int(value)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "instance_id": lambda v: isinstance(v, str) and bool(v),
    "pid": lambda v: _is_int(v) and v > 0,
    "pid_start": lambda v: _is_int(v) and v >= 0,
    "argv": lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
    "qemu_version": lambda v: isinstance(v, str),
    **dict.fromkeys(_PATHS, _is_path),
    "started_at": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "accel": lambda v: isinstance(v, str),
    "net_helper_pid": _optional_int,
    "net_helper_start": _optional_int,
}
_REQUIRED = {
    f.name
    for f in dataclasses.fields(RuntimeInfo)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
}


def _parse(data: dict[str, Any]) -> RuntimeInfo | None:
    """The fields of a known format, each of its type, or None: nothing is guessed."""
    if not _REQUIRED <= data.keys() <= _CHECKS.keys():
        return None
    if not all(_CHECKS[key](value) for key, value in data.items()):
        return None
    for key in _PATHS:
        data[key] = Path(data[key])
    return RuntimeInfo(**data)
