"""Catalog identity and a digest chain over the vector log, so a FAISS index can prove
which catalog state it was built from.

- ``catalog_info``: key/value facts about the catalog; ``catalog_id`` is a random id made
  once, so an index built for a deleted and re-created catalog is never reused.
- ``vector_log.chain``: per model, ``sha256(previous chain, op, content id, content hash)``.
  An index records the chain value at its log position; a catalog restored from an older
  copy (same id, same seq numbers, other vectors behind them) no longer matches.

Existing log entries are chained in ``seq`` order; contents already deleted contribute an
empty hash (the value only has to be reproducible, and every old index is rebuilt anyway
because the index format changed with this revision).

Revision ID: 0003
Revises: 0002
"""

import uuid

import sqlalchemy as sa
from alembic import op

from dreamsearch.catalog.chain import next_chain

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_info",
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.String, nullable=False),
    )
    op.execute(
        sa.text("INSERT INTO catalog_info (key, value) VALUES ('catalog_id', :id)").bindparams(id=uuid.uuid4().hex)
    )
    with op.batch_alter_table("vector_log") as batch:
        batch.add_column(sa.Column("chain", sa.String, nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT l.seq, l.model_id, l.content_id, l.op, c.hash FROM vector_log l "
            "LEFT JOIN contents c ON c.id = l.content_id ORDER BY l.seq"
        )
    ).all()
    last: dict[int, str] = {}
    updates = []
    for seq, model_id, content_id, operation, content_hash in rows:
        last[model_id] = next_chain(last.get(model_id, ""), operation, content_id, content_hash or "")
        updates.append({"seq": seq, "chain": last[model_id]})
    if updates:
        connection.execute(sa.text("UPDATE vector_log SET chain = :chain WHERE seq = :seq"), updates)


def downgrade() -> None:
    with op.batch_alter_table("vector_log") as batch:
        batch.drop_column("chain")
    op.drop_table("catalog_info")
