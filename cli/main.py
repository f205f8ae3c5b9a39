"""The `lambdaflow` command line: the composition root that wires settings into the layers.

Layer modules are imported inside each command, so `lambdaflow --help` stays fast and a command only loads
what it runs. Every failure ends as one line on stderr, `lambdaflow: <message>`: exit code 2 for a bad
setting or usage, 1 for anything else; `-v` adds the traceback.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from lambdaflow.settings import Settings, SettingsError, load_settings

log = logging.getLogger("lambdaflow")
T = TypeVar("T")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "py4j", "pyspark"):
        # kafka-python logs every refused connection at ERROR; commands report failures in one line instead
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.CRITICAL)
    # Alembic logs its plugins as it is imported (store migrations); lambdaflow.migrations says what changed
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Airflow logs its configuration as `export`/`restore` load its Azure provider for the connection
    logging.getLogger("airflow").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"lambdaflow: {message}", err=True)
    sys.exit(code)


def _settings(**overrides: Any) -> Settings:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _one_line_errors(run: Callable[[], T], verbose: bool) -> T:
    """`run()`, with whatever it raises turned into one line on stderr and an exit code."""
    from kafka.errors import KafkaError

    from lambdaflow.broker import BrokerError

    try:
        return run()
    except (click.exceptions.Exit, click.Abort, click.exceptions.NoArgsIsHelpError):
        raise  # click's own exits, and `lambdaflow` alone printing its help
    except click.ClickException as exc:
        if verbose:
            traceback.print_exc()
        where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "lambdaflow"
        _fail(f"{exc.format_message()} (see `{where} -h`)", exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        if isinstance(exc, SettingsError):
            _fail(str(exc), code=2)
        if isinstance(exc, KafkaError):
            _fail(f"Kafka: {_first_line(exc)} (is the broker running? LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS)")
        if isinstance(exc, BrokerError | OSError | ValueError):  # what a user can fix, said by its message
            _fail(_first_line(exc))
        _fail(f"{type(exc).__name__}: {_first_line(exc)}" + ("" if verbose else " (-v shows the traceback)"))


class CommandGroup(click.Group):
    """Parses and runs its commands within `_one_line_errors`, which knows the group's `--verbose`."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:  # fmt: skip
        parse = super().make_context
        # only the group's own options can fail here, before --verbose is known
        return _one_line_errors(lambda: parse(info_name, args, parent, **extra), verbose=False)

    def invoke(self, ctx: click.Context) -> Any:
        invoke = super().invoke
        return _one_line_errors(lambda: invoke(ctx), verbose=ctx.params["verbose"])


class FiniteFloat(click.FloatRange):
    """A number, optionally within a range, that is neither nan nor infinite: `FloatRange` alone lets nan
    through (it compares false with any bound), and an infinite rate or duration never ends."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class ReadableFile(click.Path):
    """An existing regular file the process may read: a directory fails on open, a FIFO or device blocks."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False, readable=True, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        if not stat.S_ISREG(os.stat(path).st_mode):
            self.fail(f"{click.format_filename(path)!r} is not a regular file", param, ctx)
        return path


class Instant(click.ParamType):
    """An ISO-8601 instant; without an offset it is UTC."""

    name = "instant"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_in_lake(moment: date | datetime, settings: Settings, option: str) -> None:
    """A usage error unless the lake can hold `moment`'s day, so a bad day stops before Spark starts."""
    from lambdaflow.lake import check_lake_day, check_lake_time

    watermark = timedelta(seconds=settings.watermark_seconds)
    try:
        if isinstance(moment, datetime):
            check_lake_time(moment, watermark)
        else:
            check_lake_day(moment, watermark)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, and a traceback with any error.")
def cli(verbose: bool) -> None:
    """lambdaflow: Kafka ingestion, a Spark speed layer, a Parquet lake, Airflow batch and Flask serving."""
    _configure_logging(verbose)


