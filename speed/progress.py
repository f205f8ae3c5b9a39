"""The speed queries' progress, for `/health`, the metrics and the operator: a listener that writes each
query's progress to the store's `stream_progress` table (counts, event times, the processed and the broker's
end offsets and the lag between them, rates, and the alerts the sinks stored) and keeps probing the broker
while the queries run, and the streaming application's Prometheus endpoint that serves what it wrote."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pyspark.sql.streaming import StreamingQueryListener

from lambdaflow import store
from lambdaflow.kafka_source import offset_positions
from lambdaflow.pyspark_compat import progress_from_json
from lambdaflow.settings import Settings
from speed.source import INVALID_METRIC

log = logging.getLogger(__name__)


PROBE_SECONDS = 10.0  # how often the recorder asks the broker for its end offsets (Spark's idle interval)


# Alerts stored by the speed sinks of this process, by (query, rule): the recorder adds them to its rows.
_STORED_ALERTS: Counter[tuple[str, str]] = Counter()
_STORED_ALERTS_LOCK = threading.Lock()


def count_stored_alerts(query: str, rows: list[dict[str, Any]]) -> None:
    with _STORED_ALERTS_LOCK:
        _STORED_ALERTS.update((query, row["rule"]) for row in rows)


def stored_alert_counts() -> dict[str, Counter[str]]:
    """The alerts stored so far in this process, by query and rule."""
    by_query: dict[str, Counter[str]] = {}
    with _STORED_ALERTS_LOCK:
        for (query, rule), count in _STORED_ALERTS.items():
            by_query.setdefault(query, Counter())[rule] = count
    return by_query


@progress_from_json
class ProgressRecorder(StreamingQueryListener):
    """Writes each query's progress to the store's `stream_progress` table: the last batch, its input rows,
    the invalid records, the rows dropped behind the watermark and the alerts stored (all three cumulative),
    the max event time and the watermark, the processed and the broker's end offsets and the lag between them,
    the input and processing rates and the micro-batch's duration.

    A query reports after each micro-batch and, when idle, every 10 s (Spark's idle event, which carries no
    progress). With `end_offsets` (the broker's, by `topic:partition`) the recorder also probes the broker
    every `probe_seconds` and reports each running query with the new end offsets, even while a micro-batch
    runs: so `/health` tells a stalled query (lag, offsets not moving) from a stream that is gone (no report).
    Spark's own `latestOffset` (our source's `reportLatestOffset`) is used where a source reports it."""

    def __init__(
        self,
        store_url: str,
        end_offsets: Callable[[list[str]], dict[str, int]] | None = None,
        probe_seconds: float = PROBE_SECONDS,
    ) -> None:
        self.store_url = store_url
        self.end_offsets = end_offsets
        self.probe_seconds = probe_seconds
        self.rows: dict[str, dict[str, Any]] = {}  # the last row written per query (the stream's metrics)
        self._names: dict[str, str] = {}  # query id -> name: an idle event carries only the id
        self._running: set[str] = set()
        self._ends: dict[str, int] = {}  # the broker's end offsets, as last probed
        self._fired_before = stored_alert_counts()  # the earlier recorders' (tests share a process)
        self._fired_seen: dict[str, Counter[str]] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._prober: threading.Thread | None = None

    def start(self) -> None:
        """Start probing the broker (with `end_offsets`)."""
        if self.end_offsets is not None and self._prober is None:
            self._prober = threading.Thread(target=self._probe_until_stopped, name="lambdaflow-lag-probe",
                                            daemon=True)  # fmt: skip
            self._prober.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._prober is not None:
            self._prober.join(timeout=30)
            self._prober = None
        close = getattr(self.end_offsets, "close", None)
        if close is not None:
            close()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for _, row in sorted(self.rows.items())]

    def onQueryStarted(self, event: Any) -> None:
        try:
            with self._lock:
                name = event.name or str(event.id)
                self._names[str(event.id)] = name
                self._running.add(name)
                # a restarted query with nothing new to read runs no micro-batch: its stored row lets the
                # broker probe report it (alive, its lag) until it has progress of its own
                stored = self._stored(name) if name not in self.rows else None
                if stored is not None:
                    self.rows[name] = stored
        except Exception as exc:  # progress is reporting: it must never disturb the queries
            log.warning("could not read the stored progress of %s: %s", event.id, exc)

    def onQueryIdle(self, event: Any) -> None:
        try:
            with self._lock:
                name = self._names.get(str(event.id))
                if name is not None and name in self.rows:
                    self._report(name, idle=True)
        except Exception as exc:  # progress is reporting: it must never disturb the queries
            log.warning("could not record that %s is idle: %s", event.id, exc)

    def onQueryTerminated(self, event: Any) -> None:
        with self._lock:
            self._running.discard(self._names.get(str(event.id), str(event.id)))

    def onQueryProgress(self, event: Any) -> None:
        try:
            self._record(event.progress)
        except Exception as exc:  # progress is reporting: it must never disturb the queries
            log.warning("could not record the progress of %s: %s", event.progress.name, exc)

    def _record(self, progress: Any) -> None:
        name = progress.name or str(progress.id)
        state = [(operator.numRowsTotal, operator.memoryUsedBytes) for operator in progress.stateOperators]
        log.debug("%s batch %d: %d rows, durations (ms) %s, state (rows, bytes) %s", name, progress.batchId,
                  progress.numInputRows, progress.durationMs, state)  # fmt: skip
        dropped = sum(operator.numRowsDroppedByWatermark for operator in progress.stateOperators)
        observed = (progress.observedMetrics or {}).get(INVALID_METRIC)
        invalid = (observed["invalid_rows"] if observed is not None else None) or 0
        processed: dict[str, int] = {}
        reported: dict[str, int] = {}
        for source in progress.sources:
            processed.update(offset_positions(source.endOffset))
            reported.update(offset_positions(source.latestOffset))
        with self._lock:
            self._names[str(progress.id)] = name
            self._running.add(name)
            # continue counts and times across restarts and idle batches
            previous = self.rows.get(name) or self._stored(name)
            event_time = progress.eventTime or {}
            max_event_ts = _parse_time(event_time.get("max"))
            if previous is not None and previous["max_event_ts"] is not None:
                max_event_ts = max(filter(None, [max_event_ts, previous["max_event_ts"]]))
            watermark = _parse_time(event_time.get("watermark"))
            if watermark is None and previous is not None:
                watermark = previous["watermark"]
            counted = previous is not None and progress.batchId <= previous["batch_id"]  # a repeated report
            late_rows = (previous["late_rows"] if previous else 0) + (0 if counted else dropped)
            invalid_rows = (previous["invalid_rows"] if previous else 0) + (0 if counted else invalid)
            fired = stored_alert_counts().get(name, Counter())
            new_alerts = fired - self._fired_seen.get(name, self._fired_before.get(name, Counter()))
            self._fired_seen[name] = fired
            alerts = Counter(json.loads(previous["alerts_fired"] or "{}") if previous else {}) + new_alerts
            self._ends.update(reported)
            moved = previous is None or offset_positions(previous["processed_offsets"]) != processed
            self._write(name, previous, processed, moved, {
                "batch_id": progress.batchId,
                "input_rows": progress.numInputRows,
                "invalid_rows": invalid_rows,
                "late_rows": late_rows,
                "max_event_ts": max_event_ts,
                "watermark": watermark,
                "input_rows_per_second": _finite(progress.inputRowsPerSecond),
                "processed_rows_per_second": _finite(progress.processedRowsPerSecond),
                "batch_duration_ms": (progress.durationMs or {}).get("triggerExecution"),
                "alerts_fired": json.dumps(dict(sorted(alerts.items()))),
            })  # fmt: skip
            if any(key not in self._ends for key in processed):
                self._wake.set()  # partitions not probed yet: probe now, not in up to `probe_seconds`

    def _report(self, name: str, idle: bool = False) -> None:
        """Report a query again with the end offsets known now (caller holds the lock)."""
        previous = self.rows[name]
        rates = {"input_rows_per_second": 0.0, "processed_rows_per_second": 0.0} if idle else {}
        self._write(name, previous, offset_positions(previous["processed_offsets"]), False, rates)

    def _write(
        self,
        name: str,
        previous: dict[str, Any] | None,
        processed: dict[str, int],
        moved: bool,
        values: dict[str, Any],
    ) -> None:
        """Write a query's row: `values` over the previous row's, with the offsets, lag and times of now."""
        now = datetime.now(UTC)
        ends = {key: max(offset, self._ends.get(key, offset)) for key, offset in processed.items()}
        lag = sum(ends[key] - offset for key, offset in processed.items())
        progressed_at = previous["progressed_at"] if previous is not None else None
        row = {
            **(previous or {}),
            **values,
            "query": name,
            "end_offsets": json.dumps(ends, sort_keys=True) if processed else None,
            "processed_offsets": json.dumps(processed, sort_keys=True) if processed else None,
            "lag_records": lag if processed else None,
            # a query with lag whose offsets have not moved since `progressed_at` is stalled
            "progressed_at": now if moved or lag == 0 or progressed_at is None else progressed_at,
            "updated_at": now,
        }
        self.rows[name] = row  # counted from here on even if the store refuses this write
        store.upsert(store.engine(self.store_url), store.stream_progress, [row])

    def _stored(self, name: str) -> dict[str, Any] | None:
        table = store.stream_progress
        with store.engine(self.store_url).connect() as connection:
            row = connection.execute(table.select().where(table.c.query == name)).mappings().first()
        if row is None:
            return None
        return {key: value.replace(tzinfo=UTC) if isinstance(value, datetime) else value  # stored naive UTC
                for key, value in row.items()}  # fmt: skip

    def probe(self) -> None:
        """Probe the broker's end offsets of the partitions the running queries read, and report each."""
        with self._lock:
            names = sorted(name for name in self._running if name in self.rows)
            keys = sorted(
                {key for name in names for key in offset_positions(self.rows[name]["processed_offsets"])}
            )
        if not keys or self.end_offsets is None:
            return
        ends = self.end_offsets(keys)
        with self._lock:
            self._ends.update(ends)
            for name in names:
                if name in self._running:
                    self._report(name)

    def _probe_until_stopped(self) -> None:
        failing = False
        while not self._stopping.is_set():
            self._wake.wait(self.probe_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.probe()
                failing = False
            except Exception as exc:  # the broker may be restarting: the queries will tell if it is gone
                if not failing:
                    log.warning("could not probe the broker's end offsets: %s", exc)
                failing = True


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def serve_stream_metrics(recorder: ProgressRecorder, settings: Settings) -> Any:
    """The streaming application's Prometheus endpoint on 127.0.0.1:`stream_metrics_port` (0: none): its
    queries' progress as the recorder last wrote it, the archiver's counts, and the driver's process. Returns
    the server (to `shutdown()`), or None. A taken port is logged, not fatal: metrics must not stop the
    stream."""
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    from lambdaflow.lake import archiver_status_path
    from lambdaflow.metrics import Families, archiver_metrics, progress_metrics

    port = settings.stream_metrics_port
    if not port:
        return None
    status_file = archiver_status_path(settings.data_dir)
    registry = CollectorRegistry()
    registry.register(Families(lambda: progress_metrics(recorder.snapshot()) + archiver_metrics(status_file)))
    ProcessCollector(registry=registry)
    try:
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        log.warning("no metrics endpoint: cannot listen on 127.0.0.1:%d (%s); set "
                    "LAMBDAFLOW_STREAM_METRICS_PORT", port, exc.strerror or exc)  # fmt: skip
        return None
    log.info("stream metrics on http://127.0.0.1:%d/metrics", port)
    return server


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
