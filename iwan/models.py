"""SQLAlchemy models of the tables that the Alembic migrations create.

The migrations are the schema; these classes only describe it for queries. A test checks that
the two agree.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from pgvector.sqlalchemy import BIT, VECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from iwan.norms.usf import COLUMNS


class Base(DeclarativeBase):
    pass


class Source(Base):
    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    citation: Mapped[str | None] = mapped_column(sa.Text)
    checksum: Mapped[str] = mapped_column(sa.Text)
    n_files: Mapped[int]
    loaded_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )


class Word(Base):
    __tablename__ = "words"
    __table_args__ = (sa.Index("words_lower_word_key", sa.text("lower(word)"), unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    word: Mapped[str] = mapped_column(sa.Text)


_SQL_TYPES = {"bool": sa.Boolean, "int": sa.Integer, "real": sa.REAL, "text": sa.Text}

associations = sa.Table(
    "associations",
    Base.metadata,
    sa.Column(
        "source_id", sa.Integer, sa.ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("cue_id", sa.Integer, sa.ForeignKey("words.id"), primary_key=True),
    sa.Column("target_id", sa.Integer, sa.ForeignKey("words.id"), primary_key=True),
    *[sa.Column(c.field, _SQL_TYPES[c.kind]) for c in COLUMNS[2:]],
    sa.Index("associations_cue_strength_idx", "source_id", "cue_id", sa.text("fsg DESC NULLS LAST")),
    sa.Index("associations_target_idx", "source_id", "target_id"),
)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        sa.UniqueConstraint("dataset", "split", "index", name="images_dataset_split_index_key"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset: Mapped[str] = mapped_column(sa.Text)
    split: Mapped[str] = mapped_column(sa.Text)
    index: Mapped[int]
    fine_label: Mapped[int]
    coarse_label: Mapped[int | None]
    path: Mapped[str | None] = mapped_column(sa.Text)


class DatasetClass(Base):
    __tablename__ = "dataset_classes"
    __table_args__ = (
        sa.CheckConstraint(
            "granularity IN ('fine', 'coarse')", name="dataset_classes_granularity_check"
        ),
    )
    dataset: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    granularity: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    label: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)


class ClassifierClass(Base):
    __tablename__ = "classifier_classes"
    model: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    class_index: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)


class Prediction(Base):
    __tablename__ = "predictions"
    model: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    image_id: Mapped[int] = mapped_column(
        sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    class_index: Mapped[int] = mapped_column(sa.SmallInteger)
    probability: Mapped[float] = mapped_column(sa.REAL)


class HashCode(Base):
    __tablename__ = "hash_codes"
    model: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    image_id: Mapped[int] = mapped_column(
        sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    code: Mapped[str] = mapped_column(BIT(48))
    embedding = mapped_column(VECTOR(), nullable=False)
