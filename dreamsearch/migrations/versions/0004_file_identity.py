"""What tells a file on disk apart and whether its failure can pass.

- ``files.inode``, ``files.device``, ``files.ctime_ns``: a file is unchanged only if its
  size, mtime, inode, device and ctime all match (an editor can restore size and mtime,
  nothing restores a ctime); and two paths with one (device, inode) are one file, never
  copies of each other. Rows from before this revision hold NULL: the next ``index``
  reads and hashes them once (no embedding when the bytes are the same) and stores all
  five; until then results check them on size and mtime as before.
- ``files.failure_kind`` (``permanent`` or ``transient``) and ``files.failed_runs`` (runs
  in a row that failed the same way): transient failures are retried. Existing failures
  are marked transient with no run counted, so each is tried again once.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("inode", sa.Integer, nullable=True))
        batch.add_column(sa.Column("device", sa.Integer, nullable=True))
        batch.add_column(sa.Column("ctime_ns", sa.Integer, nullable=True))
        batch.add_column(sa.Column("failure_kind", sa.String(9), nullable=True))
        batch.add_column(sa.Column("failed_runs", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE files SET failure_kind = 'transient' WHERE status = 'failed'")


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        for column in ("failed_runs", "failure_kind", "ctime_ns", "device", "inode"):
            batch.drop_column(column)
