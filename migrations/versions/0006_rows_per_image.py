"""A store for 100M images: 64-bit image ids everywhere, and one `predictions` row per image and
model (its classes and probabilities as arrays, by rank) instead of one per rank.

Existing rows are carried over: the predictions of each image are gathered in rank order, and every
image id column (and the change log's id arrays) widens in place.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# (table, column) of every image id; the change log holds arrays of them. An uploaded image's
# position is its id.
_ID_COLUMNS = (
    ("images", "id"),
    ("images", "position"),
    ("hash_codes", "image_id"),
    ("collection_images", "image_id"),
    ("image_files", "image_id"),
)


def upgrade() -> None:
    for table, column in _ID_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE bigint")
    op.execute("ALTER SEQUENCE images_id_seq AS bigint")
    op.execute("ALTER TABLE collection_changes ALTER COLUMN image_ids TYPE bigint[]")
    op.execute("""
        CREATE TABLE image_predictions (
            model text NOT NULL,
            image_id bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
            class_indices smallint[] NOT NULL,
            probabilities real[] NOT NULL,
            CONSTRAINT image_predictions_pkey PRIMARY KEY (model, image_id),
            CONSTRAINT image_predictions_ranks_check CHECK (
                cardinality(class_indices) = cardinality(probabilities) AND cardinality(class_indices) >= 1
                AND array_ndims(class_indices) = 1 AND array_ndims(probabilities) = 1
            )
        )
    """)
    op.execute("""
        INSERT INTO image_predictions (model, image_id, class_indices, probabilities)
        SELECT model, image_id, array_agg(class_index ORDER BY rank), array_agg(probability ORDER BY rank)
        FROM predictions GROUP BY model, image_id
    """)
    op.execute("DROP TABLE predictions")
    op.execute("ALTER TABLE image_predictions RENAME TO predictions")
    op.execute("ALTER TABLE predictions RENAME CONSTRAINT image_predictions_pkey TO predictions_pkey")
    op.execute("ALTER TABLE predictions RENAME CONSTRAINT image_predictions_ranks_check TO predictions_ranks_check")
    op.execute("ALTER TABLE predictions RENAME CONSTRAINT image_predictions_image_id_fkey TO predictions_image_id_fkey")


def downgrade() -> None:
    op.execute("""
        CREATE TABLE rank_predictions (
            model text NOT NULL,
            image_id integer NOT NULL,
            rank smallint NOT NULL,
            class_index smallint NOT NULL,
            probability real NOT NULL,
            PRIMARY KEY (model, image_id, rank)
        )
    """)
    op.execute("""
        INSERT INTO rank_predictions (model, image_id, rank, class_index, probability)
        SELECT p.model, p.image_id, t.ord - 1, t.class_index, t.probability
        FROM predictions p, unnest(p.class_indices, p.probabilities) WITH ORDINALITY AS t(class_index, probability, ord)
    """)
    op.execute("DROP TABLE predictions")
    op.execute("ALTER TABLE rank_predictions RENAME TO predictions")
    op.execute("ALTER TABLE predictions RENAME CONSTRAINT rank_predictions_pkey TO predictions_pkey")
    op.execute("ALTER TABLE collection_changes ALTER COLUMN image_ids TYPE integer[]")
    op.execute("ALTER SEQUENCE images_id_seq AS integer")
    for table, column in reversed(_ID_COLUMNS):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE integer")
    op.execute("ALTER TABLE predictions ADD CONSTRAINT predictions_image_id_fkey "
               "FOREIGN KEY (image_id) REFERENCES images (id) ON DELETE CASCADE")
