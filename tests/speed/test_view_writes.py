"""The speed sink's merge and write of view rows on a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from lambdaflow import store
from lambdaflow.settings import load_settings
from speed.view_writes import merge_view, write_view
from tests.speed.test_increments import GAP_S, T0, part


def test_sessions_replaced_under_a_new_start_leave_no_stale_rows_in_the_store(tmp_path):
    """The speed sink's merge and write on a real SQLite store: partials bridging two stored sessions make one
    row under the earliest start; the other stored rows of that id are gone, other ids untouched."""
    settings = load_settings(data_dir=tmp_path, session_gap_seconds=GAP_S)
    engine = store.engine(settings.resolved_store_url)
    sessions = store.SPEED_TABLES["sessions"]

    def write(partials: list[dict]) -> None:
        with engine.connect() as connection:
            merge = merge_view(connection, settings, "sessions", partials)
        with engine.begin() as connection:
            write_view(connection, "sessions", merge, datetime.now(UTC))

    write([part("a", 40, 45, 2), part("a", 100, 110, 3), part("b", 40, 50, 1)])
    write([part("a", 10, 20, 1), part("a", 60, 80, 1)])  # moves a's start to 10, bridges 40-45 and 100-110
    with engine.connect() as connection:
        rows = connection.execute(select(sessions).order_by(sessions.c.session_id)).mappings().all()
    stored = [
        (r["session_id"], r["session_start"], r["session_end"], r["events"], r["duration_s"]) for r in rows
    ]
    naive = T0.replace(tzinfo=None)
    assert stored == [
        ("a", naive + timedelta(minutes=10), naive + timedelta(minutes=110), 7, 6000.0),
        ("b", naive + timedelta(minutes=40), naive + timedelta(minutes=50), 1, 600.0),
    ]