@cli.command()
@click.option("--host", help="Listen address [LAMBDAFLOW_BROKER_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="Listen port [LAMBDAFLOW_BROKER_PORT, default 9092].")
def broker(host: str | None, port: int | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) and create the topics; Ctrl-C stops it. Its data is
    kept under <data dir>/broker across restarts (LAMBDAFLOW_BROKER_STORAGE=memory: lost when it stops)."""
    from ingestion.topics import ensure_topics, topic_plan
    from lambdaflow.broker import EmbeddedBroker
    from lambdaflow.kafka import KafkaConnection

    settings = _settings(broker_host=host, broker_port=port)
    storage = settings.embedded_broker_storage
    embedded = EmbeddedBroker(settings.broker_host, settings.broker_port, storage=storage)
    started = time.monotonic()
    with embedded:
        plan = topic_plan(settings)
        created = ensure_topics(KafkaConnection(embedded.bootstrap_servers), plan)
        stop = _stop_requested()  # before the ready line: whoever waits for it may Ctrl-C at once
        log.info(
            "broker ready on %s in %.1f s; topics %s (created %s); storage %s — Ctrl-C to stop",
            embedded.bootstrap_servers, time.monotonic() - started,
            ", ".join(f"{name}[{parts}]" for name, parts in plan.items()), ", ".join(created) or "none",
            embedded.storage_description,
        )  # fmt: skip
        while not stop.wait(0.2) and embedded.failure() is None:
            pass
        failure = embedded.failure()
        if failure:
            _fail(failure)
    log.info("broker stopped")


def _stop_requested() -> threading.Event:
    """An event that the next SIGINT or SIGTERM sets, instead of raising KeyboardInterrupt or exiting."""
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    return stop


@cli.command()
def topics() -> None:
    """Create the event, dead-letter and alert topics on the configured Kafka (existing ones are kept)."""
    from ingestion.topics import ensure_topics, topic_plan
    from lambdaflow.kafka import KafkaConnection

    settings = _settings()
    created = ensure_topics(KafkaConnection.from_settings(settings), topic_plan(settings))
    click.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@cli.command()
@click.argument("kind", required=False, type=click.Choice(["iot", "activity"]))
@click.option(
    "--from-file",
    "from_file",
    type=ReadableFile(),
    help="Send each line of FILE as one record's value, byte for byte.",
)
@click.option("--topic", help="Target topic (default: the kind's topic; required with --from-file).")
@click.option(
    "--rate",
    type=FiniteFloat(min=0),
    help="Records per second; 0 sends as fast as possible [default: 100, with --from-file 0]. "
    "With --start it spaces the simulated event times and sending does not wait.",
)
@click.option("--count", type=click.IntRange(min=0), help="Stop after this many records.")
@click.option("--duration", type=FiniteFloat(min=0, min_open=True), help="Stop after this many seconds.")
@click.option(
    "--seed",
    type=int,
    help="Seed of the simulator and the faults, to reproduce a run [default: a fresh random seed, "
    "so event_ids never repeat across runs].",
)
@click.option("--sensors", type=click.IntRange(min=1), default=50, show_default=True, help="IoT sensors.")
@click.option("--users", type=click.IntRange(min=1), default=2000, show_default=True, help="Web users.")
@click.option(
    "--start",
    type=Instant(),
    help="Simulate event time from this ISO-8601 instant (UTC unless it has an offset) at --rate "
    "(default: wall clock).",
)
@click.option("--duplicates", type=FiniteFloat(0, 1), default=0.0, help="Fraction re-sent (same event_id).")
@click.option("--late", type=FiniteFloat(0, 1), default=0.0, help="Fraction later than the watermark.")
@click.option(
    "--out-of-order",
    type=FiniteFloat(0, 1),
    default=0.0,
    help="Fraction shifted back within the watermark.",
)
@click.option("--malformed", type=FiniteFloat(0, 1), default=0.0, help="Fraction breaking the contract.")
@click.option(
    "--history-days",
    type=click.IntRange(min=0, max=31),
    default=0,
    help="First send this many whole days of simulated history (the same simulator and faults, at a lower "
    "event density) in about LAMBDAFLOW_DEMO_HISTORY_SECONDS, unless the data directory's marker says the "
    "topic's history was sent; then produce live.",
)
@click.option(
    "--history-from",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The history's first day (UTC) [default: --history-days before today].",
)
def produce(
    kind: str | None, from_file: Path | None, topic: str | None, rate: float | None, count: int | None,
    duration: float | None, seed: int | None, sensors: int, users: int, start: datetime | None,
    duplicates: float, late: float, out_of_order: float, malformed: float, history_days: int,
    history_from: datetime | None,
) -> None:  # fmt: skip
    """Produce simulated IoT readings or user activity (KIND), or replay a file (--from-file)."""
    from ingestion.eventhubs import profile_from_env
    from ingestion.faults import FaultInjector, Faults
    from ingestion.producer import SendReport, file_records, make_producer, send_records
    from ingestion.simulators import ActivitySimulator, IotSimulator, simulated_clock, wall_clock
    from ingestion.topics import check_topic_exists
    from lambdaflow.kafka import KafkaConnection

    settings = _settings()
    if (kind is None) == (from_file is None):
        raise click.UsageError("give KIND (iot or activity) or --from-file FILE, not both")
    if from_file is not None and not topic:
        raise click.UsageError("--from-file needs --topic")
    if start is not None:
        _check_in_lake(start, settings, "--start")
    event_hub = profile_from_env()
    connection = event_hub.connection() if event_hub else KafkaConnection.from_settings(settings)
    if event_hub:
        topic = event_hub.hub_name
    topic = topic or (settings.topic_iot if kind == "iot" else settings.topic_activity)
    check_topic_exists(connection, topic)
    if event_hub:
        log.info("producing to Azure Event Hubs %r at %s", event_hub.hub_name, event_hub.namespace_host)
    if history_days and kind is None:
        raise click.UsageError("--history-days needs KIND (iot or activity)")
    faults = Faults(duplicates, late, out_of_order, malformed, timedelta(seconds=settings.watermark_seconds))
    if history_days:
        first_day = history_from.date() if history_from else None
        _send_history(settings, connection, topic, kind, history_days, first_day, faults)

    if from_file is not None:
        key_field = "sensor_id" if topic == settings.topic_iot else "session_id"
        records = file_records(from_file, key_field)
        report = SendReport(topic)
        pace = rate or 0.0
    else:
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        log.info("simulating %s with seed %d (pass --seed %d to reproduce)", kind, seed, seed)
        events_per_second = 100.0 if rate is None else rate
        simulator = (
            IotSimulator(seed=seed, sensors=sensors)
            if kind == "iot"
            else ActivitySimulator(
                seed=seed, users=users, concurrency=min(100_000, max(50, int(events_per_second * 20)))
            )
        )
        clock = simulated_clock(start, events_per_second or 1000.0) if start else wall_clock
        injector = FaultInjector(faults, seed)
        records = injector.apply(simulator.events(clock), simulator.key)
        report = SendReport(topic, faults=injector.counts)
        pace = 0.0 if start else events_per_second  # simulated history need not wait for the wall clock
    producer = make_producer(connection)
    try:
        send_records(producer, topic, records, rate=pace, count=count, duration_s=duration, report=report)
    finally:
        producer.close(timeout=10)
    click.echo(report.summary(), err=True)
    if report.failed:
        sys.exit(1)


def _send_history(settings: Settings, connection: Any, topic: str, kind: str, days: int,
                  first_day: date | None, faults: Any) -> None:  # fmt: skip
    """Send the topic's simulated history unless its marker is in the data directory; write the marker once
    every record is acknowledged, and fail (no marker) when any was not."""
    from ingestion.history import HistoryPlan, history_records, read_marker, write_marker
    from ingestion.producer import SendReport, make_producer, send_records

    marker = read_marker(settings.data_dir, topic)
    if marker is not None:
        log.info("%s: history of %d days from %s already sent (%d records); skipping it",
                 topic, marker.days, marker.first_day, marker.records)  # fmt: skip
        return
    today = datetime.now(UTC).date()
    plan = HistoryPlan(kind, first_day or today - timedelta(days=days), days, settings.demo_history_seconds)
    _check_in_lake(plan.end - timedelta(microseconds=1), settings, "--history-from")
    last = plan.day_list[-1]
    log.info("%s: %d days of history (%s … %s): publishing %d events at %.0f/s", topic, days,
             plan.first_day, last, plan.events, plan.send_rate)  # fmt: skip
    records, counts = history_records(plan, faults)
    report = SendReport(topic, faults=counts)
    producer = make_producer(connection)
    try:
        send_records(producer, topic, records, rate=plan.send_rate, report=report)
    finally:
        producer.close(timeout=10)
    click.echo(f"history {plan.first_day} … {last}: {report.summary()}", err=True)
    if report.failed:
        _fail(
            f"{topic}: {report.failed} history records were not sent; the next start sends the history again"
        )
    write_marker(settings.data_dir, topic, plan, report.sent)


def run_until_stopped(queries: list[Any], settings: Settings | None = None) -> None:
    """Wait until the streaming queries end (`--once`), one fails, or SIGINT/SIGTERM arrives. A signal drains:
    with `settings`, the queries first process what the broker holds then (for at most
    `stream_drain_seconds`; a second signal stops at once), then each stops between micro-batches and
    resumes from its checkpoint. The signals only set flags: a KeyboardInterrupt raised inside a py4j call
    broke the gateway's connection, and the queries could then not be stopped cleanly."""
    from lambdaflow.spark import stop_between_micro_batches

    stopping, at_once = threading.Event(), threading.Event()

    def request_stop(*_: Any) -> None:
        if stopping.is_set():
            at_once.set()
        stopping.set()

    previous = {number: signal.signal(number, request_stop) for number in _STOP_SIGNALS}
    try:
        while not stopping.wait(1.0):
            if not any(query.isActive for query in queries):
                break
            if any(query.exception() is not None for query in queries):
                break
        if stopping.is_set() and settings is not None and settings.stream_drain_seconds > 0:
            _drain(queries, settings, at_once)
        if stopping.is_set():
            names = ", ".join(query.name for query in queries)
            log.info("stopping the streaming queries (%s); they resume from their checkpoints", names)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    for query in queries:
        if query.isActive:
            stop_between_micro_batches(query)


def _drain(queries: list[Any], settings: Settings, at_once: threading.Event) -> None:
    from kafka.errors import KafkaError

    from lambdaflow.kafka import source_options
    from lambdaflow.kafka_source import broker_end_offsets
    from lambdaflow.spark import drain

    running = [query for query in queries if query.isActive]
    try:
        ends = broker_end_offsets(source_options(settings), list(settings.topics))
    except (KafkaError, OSError, ValueError) as exc:  # the broker is gone: nothing more to read from it
        log.warning("stopping without draining: the broker's end offsets are unknown (%s)", exc)
        return
    log.info("draining: %s process what the broker holds (at most %.0f s; a second Ctrl-C stops at once)",
             ", ".join(query.name for query in running), settings.stream_drain_seconds)  # fmt: skip
    left = drain(running, ends, settings.stream_drain_seconds, at_once)
    unfinished = {name: count for name, count in left.items() if count != 0}
    if unfinished:
        counts = ", ".join(
            f"{name} {'?' if count is None else f'{count:,}'}" for name, count in unfinished.items()
        )
        log.warning("drain timed out with records not yet processed (%s)", counts)
    else:
        log.info("drained: every query processed what the broker held")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@cli.command()
@click.option("--once", is_flag=True, help="Archive what is in the topics now, then exit (availableNow).")
def archive(once: bool) -> None:
    """Run the lake archiver: valid events to lake/raw, invalid records to lake/quarantine and dead_letter."""
    from ingestion.archiver import start_archiver, status_path
    from lambdaflow.spark import failure_line, spark_session

    settings = _settings()
    spark = spark_session(settings, "lambdaflow-archiver")
    query = start_archiver(spark, settings, once=once)
    log.info("archiver started (%s); lake at %s", "once" if once else "continuous", settings.lake_dir)
    run_until_stopped([query], settings)
    if query.exception() is not None:
        _fail(f"archiver failed: {failure_line(query)}")
    log.info("archiver stopped; status in %s", status_path(settings))


@cli.command()
@click.option("--once", is_flag=True, help="Process what is in the topics now, then exit (availableNow).")
@click.option("--only", help="Comma-separated parts to run: archiver, views, alerts (default: all).")
def stream(once: bool, only: str | None) -> None:
    """Run the streaming application: the lake archiver and the speed layer's view queries, one Spark app."""
    from ingestion.archiver import start_archiver
    from lambdaflow.kafka import KafkaConnection
    from lambdaflow.kafka_source import BrokerEndOffsets
    from lambdaflow.spark import failure_line, streaming_session
    from lambdaflow.views import VIEWS
    from speed.progress import ProgressRecorder, serve_stream_metrics
    from speed.streams import speed_queries, start_speed_query

    known = ["archiver", *VIEWS, "alerts"]
    selected = [name.strip() for name in only.split(",")] if only else known
    unknown = sorted(set(selected) - set(known))
    if unknown:
        raise click.BadParameter(
            f"unknown query {unknown}; choose from {', '.join(known)}", param_hint="'--only'"
        )
    settings = _settings()
    spark = streaming_session(settings)
    # the broker's end offsets besides Spark's progress: lag, and a stalled query told from a stopped stream
    end_offsets = BrokerEndOffsets(KafkaConnection.from_settings(settings))
    recorder = ProgressRecorder(settings.resolved_store_url, end_offsets)
    spark.streams.addListener(recorder)
    recorder.start()
    metrics = serve_stream_metrics(recorder, settings)
    queries = [start_archiver(spark, settings, once=once)] if "archiver" in selected else []
    for contract, parts in speed_queries(selected).items():  # one query per topic
        queries.append(start_speed_query(spark, settings, contract, parts, once=once))
    log.info("streaming %s (%s); store %s", ", ".join(selected), "once" if once else "continuous",
             settings.resolved_store_url)  # fmt: skip
    run_until_stopped(queries, settings)
    failed = [f"{q.name}: {failure_line(q)}" for q in queries if q.exception() is not None]
    spark.streams.removeListener(recorder)  # before the JVM outlives the Python callback server
    recorder.stop()
    if metrics is not None:
        metrics.shutdown()
    spark.stop()
    if failed:
        _fail("; ".join(failed))


@cli.command("batch")
@click.option("--date", "day", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="The UTC day to recompute (YYYY-MM-DD).")  # fmt: skip
@click.option("--publish", is_flag=True, help="Then publish it into the serving store (tables, horizon); "
              "refused unless the lake is complete for the day and holds raw events for it.")  # fmt: skip
@click.option("--force", is_flag=True, help="With --publish: publish even a day the lake is not complete "
              "for or holds no raw events for (the speed rows before D+1 go all the same).")  # fmt: skip
def batch_day(day: datetime, publish: bool, force: bool) -> None:
    """Recompute one day's exact views from the lake into lake/views (and optionally publish them)."""
    from batch.publish import check_publishable, publish_batch_day
    from batch.recompute import recompute_day
    from lambdaflow.spark import spark_session

    if force and not publish:
        raise click.UsageError("--force needs --publish")
    settings = _settings()
    _check_in_lake(day.date(), settings, "--date")
    if publish and not force:
        check_publishable(settings, day.date())  # a refused publish starts no Spark
    spark = spark_session(settings, "lambdaflow-batch", kafka_source=False)
    try:
        result = recompute_day(spark, settings, day.date())
    finally:
        spark.stop()
    click.echo(f"recomputed {result.day} in {result.seconds:.1f} s: "
               + ", ".join(f"{name} {rows:,}" for name, rows in result.rows.items()), err=True)  # fmt: skip
    if publish:
        horizon = publish_batch_day(settings, day.date(), force=force)
        click.echo(f"published {result.day}; horizon {horizon:%Y-%m-%d %H:%M} UTC", err=True)


@cli.command("export")
@click.option("--date", "day", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="The UTC day to copy (YYYY-MM-DD).")  # fmt: skip
def export_day(day: datetime) -> None:
    """Copy a day's raw partitions, quarantine, views and the Data Docs to Azure Blob Storage (the Airflow
    connection LAMBDAFLOW_AZURE_CONN_ID, container LAMBDAFLOW_AZURE_CONTAINER), its manifest last; files
    already there with the same MD5 are not sent again."""
    from batch.lake_backup import export_day as export

    settings = _settings()
    _check_in_lake(day.date(), settings, "--date")
    click.echo(export(settings, day.date()).summary("exported"), err=True)


@cli.command("restore")
@click.option("--date", "day", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="The UTC day to restore (YYYY-MM-DD).")  # fmt: skip
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path),
              help="The data directory to restore into [default: LAMBDAFLOW_DATA_DIR].")  # fmt: skip
