"""The state database: migrations and the revision shortcut."""

from __future__ import annotations

from pathlib import Path

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
