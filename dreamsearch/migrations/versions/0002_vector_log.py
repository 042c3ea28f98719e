"""Change log of vectors, so FAISS indexes catch up incrementally instead of rebuilding.

Existing vectors are logged as additions in (model, content) order, so an index built
after the upgrade sees every vector the library already held.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vector_log",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("content_id", sa.Integer, nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_vector_log_model_seq", "vector_log", ["model_id", "seq"])
    op.execute(
        "INSERT INTO vector_log (model_id, content_id, op) "
        "SELECT model_id, content_id, 'add' FROM vectors ORDER BY model_id, content_id"
    )


def downgrade() -> None:
    op.drop_table("vector_log")
