"""Images of registered data sets, their class names, and classifier word predictions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("split", sa.Text, nullable=False),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("fine_label", sa.Integer, nullable=False),
        sa.Column("coarse_label", sa.Integer),
        sa.Column("path", sa.Text),
        sa.UniqueConstraint("dataset", "split", "index", name="images_dataset_split_index_key"),
    )
    op.create_table(
        "dataset_classes",
        sa.Column("dataset", sa.Text, primary_key=True),
        sa.Column("granularity", sa.Text, primary_key=True),
        sa.Column("label", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.CheckConstraint(
            "granularity IN ('fine', 'coarse')", name="dataset_classes_granularity_check"
        ),
    )
    op.create_table(
        "classifier_classes",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("class_index", sa.SmallInteger, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column(
            "image_id",
            sa.Integer,
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("rank", sa.SmallInteger, primary_key=True),
        sa.Column("class_index", sa.SmallInteger, nullable=False),
        sa.Column("probability", sa.REAL, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("classifier_classes")
    op.drop_table("dataset_classes")
    op.drop_table("images")
