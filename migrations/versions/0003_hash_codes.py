"""Semantic hash codes (iwan.config.HASH_BITS bits) and embeddings per image and model, through pgvector.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import BIT, VECTOR

from iwan.config import HASH_BITS

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
# Checked by iwan.db.migrate before the first pending migration runs: a role that is no superuser
# (most managed services) can upgrade where an administrator has created these extensions.
required_extensions = ("vector",)


def upgrade() -> None:
    # No privilege is needed where the extension exists already: only create it where it is missing.
    if not op.get_bind().scalar(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")):
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "hash_codes",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column(
            "image_id",
            sa.Integer,
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("code", BIT(HASH_BITS), nullable=False),
        # No fixed dimension: it is the number of classes of the model's hierarchy.
        sa.Column("embedding", VECTOR(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hash_codes")
