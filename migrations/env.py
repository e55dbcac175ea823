"""Alembic environment: runs against the engine that iwan.db.migrate hands over."""

from alembic import context

from iwan.db.engine import make_engine

config = context.config
engine = config.attributes.get("engine") or make_engine()

with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
