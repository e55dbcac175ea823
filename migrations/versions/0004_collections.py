"""Collections: named, searchable sets of images, the files of uploaded images, and the change log
that keeps every process serving a collection in step.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        # The data set split it started from; both NULL for an empty start.
        sa.Column("dataset", sa.Text),
        sa.Column("split", sa.Text),
        sa.Column("predictor", sa.Text, nullable=False),
        sa.Column("hash_model", sa.Text),
        sa.Column("top_iwk", sa.SmallInteger, nullable=False),
        sa.Column("top_wwk", sa.SmallInteger, nullable=False),
        sa.Column("strength", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("(dataset IS NULL) = (split IS NULL)", name="collections_split_check"),
    )
    op.create_table(
        "collection_images",
        sa.Column("collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_index("collection_images_image_idx", "collection_images", ["image_id"])
    # Uploaded images: their bytes live under IWAN_HOME named by sha256, never by the file's name.
    op.create_table(
        "image_files",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("media_type", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("label", sa.Text),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        # The same bytes are stored once per collection.
        sa.UniqueConstraint("collection_id", "sha256", name="image_files_collection_sha256_key"),
    )
    op.create_index("image_files_sha256_idx", "image_files", ["sha256"])
    op.create_table(
        "collection_changes",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=True),  # bigserial
        sa.Column("collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
        sa.Column("op", sa.Text, nullable=False),
        sa.Column("image_ids", ARRAY(sa.Integer), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("op IN ('add', 'remove')", name="collection_changes_op_check"),
    )
    op.create_index("collection_changes_collection_seq_idx", "collection_changes", ["collection_id", "seq"])


def downgrade() -> None:
    # Uploaded images mean nothing without their files' rows; their predictions and codes go too.
    op.execute("DELETE FROM images WHERE id IN (SELECT image_id FROM image_files)")
    op.drop_table("collection_changes")
    op.drop_table("image_files")
    op.drop_table("collection_images")
    op.drop_table("collections")
