"""Making a finished image directory visible in one step."""

from __future__ import annotations

import os
from pathlib import Path


def publish(out: Path, dest: Path, work: Path) -> None:
    """Move the finished image to ``dest`` with renames only (never half visible).

    An older ``dest`` is moved into ``work`` first, to be deleted with it.
    """
    if dest.exists() or dest.is_symlink():
        os.rename(dest, work / "previous")
    os.rename(out, dest)
