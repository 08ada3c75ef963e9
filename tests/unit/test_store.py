"""The state database: migrations and the revision shortcut."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from cloudlet.store.database import HEAD_REVISION, MIGRATIONS, Database, current_revision


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


def test_new_database_is_migrated_to_head_and_reopens(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    assert current_revision(db.engine) == HEAD_REVISION
    db.close()
    again = Database(tmp_path / "state.db")
    with again.engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert mode == "wal"


def test_migrations_build_the_schema_the_models_describe(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cloudlet.store.models import Base

    db = Database(tmp_path / "state.db")
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_full_file_system_under_the_database_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import namedtuple

    from sqlalchemy.exc import OperationalError

    from cloudlet.errors import CapacityExceeded
    from cloudlet.store import database

    db = Database(tmp_path / "state.db")
    io_error = OperationalError("INSERT", {}, Exception("disk I/O error"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(database.shutil, "disk_usage", lambda _p: usage(10 << 20, 10 << 20, 0))
    with pytest.raises(CapacityExceeded, match=r"database .* is full"), db.session():
        raise io_error
    # with room to spare, the same text is some other trouble: passed on as it is
    monkeypatch.setattr(database.shutil, "disk_usage", lambda _p: usage(1 << 30, 0, 1 << 30))
    with pytest.raises(OperationalError), db.session():
        raise io_error
