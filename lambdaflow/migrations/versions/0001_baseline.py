"""Baseline: the store as the release before migrations (commit ecd7be1) created it.

A frozen copy, not an import of `lambdaflow.store`: this revision must build the same tables whatever the
store becomes. A store that version made (no version table) is stamped here after the additive
differences of this schema are applied (stream_progress's lag columns, added late, were nullable).
The views' `speed_`/`batch_` tables are in no revision: they are derived from the view definitions and
synced after the revisions (see `lambdaflow.migrations`), so a view is named only where it is defined.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_TIME = DateTime()


def schema() -> MetaData:
    """Every table of the baseline store but the views' (see the module's docstring)."""
    metadata = MetaData()
    Table(
        "batch_late_events", metadata,
        Column("window_start", _TIME, primary_key=True),
        Column("topic", String(128), primary_key=True),
        Column("events", BigInteger, nullable=False),
        Column("late_events", BigInteger, nullable=False),
        Column("day", Date, nullable=False, index=True),
    )  # fmt: skip
    Table(
        "horizons", metadata,
        Column("view", String(64), primary_key=True),
        Column("horizon", _TIME, nullable=False),
    )  # fmt: skip
    Table(
        "quality_runs", metadata,
        Column("day", Date, primary_key=True),
        Column("suite", String(128), primary_key=True),
        Column("success", Boolean, nullable=False),
        Column("statistics", Text, nullable=False),
        Column("failed", Text, nullable=False),
        Column("link", String(1024)),
        Column("run_at", _TIME, nullable=False),
    )  # fmt: skip
    Table(
        "alerts", metadata,
        Column("alert_id", String(64), primary_key=True),
        Column("rule", String(32), nullable=False),
        Column("ts", _TIME, nullable=False, index=True),
        Column("subject", String(128), nullable=False),
        Column("value", Float, nullable=False),
        Column("threshold", Float, nullable=False),
        Column("event", Text, nullable=False),
        Column("created_at", _TIME, nullable=False),
    )  # fmt: skip
    Table(
        "stream_progress", metadata,
        Column("query", String(64), primary_key=True),
        Column("batch_id", BigInteger, nullable=False),
        Column("input_rows", BigInteger, nullable=False),
        Column("invalid_rows", BigInteger, nullable=False),
        Column("late_rows", BigInteger, nullable=False),
        Column("max_event_ts", _TIME),
        Column("watermark", _TIME),
        Column("updated_at", _TIME, nullable=False),
        Column("end_offsets", Text),
        Column("processed_offsets", Text),
        Column("lag_records", BigInteger),
        Column("progressed_at", _TIME),
        Column("input_rows_per_second", Float),
        Column("processed_rows_per_second", Float),
        Column("batch_duration_ms", BigInteger),
        Column("alerts_fired", Text),
    )  # fmt: skip
    Table(
        "speed_commits", metadata,
        Column("query", String(128), primary_key=True),
        Column("checkpoint_id", String(64), nullable=False),
        Column("batch_id", BigInteger, nullable=False),
        Column("committed_at", _TIME, nullable=False),
    )  # fmt: skip
    Table(
        "baselines", metadata,
        Column("sensor_id", String(128), primary_key=True),
        Column("hour_of_day", Integer, primary_key=True),
        Column("temperature_mean", Float, nullable=False),
        Column("temperature_std", Float, nullable=False),
        Column("samples", BigInteger, nullable=False),
        Column("computed_for", _TIME, nullable=False),
    )  # fmt: skip
    return metadata


def upgrade() -> None:
    schema().create_all(op.get_bind())


def downgrade() -> None:
    schema().drop_all(op.get_bind())
