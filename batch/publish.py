"""Publish a recomputed day from `lake/views/` into the serving store, in one transaction."""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select

from batch.recompute import BASELINES, LATE_EVENTS
from lambdaflow import store
from lambdaflow.lake import read_view_day
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS

log = logging.getLogger(__name__)


def _rows(settings: Settings, name: str, day: date) -> list[dict[str, Any]]:
    return read_view_day(settings.lake_dir, name, day).to_pylist()


def publish_batch_day(settings: Settings, day: date) -> datetime:
    """Replace day D's batch rows, advance the horizons to D+1 (never back) and drop the speed rows the
    batch rows now answer for; the baselines are replaced when D is the newest day they were computed for."""
    views = {name: _rows(settings, name, day) for name in VIEWS}
    late = _rows(settings, LATE_EVENTS, day)
    engine = store.connect(settings.resolved_store_url)
    computed_for = datetime.combine(day, datetime.min.time())
    with engine.connect() as connection:
        newest = connection.execute(select(func.max(store.baselines.c.computed_for))).scalar()
    baselines = None
    if newest is None or newest <= computed_for:
        baselines = [{**row, "computed_for": computed_for} for row in _rows(settings, BASELINES, day)]
    horizon = store.publish_day(engine, day, views, late, baselines)
    log.info("published %s: %s; horizon %s", day,
             ", ".join(f"{name} {len(rows)}" for name, rows in views.items()), horizon)  # fmt: skip
    engine.dispose()
    return horizon
