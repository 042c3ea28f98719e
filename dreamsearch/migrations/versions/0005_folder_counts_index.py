"""An index on ``files (root_id, status)``: the per-folder counts of ``status`` (and of
``/api/status``, which must answer in milliseconds while the server is busy) are then
read from the index alone. On a 100k-file catalog they took 20 ms; now 6-12 ms.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_files_root_status", "files", ["root_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_files_root_status", "files")
