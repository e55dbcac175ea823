"""An image's place in its data set split is its position: `images.index` becomes `images.position`
("index" means a searchable structure everywhere else).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("images", "index", new_column_name="position")
    op.execute("ALTER TABLE images RENAME CONSTRAINT images_dataset_split_index_key TO images_dataset_split_position_key")


def downgrade() -> None:
    op.execute("ALTER TABLE images RENAME CONSTRAINT images_dataset_split_position_key TO images_dataset_split_index_key")
    op.alter_column("images", "position", new_column_name="index")
