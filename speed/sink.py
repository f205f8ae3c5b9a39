"""The exactly-once sink of a speed query (its foreachBatch function): a micro-batch's partial view rows and
alert candidates are computed in Spark, merged with the stored rows, and written with the new alerts and the
batch id in one transaction (`speed_commits`). Spark replays an unfinished micro-batch with the same id, which
the sink then skips, so every event counts once."""

from __future__ import annotations

import functools
import json
import logging
import operator
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from sqlalchemy import select

from lambdaflow import store
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS, Parameters
from lambdaflow.views.spark import SPARK_VIEWS
from speed.alert_candidates import new_alerts, reading_alert_candidates, stored_baselines
from speed.alert_delivery import publish_alerts
from speed.alerts import Thresholds, reading_alerts, session_alerts
from speed.increments import combine_by_key
from speed.progress import count_stored_alerts
from speed.queries import ALERTS, query_name
from speed.view_writes import merge_view, write_view

log = logging.getLogger(__name__)


@dataclass
class SpeedSink:
    """foreachBatch function of a topic's query: merge one micro-batch into the store, exactly once."""

    settings: Settings
    contract: str
    parts: tuple[str, ...]
    checkpoint: Path
    _checkpoint_id: str | None = None

    @property
    def name(self) -> str:
        return query_name(self.contract)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        views = [part for part in self.parts if part in VIEWS]
        thresholds = Thresholds.from_settings(self.settings)
        engine = store.engine(self.settings.resolved_store_url)
        with engine.connect() as connection:
            baselines = stored_baselines(connection) if ALERTS in self.parts else {}
        batch.persist()
        try:
            partials = partial_rows(batch, views, Parameters.from_settings(self.settings))
            readings = reading_alert_candidates(batch, thresholds, baselines) if ALERTS in self.parts else []
        finally:
            batch.unpersist()
        spark_s = time.monotonic() - started
        checkpoint_id = self.checkpoint_id()
        commits = store.speed_commits
        # Read and merge first, write in one short transaction: only this query writes its views and commit
        # row, and SQLite has one writer for the whole store.
        with engine.connect() as connection:
            key = commits.c.query == self.checkpoint.name
            commit = connection.execute(select(commits).where(key)).first()
            if commit is not None and commit.checkpoint_id == checkpoint_id and batch_id <= commit.batch_id:
                log.info("%s batch %d: merged before, skipped (a replay)", self.name, batch_id)
                return
            # a new checkpoint's first batch starts at the topic's start: its views are rebuilt, not added to
            rebuild = batch_id == 0
            merged = {
                view: merge_view(connection, self.settings, view, rows, rebuild)
                for view, rows in partials.items()
                if rows
            }
            alerts = [alert for event in readings for alert in reading_alerts(event, thresholds, baselines)]
            for session in merged["sessions"].rows if "sessions" in merged else ():
                alerts += session_alerts(session, thresholds)
            new = new_alerts(connection, alerts)
        now = datetime.now(UTC)
        alert_rows = [alert.row(now) for alert in new]
        # Published before the commit: a crash in between re-sends these on replay (same ids) rather than
        # losing them. The topic is at least once, the store exactly once.
        publish_alerts(self.settings, alert_rows)
        with engine.begin() as connection:
            for view in views if rebuild else ():
                connection.execute(store.SPEED_TABLES[view].delete())
            for view, rows in merged.items():
                write_view(connection, view, rows, now)
            store.insert_new_rows(connection, store.alerts, alert_rows)
            commit_row = {"query": self.checkpoint.name, "checkpoint_id": checkpoint_id, "batch_id": batch_id,
                          "committed_at": now}  # fmt: skip
            store.upsert_rows(connection, commits, [commit_row])
        count_stored_alerts(self.name, alert_rows)
        log.info("%s batch %d: %s; %d new alerts in %.2f s (Spark %.2f s)", self.name, batch_id,
                 ", ".join(f"{len(done.rows)} {view} rows" for view, done in merged.items()) or "no rows",
                 len(new), time.monotonic() - started, spark_s)  # fmt: skip

    def checkpoint_id(self) -> str:
        """The query id Spark keeps in the checkpoint (a new checkpoint, a new id)."""
        if self._checkpoint_id is None:
            metadata = (self.checkpoint / "metadata").read_text().splitlines()[0]
            self._checkpoint_id = json.loads(metadata)["id"]
        return self._checkpoint_id


def partial_rows(
    batch: DataFrame, views: list[str], parameters: Parameters
) -> dict[str, list[dict[str, Any]]]:
    """Each view's partial rows of a micro-batch. The views rolled up from another view's per-window rows
    take them from one aggregation of the events, that view's partial rows carrying their inputs (which are
    its own partial rows too, when `views` has it): one Spark job for them all."""
    partials: dict[str, list[dict[str, Any]]] = {}
    for carrier, rolled_up in _rolled_up(views, parameters).items():
        inputs = functools.reduce(
            operator.add, (SPARK_VIEWS[view].partial_inputs(parameters) for view in rolled_up)
        )
        windows = SPARK_VIEWS[carrier].partial_windows(batch, parameters, inputs).toArrow()
        if carrier in views:
            partials[carrier] = windows.drop_columns(list(inputs.aggregates)).to_pylist()
        rows = windows.to_pylist()
        for view in rolled_up:
            definition = VIEWS[view]
            pieces = SPARK_VIEWS[view].partial_from_windows(rows, parameters)
            partials[view] = combine_by_key(definition.increment, definition.keys, pieces)
    for view in views:
        if view not in partials:
            partials[view] = SPARK_VIEWS[view].partial(batch, parameters).toArrow().to_pylist()
    return {view: partials[view] for view in views}


def _rolled_up(views: list[str], parameters: Parameters) -> dict[str, list[str]]:
    """The views whose partial rows are rolled up from another view's per-window rows (their definitions'
    `input_view`, with a Spark form for it), by that view (computed for them whether or not it is one of
    `views`)."""
    by_input: dict[str, list[str]] = {}
    for view in views:
        definition, spark_view = VIEWS[view], SPARK_VIEWS[view]
        input_view = definition.input_view
        if (
            input_view is not None
            and spark_view.partial_inputs is not None
            and spark_view.partial_from_windows is not None
            and SPARK_VIEWS[input_view].partial_windows is not None
            and definition.rolled_up_from(VIEWS[input_view], parameters)
        ):
            by_input.setdefault(input_view, []).append(view)
    return by_input