def restore_day(day: datetime, to: Path | None) -> None:
    """Download a day's raw partitions and quarantine from Azure Blob Storage by its manifest, checking every
    MD5, into a lake; then `lambdaflow batch --date D` recomputes its views."""
    from batch.lake_backup import restore_day as restore

    settings = _settings()
    _check_in_lake(day.date(), settings, "--date")
    click.echo(restore(settings, day.date(), to).summary("restored"), err=True)


@cli.command()
@click.option("--host", help="Listen address [LAMBDAFLOW_SERVE_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="Listen port [LAMBDAFLOW_SERVE_PORT, default 8000].")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API, the dashboard and the Data Docs (Granian); Ctrl-C stops it."""
    from sqlalchemy.exc import SQLAlchemyError

    from lambdaflow import store
    from lambdaflow.broker import check_port_free
    from serving.server import serve as run_server

    settings = _settings(serve_host=host, serve_port=port)
    try:
        store.engine(settings.resolved_store_url).dispose()
    except SQLAlchemyError as exc:
        _fail(f"the serving store is unreachable (LAMBDAFLOW_STORE_URL): {str(exc).splitlines()[0]}")
    check_port_free(settings.serve_host, settings.serve_port, hint="set --port or LAMBDAFLOW_SERVE_PORT")
    auth = "a bearer token" if settings.api_token else "no token (set LAMBDAFLOW_API_TOKEN to need one)"
    log.info("serving http://%s:%d/ (API /api/v1, docs /api/docs, health /health) with %s",
             settings.serve_host, settings.serve_port, auth)  # fmt: skip
    run_server(settings, settings.serve_host, settings.serve_port)


@cli.command()
@click.option(
    "--iot-rate",
    type=FiniteFloat(min=0),
    default=20.0,
    show_default=True,
    help="Demo IoT readings per second.",
)
@click.option(
    "--activity-rate",
    type=FiniteFloat(min=0),
    default=10.0,
    show_default=True,
    help="Demo user-activity events per second.",
)
@click.option("--demo/--no-demo", default=True, show_default=True,
              help="Run the demo producers (without them, produce your own events).")  # fmt: skip
def up(iot_rate: float, activity_rate: float, demo: bool) -> None:
    """Start the embedded stack with demo data (what `make run` does); Ctrl-C stops every part."""
    from cli.stack import AlreadyRunning, run_stack

    try:
        sys.exit(run_stack(_settings(), iot_rate, activity_rate, demo))
    except AlreadyRunning as exc:
        _fail(str(exc))


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask before deleting.")
def reset(yes: bool) -> None:
    """Empty the data directory (all but secrets/) so that `make run` starts afresh: the broker's topics and
    records go together with the checkpoints, lake, store and Airflow state that refer to their offsets."""
    from cli.reset import ResetRefused, check_resettable, reset_data_dir, reset_targets

    settings = _settings()
    try:
        check_resettable(settings)
        targets = reset_targets(settings)
        if not targets:
            click.echo(f"nothing to reset in {settings.data_dir.resolve()}", err=True)
            return
        if not yes:
            names = ", ".join(path.name for path in targets)
            click.confirm(f"delete {names} in {settings.data_dir.resolve()} (secrets/ stays)?", abort=True)
        removed = reset_data_dir(settings)
    except ResetRefused as exc:
        _fail(f"not reset: {exc}")
    click.echo(f"reset {settings.data_dir.resolve()}: removed {', '.join(p.name for p in removed)}", err=True)


@cli.group("store")
def store_group() -> None:
    """The serving store's schema (LAMBDAFLOW_STORE_URL); every process also upgrades it as it starts."""


@store_group.command("upgrade")
def store_upgrade() -> None:
    """Upgrade the store to the newest revision and the view tables to the view definitions."""
    from lambdaflow import migrations, store

    engine = store.engine(_settings().resolved_store_url)
    click.echo(f"store at revision {migrations.current(engine)}")


@store_group.command("current")
def store_current() -> None:
    """Print the store's revision (none: never migrated) and the newest one."""
    from lambdaflow import migrations, store

    engine = store.engine(_settings().resolved_store_url, upgrade=False)
    click.echo(f"store at revision {migrations.current(engine) or 'none'}, newest {migrations.head()}")


def main() -> None:
    cli(prog_name="lambdaflow")


if __name__ == "__main__":
    main()
