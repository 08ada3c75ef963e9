"""The runtime record: a JSON file per running VM so any process can re-adopt it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from cloudlet.driver.base import RuntimeInfo

RECORD_NAME = "runtime.json"


def write_record(runtime_dir: Path, info: RuntimeInfo) -> None:
    """Write atomically (temp file + rename): a reader never sees half a record."""
    data = asdict(info)
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
    path = runtime_dir / RECORD_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in ("qmp_socket", "agent_socket", "console_socket", "serial_log"):
        data[key] = Path(data[key])
    return RuntimeInfo(**data)
