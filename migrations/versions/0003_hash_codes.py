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


def upgrade() -> None:
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
