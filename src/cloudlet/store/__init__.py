"""The state database: SQLAlchemy on SQLite (WAL) today, PostgreSQL for several hosts later."""
