"""The quality gates of the batch pipeline: validate a raw day, a recomputed day's views, and batch against
speed, with the checkpoints of the file context in `expectations/gx/`.

Each gate records its result in the store's `quality_runs` table (with a link to its Data Docs page, relative
to `<data dir>/quality/data_docs/`) and raises `QualityGateFailed`, naming the failing expectations, when a
critical expectation fails.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lambdaflow import store
from lambdaflow.lake import (
    RAW_SCHEMAS,
    READ,
    VALIDATED,
    DayInputs,
    list_day_inputs,
    read_day_inputs,
    read_view_day,
    write_day_inputs,
)
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS

log = logging.getLogger(__name__)
T = TypeVar("T")
CONTEXT_ROOT = Path(__file__).resolve().parent
CONTRACTS = ("iot_sensors", "user_activity")
RECONCILED_VIEWS = tuple(name for name, view in VIEWS.items() if view.reconciled)


class QualityGateFailed(RuntimeError):
    """A critical expectation failed: the step fails and nothing downstream (publishing) runs."""


@dataclass
class GateResult:
    suite: str
    day: date
    success: bool
    statistics: dict[str, Any]
    failed: list[dict[str, Any]] = field(default_factory=list)
    link: str | None = None

    @property
    def critical_failures(self) -> list[dict[str, Any]]:
        return [f for f in self.failed if f["critical"]]


def data_docs_dir(settings: Settings) -> Path:
    return settings.quality_dir / "data_docs"


def _context(settings: Settings) -> Any:
    os.environ["LAMBDAFLOW_QUALITY_DIR"] = str(settings.quality_dir)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints every pandas batch under HASH_THRESHOLD bytes by hashing all of its values, most of a
    # gate's time on a big day. The fingerprint is only a batch marker (nothing here reads it), so skip it.
    pandas_execution_engine.HASH_THRESHOLD = 0
    return gx.get_context(mode="file", project_root_dir=CONTEXT_ROOT)


def _describe(result: Any) -> dict[str, Any]:
    config = result.expectation_config
    outcome = result.result or {}
    return {
        "expectation": config.type,
        "kwargs": {k: v for k, v in config.kwargs.items() if k != "batch_id"},
        "critical": bool((config.meta or {}).get("critical", True)),
        "observed_value": outcome.get("observed_value"),
        "unexpected_count": outcome.get("unexpected_count"),
        "unexpected_percent": outcome.get("unexpected_percent"),
        "partial_unexpected_list": outcome.get("partial_unexpected_list"),
        "exception": (result.exception_info or {}).get("exception_message"),
    }


def run_gate(settings: Settings, suite: str, day: date, frame: pd.DataFrame,
             parameters: dict[str, Any] | None = None) -> GateResult:  # fmt: skip
    """Run a suite's checkpoint over a frame, record the result, and raise on a critical failure."""
    from great_expectations.core.run_identifier import RunIdentifier

    context = _context(settings)
    run_id = RunIdentifier(run_name=f"{suite}-{day}", run_time=datetime.now(UTC))
    outcome = context.checkpoints.get(suite).run(
        batch_parameters={"dataframe": frame}, expectation_parameters=parameters or {}, run_id=run_id
    )
    identifier, validation = next(iter(outcome.run_results.items()))
    failed = [_describe(result) for result in validation.results if not result.success]
    statistics = {k: v for k, v in validation.statistics.items()}
    statistics["rows"] = len(frame)
    link = None
    urls = context.get_docs_sites_urls(resource_identifier=identifier)
    if urls and urls[0].get("site_url"):
        page, docs = Path(urls[0]["site_url"].removeprefix("file://")), data_docs_dir(settings)
        link = str(page.relative_to(docs)) if page.is_relative_to(docs) else str(page)
    gate = GateResult(suite, day, not any(f["critical"] for f in failed), statistics, failed, link)
    engine = store.engine(settings.resolved_store_url)
    store.upsert(engine, store.quality_runs, [{
        "day": day, "suite": suite, "success": gate.success, "statistics": json.dumps(statistics),
        "failed": json.dumps(failed, default=str), "link": link, "run_at": datetime.now(UTC),
    }])  # fmt: skip
    engine.dispose()
    summary = f"{suite} {day}: {statistics['successful_expectations']}/{statistics['evaluated_expectations']}"
    if gate.critical_failures:
        for failure in gate.critical_failures:
            log.error("%s failed: %s %s observed=%s unexpected=%s (e.g. %s)", suite, failure["expectation"],
                      failure["kwargs"], failure["observed_value"], failure["unexpected_count"],
                      (failure["partial_unexpected_list"] or [])[:5])  # fmt: skip
        names = ", ".join(f"{f['expectation']}({f['kwargs'].get('column', f['kwargs'])})"
                          for f in gate.critical_failures)  # fmt: skip
        raise QualityGateFailed(f"quality gate {summary} passed; failing: {names}; Data Docs: {link}")
    log.info("quality gate %s passed (%d warnings)", summary, len(failed))
    return gate


def read_raw_day(settings: Settings, contract: str, day: date, inputs: DayInputs | None = None) -> pa.Table:
    """Every record of a raw day as archived (duplicates and Kafka coordinates included): the files of
    `inputs`, else those in the lake now."""
    return _read_raw_files(settings, contract, day, inputs)


def _read_raw_files(settings: Settings, contract: str, day: date, inputs: DayInputs | None,
                    columns: list[str] | None = None) -> pa.Table:  # fmt: skip
    topic = settings.topic_for(contract)
    inputs = inputs or list_day_inputs(settings.lake_dir, [topic], day)
    paths = [str(path) for path in inputs.paths(settings.lake_dir, topic)]
    schema = RAW_SCHEMAS[contract]
    if not paths:
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    return pq.read_table(paths, schema=schema, columns=columns)


