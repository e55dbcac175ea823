"""Word association norms: sources, words, associations (USF Appendix A columns).

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Appendix A columns after CUE and TARGET, with their SQL types. Other norm sets (e.g. Small
# World of Words) fill `fsg`/`bsg` and leave the USF-specific columns NULL.
ASSOCIATION_COLUMNS = [
    ("normed", sa.Boolean),
    ("n_group", sa.Integer),
    ("n_produced", sa.Integer),
    ("fsg", sa.REAL),
    ("bsg", sa.REAL),
    ("msg", sa.REAL),
    ("osg", sa.REAL),
    ("n_mediators", sa.Integer),
    ("mmias", sa.Integer),
    ("n_overlaps", sa.Integer),
    ("omias", sa.Integer),
    ("qss", sa.Integer),
    ("qfr", sa.Integer),
    ("qcon", sa.REAL),
    ("qh", sa.Text),
    ("qps", sa.Text),
    ("qmc", sa.REAL),
    ("qpr", sa.REAL),
    ("qrsg", sa.REAL),
    ("quc", sa.Integer),
    ("tss", sa.Integer),
    ("tfr", sa.Integer),
    ("tcon", sa.REAL),
    ("th", sa.Text),
    ("tps", sa.Text),
    ("tmc", sa.REAL),
    ("tpr", sa.REAL),
    ("trsg", sa.REAL),
    ("tuc", sa.Integer),
]


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("citation", sa.Text),
        sa.Column("checksum", sa.Text, nullable=False),
        sa.Column("n_files", sa.Integer, nullable=False),
        sa.Column(
            "loaded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "words",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("word", sa.Text, nullable=False),
    )
    # One row per word whatever its case, so norm sets in different cases share words.
    op.create_index("words_lower_word_key", "words", [sa.text("lower(word)")], unique=True)
    op.create_table(
        "associations",
        sa.Column(
            "source_id",
            sa.Integer,
            sa.ForeignKey("sources.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("cue_id", sa.Integer, sa.ForeignKey("words.id"), primary_key=True),
        sa.Column("target_id", sa.Integer, sa.ForeignKey("words.id"), primary_key=True),
        *[sa.Column(name, type_) for name, type_ in ASSOCIATION_COLUMNS],
    )
    # The graph builder reads each cue's strongest targets; backward lookups go by target.
    op.create_index(
        "associations_cue_strength_idx",
        "associations",
        ["source_id", "cue_id", sa.text("fsg DESC NULLS LAST")],
    )
    op.create_index("associations_target_idx", "associations", ["source_id", "target_id"])


def downgrade() -> None:
    op.drop_table("associations")
    op.drop_table("words")
    op.drop_table("sources")
