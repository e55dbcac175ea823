"""The store: connections (an external PostgreSQL or the embedded server), migrations, and the SQL
of each table family, one module each (images, predictions, codes, norms, collections, changes)."""

from iwan.db.engine import DatabaseError, make_engine

__all__ = ["DatabaseError", "make_engine"]
