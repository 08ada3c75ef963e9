"""Opening the database: SQLite in WAL mode, migrated to the newest schema on open."""

from __future__ import annotations

import atexit
import fcntl
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cloudlet.errors import CapacityExceeded
from cloudlet.store.revision import HEAD_REVISION as HEAD_REVISION

MIGRATIONS = Path(__file__).parent / "migrations"
# SQLite says "disk I/O error" (WAL files) or "database or disk is full" on ENOSPC.
_FULL_TEXTS = ("disk I/O error", "database or disk is full")
_NEARLY_FULL = 4 << 20


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _dispose(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is not None:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        has_table = conn.execute(
            text("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'")
        ).first()
        if not has_table:
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    return str(row[0]) if row else None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is already there)."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """A handle on the state database with short transactions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}", future=True)
        # Closed before the CLI's quick exit (cli/quick_exit.py), which skips the
        # teardown that used to close it: SQLite checkpoints its WAL on the last close.
        atexit.register(_dispose, weakref.ref(self.engine))
        event.listen(self.engine, "connect", _sqlite_pragmas)
        # Two processes opening a new database must not both run the migration.
        with open(path.with_suffix(".migrate.lock"), "w") as lock, self._full_disk():
            fcntl.flock(lock, fcntl.LOCK_EX)
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error."""
        with self._full_disk(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def _full_disk(self) -> Iterator[None]:
        """A clear error when SQLite failed because its file system is full."""
        try:
            yield
        except OperationalError as exc:
            free = shutil.disk_usage(self.path.parent).free
            if free >= _NEARLY_FULL or not any(t in str(exc.orig) for t in _FULL_TEXTS):
                raise
            raise CapacityExceeded(
                f"the state database {self.path} cannot be written: its file system is "
                f"full ({free >> 10} KiB free)",
                hint="free space there, then run the command again",
            ) from None

    def close(self) -> None:
        self.engine.dispose()
