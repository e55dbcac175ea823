"""Alembic environment: runs against the engine that iwan.db.migrate hands over.

All pending migrations run in ONE transaction: PostgreSQL rolls DDL back, so an upgrade (or
downgrade) that fails midway leaves the schema exactly as it was before the command.
"""

from alembic import context

from iwan.db.engine import make_engine

config = context.config
engine = config.attributes.get("engine") or make_engine()

with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
