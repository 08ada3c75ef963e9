"""The schema revision this cloudlet writes, kept apart from SQLAlchemy and Alembic.

Opening the database compares against it before Alembic (slow to import) loads; the
read path (engine/read_model.py) reads a database only when it is at this revision.
A unit test keeps it equal to the migration scripts' head.
"""

HEAD_REVISION = "0301_api_events"
