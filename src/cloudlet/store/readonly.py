"""The state database opened read-only with the sqlite3 module: no SQLAlchemy, no write.

For the readers that must answer at once (shell completion, `list` and `show`): the
connection can neither change the database nor create it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, *, timeout: float) -> sqlite3.Connection:
    """A read-only connection to the database at ``path`` (sqlite3.Error when it cannot)."""
    # as_uri() escapes '?' and '#' in the state directory's path; ro: never a write
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=timeout)
