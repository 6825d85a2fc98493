"""taints: ids never given again on SQLite

A taint is removed by id (``DELETE .../taints?taint=ID``, ``devassign host untaint --taint
ID``), and its row is deleted. SQLite gives a new row the largest id in the table plus one, so
the newest taint's id, once it was removed, went to the next taint: an id from an older listing
or event could remove another taint than the one it named. ``AUTOINCREMENT`` never gives an id
twice. PostgreSQL's sequence never did; nothing changes there.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import warnings

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _recreate(autoincrement=True)


def downgrade() -> None:
    _recreate(autoincrement=False)


def _recreate(*, autoincrement: bool) -> None:
    """The table copied into one made with (or without) AUTOINCREMENT, rows and indexes kept."""
    if op.get_bind().dialect.name != "sqlite":
        return
    with warnings.catch_warnings():
        # Reflecting the tables its foreign keys name reaches an expression index (0012),
        # which SQLAlchemy does not reflect; it is not touched.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        kwargs = {"sqlite_autoincrement": autoincrement}
        with op.batch_alter_table("taints", recreate="always", table_kwargs=kwargs):
            pass