def raw_day_frame(
    settings: Settings, contract: str, day: date, inputs: DayInputs | None = None
) -> pd.DataFrame:
    """A raw day as pandas, each `event_id` once (the lowest Kafka coordinates): what the batch reads.

    The dedupe runs in Arrow (a group-by on the id keeping the smallest coordinates) and only the columns the
    suite checks become pandas, rather than the whole day sorted and deduplicated in pandas.
    """
    import pyarrow.compute as pc

    table = read_raw_day(settings, contract, day, inputs)
    checked = [name for name in table.schema.names if not name.startswith("_")]
    # one Kafka topic per day directory: the coordinates order by (partition, offset)
    order = pc.sort_indices(table, sort_keys=[("_partition", "ascending"), ("_offset", "ascending")])
    table = table.select(checked).take(order)
    rows = pa.table({"event_id": table["event_id"], "row": pa.array(np.arange(table.num_rows))})
    first = rows.group_by("event_id").aggregate([("row", "min")])["row_min"]
    deduplicated = table.take(pc.take(first, pc.sort_indices(first)))  # in Kafka order
    # strings stay Arrow-backed (pandas' "string[pyarrow]"): no Python str object per value
    return deduplicated.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


def per_contract(read: Callable[[str], T]) -> dict[str, T]:
    """`read` for every contract, in threads: Arrow's reads, sorts and group-bys release the GIL, so the
    topics overlap on two cores."""
    with ThreadPoolExecutor(len(CONTRACTS), thread_name_prefix="gate") as pool:
        return dict(zip(CONTRACTS, pool.map(read, CONTRACTS), strict=True))


def validate_raw_day(settings: Settings, day: date) -> list[GateResult]:
    """Gate 1: every raw topic of day D (keys, ranges, unique ids, row count within the expected band).

    Once it passes, it records the raw files it validated (`lambdaflow.lake.DayInputs`): the DAG's recompute
    that follows reads those, not the late events archived since."""
    band = {"min_rows": settings.quality_min_rows, "max_rows": settings.quality_max_rows}
    inputs = list_day_inputs(settings.lake_dir, [settings.topic_for(c) for c in CONTRACTS], day)
    frames = per_contract(lambda contract: raw_day_frame(settings, contract, day, inputs))
    results = [run_gate(settings, f"raw_{c}", day, frames.pop(c), band) for c in CONTRACTS]
    write_day_inputs(settings.lake_dir, inputs, VALIDATED)
    return results


def distinct_events(settings: Settings, contract: str, day: date, inputs: DayInputs | None = None) -> int:
    """The distinct events of a raw day's files (reads only the `event_id` column)."""
    import pyarrow.compute as pc

    ids = _read_raw_files(settings, contract, day, inputs, ["event_id"])["event_id"]
    return pc.count_distinct(ids).as_py()


def view_day_frame(settings: Settings, name: str, day: date) -> pd.DataFrame:
    return read_view_day(settings.lake_dir, name, day).to_pandas()


def validate_view_day(settings: Settings, day: date) -> list[GateResult]:
    """Gate 2: every recomputed view of day D (unique keys, values in range, events add up to the input: the
    raw files the recompute recorded it read)."""
    files = read_day_inputs(settings.lake_dir, day, READ)
    inputs = per_contract(lambda contract: distinct_events(settings, contract, day, files))
    return [run_gate(settings, f"view_{name}", day, view_day_frame(settings, name, day),
                     {"input_events": inputs[view.contract]})
            for name, view in VIEWS.items()]  # fmt: skip


def reconciliation_frame(settings: Settings, day: date) -> pd.DataFrame:
    """The windows of day D that both layers have, per view, with both counts and whether they differ."""
    from sqlalchemy import select

    engine = store.engine(settings.resolved_store_url)
    start = datetime.combine(day, datetime.min.time())
    frames = []
    for name in RECONCILED_VIEWS:
        view = VIEWS[name]
        keys, count, time_column = list(view.keys), view.increment.count, view.time_column
        table = store.SPEED_TABLES[name]
        query = select(*[table.c[k] for k in keys], table.c[count].label("events")).where(
            table.c[time_column] >= start, table.c[time_column] < start + timedelta(days=1)
        )
        with engine.connect() as connection:
            speed = pd.DataFrame(connection.execute(query).mappings().all(), columns=[*keys, "events"])
        batch = view_day_frame(settings, name, day)[[*keys, count]].rename(columns={count: "events"})
        batch[time_column] = pd.to_datetime(batch[time_column], utc=True).dt.tz_localize(None)
        speed[time_column] = pd.to_datetime(speed[time_column])
        both = batch.merge(speed, on=keys, suffixes=("_batch", "_speed"))
        frames.append(pd.DataFrame({
            "view": name, "window_start": both[time_column],
            "events_batch": both["events_batch"], "events_speed": both["events_speed"],
            "counts_differ": both["events_batch"] != both["events_speed"],
        }))  # fmt: skip
    engine.dispose()
    return pd.concat(frames, ignore_index=True)


def reconcile_day(settings: Settings, day: date) -> GateResult:
    """Gate 3: batch against speed for the same windows; the share that differs stays under the threshold."""
    frame = reconciliation_frame(settings, day)
    return run_gate(settings, "reconcile", day, frame, {"mostly": 1 - settings.reconcile_max_mismatch})


def build_data_docs(settings: Settings) -> Path:
    """Rebuild the Data Docs site; returns its index page."""
    context = _context(settings)
    context.build_data_docs()
    return data_docs_dir(settings) / "index.html"
