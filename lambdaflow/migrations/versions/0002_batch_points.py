"""The API's points of each subject's published day (`batch_points`), so a published day is answered by
copying them. The store's upgrade makes them for the days published before (`store.derive_points`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import Column, Date, LargeBinary, String, inspect

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # SQLite runs DDL outside the upgrade's transaction: a failed upgrade may have left the table
    if inspect(op.get_bind()).has_table("batch_points"):
        return
    op.create_table(
        "batch_points",
        Column("view", String(64), primary_key=True),
        Column("subject", String(128), primary_key=True),
        Column("day", Date, primary_key=True),
        Column("points", LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("batch_points")
