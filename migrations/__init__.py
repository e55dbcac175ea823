"""Alembic migrations: the only definition of the database schema."""
