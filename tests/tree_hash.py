"""A hash of a directory tree, for tests that prove a command changed nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_hash(root: Path) -> str:
    """Names, modes, contents and link targets of everything under ``root`` (SQLite's
    shared-memory index is left out: readers write it)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for entry in sorted(dirnames + filenames):
            path = Path(dirpath, entry)
            st = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{st.st_mode:o}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file() and not entry.endswith(".db-shm"):
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
