"""Making a finished image directory visible in one step."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def publish(out: Path, dest: Path, work: Path, manifest: dict[str, Any]) -> None:
    """Write image.json into ``out``, then move it to ``dest`` with renames only.

    The image is never half visible; an older ``dest`` is moved into ``work``
    first, to be deleted with it.
    """
    (out / "image.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if dest.exists() or dest.is_symlink():
        os.rename(dest, work / "previous")
    os.rename(out, dest)
