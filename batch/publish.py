"""Publish a recomputed day from `lake/views/` into the serving store, in one transaction, once the lake is
complete for it.

Publishing moves the horizon to D+1 and deletes every speed row before it, so a day the lake is not complete
for (today, a future day) or holds no raw events for would throw fresh speed rows away for nothing: the
publish check refuses those days. The DAG's lake sensor waits on the same completeness rule.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import func, select

from batch.recompute import BASELINES, LATE_EVENTS
from lambdaflow import store
from lambdaflow.lake import archiver_status_path, check_lake_day, day_dir, raw_dir, read_view_day
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS

log = logging.getLogger(__name__)


class PublishRefused(ValueError):
    """Publishing the day would delete speed rows that no batch row answers for; the message is one line."""


@dataclass(frozen=True)
class LakeCompleteness:
    """How far the lake is complete, against what day D needs."""

    until: datetime | None  # the smallest, over the topics, archived max event time; None: a topic has none
    needed: datetime  # the end of D plus the watermark: later events of D are late, the batch's to count

    @property
    def complete(self) -> bool:
        return self.until is not None and self.until >= self.needed


def lake_completeness(settings: Settings, day: date) -> LakeCompleteness:
    """The rule the DAG's sensor waits on and publishing checks: the archiver's max event time, on every
    event topic, has reached the end of day D plus the watermark."""
    day_end = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
    needed = day_end + timedelta(seconds=settings.watermark_seconds)
    path = archiver_status_path(settings.data_dir)
    if not path.exists():
        return LakeCompleteness(None, needed)
    topics = json.loads(path.read_text())["topics"]
    seen = [topics.get(topic, {}).get("max_event_ts") for topic in settings.topics]
    if not all(seen):
        return LakeCompleteness(None, needed)
    return LakeCompleteness(min(datetime.fromisoformat(value) for value in seen), needed)


def has_raw_events(settings: Settings, day: date) -> bool:
    """Whether any event topic's `lake/raw/<topic>/date=D/` holds a row; reads only the files' footers."""
    for topic in settings.topics:
        folder = day_dir(raw_dir(settings.lake_dir, topic), day)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            # readers skip hidden names: the archiver's temporary files
            if path.is_file() and not path.name.startswith(("_", ".")) and pq.read_metadata(path).num_rows:
                return True
    return False


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def check_publishable(settings: Settings, day: date) -> None:
    """Raise `PublishRefused` (one line) unless the lake is complete for day D and holds raw events for it."""
    check_lake_day(day, timedelta(seconds=settings.watermark_seconds))
    lake = lake_completeness(settings, day)
    rule = f"every topic's archived event time must reach {_utc(lake.needed)}"
    if lake.until is None:
        raise PublishRefused(f"cannot publish {day}: the archiver has not archived every topic yet ({rule})")
    if not lake.complete:
        raise PublishRefused(
            f"cannot publish {day}: the lake is complete only until {_utc(lake.until)} ({rule})"
        )
    if not has_raw_events(settings, day):
        raise PublishRefused(f"cannot publish {day}: the lake holds no raw events for {day}")


def _rows(settings: Settings, name: str, day: date) -> list[dict[str, Any]]:
    return read_view_day(settings.lake_dir, name, day).to_pylist()


def publish_batch_day(settings: Settings, day: date, force: bool = False) -> datetime:
    """Replace day D's batch rows, advance the horizons to D+1 (never back) and drop the speed rows the
    batch rows now answer for; the baselines are replaced when D is the newest day they were computed for.
    Unless `force`, a day `check_publishable` refuses raises `PublishRefused` and the store is not touched."""
    if not force:
        check_publishable(settings, day)
    views = {name: _rows(settings, name, day) for name in VIEWS}
    late = _rows(settings, LATE_EVENTS, day)
    engine = store.engine(settings.resolved_store_url)
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
