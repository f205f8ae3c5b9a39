"""The Spark session factory: every layer gets its session here, configured for event-time work in UTC."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from lambdaflow.settings import Settings
from lambdaflow.spark_jar import spark_jar

# lambdaflow.spark_classes writes it (`make venv`); in the virtualenv: it matches that install's jars
CLASS_ARCHIVE = Path(sys.prefix) / "spark-classes.jsa"


def archive_java_options(archive: Path = CLASS_ARCHIVE) -> str:
    """JVM options that map the class archive when it exists (a stale archive is ignored without a
    warning)."""
    return f"-XX:SharedArchiveFile={archive} -Xshare:auto -Xlog:cds*=off" if archive.is_file() else ""


def prepare_environment() -> None:
    """Environment Spark's JVM and Python workers need; must run before the first session starts."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # Workers import lambdaflow (the Kafka source, the contracts); make the project importable for them.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, paths)])


def trigger(once: bool, seconds: float) -> dict[str, object]:
    """`DataStreamWriter.trigger` arguments: everything available now then stop, or every `seconds`."""
    return {"availableNow": True} if once else {"processingTime": f"{seconds} seconds"}


class _MicroBatchEnds:
    """How many micro-batches of each query have run their foreachBatch function, for a stop to wait on."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._changed = threading.Condition()

    def count(self, query: str) -> int:
        with self._changed:
            return self._counts.get(query, 0)

    def ended(self, query: str) -> None:
        with self._changed:
            self._counts[query] = self._counts.get(query, 0) + 1
            self._changed.notify_all()

    def wait_past(self, query: str, count: int, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._counts.get(query, 0) > count, timeout_s)


_MICRO_BATCH_ENDS = _MicroBatchEnds()


def signalling_its_end(
    query: str, function: Callable[[DataFrame, int], None]
) -> Callable[[DataFrame, int], None]:
    """A foreachBatch function that tells `stop_between_micro_batches` when a micro-batch's work ends."""

    def run(batch: DataFrame, batch_id: int) -> None:
        try:
            function(batch, batch_id)
        finally:
            _MICRO_BATCH_ENDS.ended(query)

    return run


def stop_between_micro_batches(query: StreamingQuery, timeout_s: float = 60.0) -> None:
    """Stop a query when it runs no tasks: when it waits for its next trigger, or just after a micro-batch's
    foreachBatch function (`signalling_its_end`) returned. Stopping mid-batch cancels the batch's tasks (it is
    replayed on restart either way), and a PySpark worker whose task is cancelled prints a traceback ("PySpark
    daemon failed to flush the output"). A query that never pauses is stopped after `timeout_s` regardless."""
    ended = _MICRO_BATCH_ENDS.count(query.name)
    deadline = time.monotonic() + timeout_s
    while query.isActive and time.monotonic() < deadline:
        if not query.status["isTriggerActive"] or _MICRO_BATCH_ENDS.wait_past(query.name, ended, 0.05):
            break
    query.stop()


def failure_line(query: StreamingQuery) -> str:
    """One line for a failed query: the message of lambdaflow's own error where one is inside (written for
    users, e.g. the Kafka source's data loss), else the first line of Spark's report."""
    text = str(query.exception())
    own = re.findall(r"^lambdaflow\.[\w.]+?(\w+Error): (.+)$", text, flags=re.MULTILINE)
    if own:
        return own[-1][1]
    return next((line.strip() for line in text.splitlines() if line.strip()), "failed")


def processed_offsets(query: StreamingQuery) -> dict[str, int] | None:
    """The Kafka positions a query has processed (its last progress's end offsets); None before its first
    progress."""
    from lambdaflow.kafka_source import positions  # the Kafka clients, only where a stream runs

    progress = query.lastProgress
    if progress is None:
        return None
    found: dict[str, int] = {}
    for source in progress.get("sources", []):
        end = source.get("endOffset")
        if isinstance(end, str):  # the offset's JSON, as some sources report it
            end = json.loads(end) if end.startswith("{") else None
        if isinstance(end, dict):
            found.update(positions(end))
    return found


def records_left(query: StreamingQuery, ends: Mapping[str, int]) -> int | None:
    """How many records of the broker's `ends` the query has not processed yet (None: not known yet)."""
    done = processed_offsets(query)
    if done is None:
        return None
    return sum(max(0, end - done[key]) for key, end in ends.items() if key in done)


def drain(
    queries: list[StreamingQuery], ends: Mapping[str, int], timeout_s: float, interrupted: threading.Event
) -> dict[str, int | None]:
    """Let the running queries process the broker's records up to `ends` (taken when the stop was asked
    for), for at most `timeout_s` or until `interrupted`; then stop each between micro-batches. Returns the
    records each query left unprocessed (they resume from its checkpoint)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not interrupted.is_set():
        left = {query.name: records_left(query, ends) for query in queries if query.isActive}
        if all(count == 0 for count in left.values()):
            break
        interrupted.wait(0.2)
    left = {query.name: records_left(query, ends) for query in queries}
    for query in queries:
        if query.isActive:
            stop_between_micro_batches(query)
    return left


ROCKSDB_STATE_STORE = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
FILE_SYSTEM_CHECKPOINTS = (
    "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"
)

# Batch jobs want throughput: the parallel collector recomputed the 10M-event bench day 7–13 s faster than
# the JVM's default G1 in paired runs (e.g. 91 s vs 105 s). On 2 cores the JIT compilers took ~80 of the
# ~200 CPU-seconds of that recompute; compiling only methods 3x hotter than by default cut it to ~55 and the
# recompute by ~7 s (paired runs: 93.7 vs 86.4 s, 86.8 vs 79.8 s).
# The streaming app keeps G1 for shorter pauses and compiles with C1 only: at 5,000 events/s its C2 compiler
# threads never caught up (0.4–0.6 of the 2 cores minutes into the run, ~12,800 compilations in 30 s, most of
# them interim profiled tiers); with C1 alone they take 0.05. Its micro-batches got faster (IoT median 2.65
# and 2.19 s → 1.76 and 1.95 s, two paired runs) and draining a backlog stayed at ~30k events/s. C1's code
# heap is 48 MiB by default; the app's code grew to 54 MiB in 5 minutes, then levelled off: it gets C2's 240M.
# Its threads get 16 MiB stacks (reserved, used only if needed): stopping a query interrupts its foreachBatch,
# and Spark tells that from a failure with a backtracking regex over the Python error's text
# (StreamExecution.PROXY_ERROR), which overflowed the default 1 MiB and killed the query's thread with a
# StackOverflowError instead of stopping it.
THROUGHPUT_JVM = "-XX:+UseParallelGC -XX:CompileThresholdScaling=3"
LOW_PAUSE_JVM = "-XX:+UseG1GC -Xss16m -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"


def spark_session(
    settings: Settings,
    app_name: str = "lambdaflow",
    driver_memory: str | None = None,
    jvm_tuning: str = THROUGHPUT_JVM,
    kafka_source: bool = True,
    class_sharing: str | None = None,
    config: Mapping[str, str] | None = None,
) -> SparkSession:
    """A local (or `spark_master`) session; `kafka_source` registers the Kafka data source (~2 s that a
    batch job, which reads only the lake, does not spend). `class_sharing` is the driver's class-data-sharing
    options: by default it maps the archive that `make venv` writes (see `lambdaflow.spark_classes`).
    `config`: more Spark settings, over these."""
    prepare_environment()
    derby_home = f"-Dderby.system.home={settings.data_dir.resolve()}"
    if class_sharing is None:
        class_sharing = archive_java_options()
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.driver.memory", driver_memory or settings.spark_driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        # Coalescing a few large shuffle partitions into fewer made big aggregations (millions of keys) spill
        # and fall back to sorting: activity_stats of the 10M-event bench day took 13-22 s instead of 8-10.
        .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # lower() by the JVM's case mapping, not ICU's, which built a word-break iterator for every string
        # (~8 % of the streaming JVM's CPU); the same for ASCII, and both layers clean with the same one
        .config("spark.sql.icu.caseMappings.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # not INT96: readable by pyarrow
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        # Streaming checkpoints (offsets and commits logs, state store files) are local. Spark's default
        # writer renames through Hadoop's FileContext, whose local file system, without Hadoop's native
        # library, checks every rename for symlinks by running `readlink` in a child process of the JVM (44 of
        # the 58 processes the streaming JVM spawned in 8 s of micro-batches); the FileSystem-based writer
        # renames with java.io. A micro-batch's WAL and commit steps took ~12 ms each instead of ~45.
        .config("spark.sql.streaming.checkpointFileManagerClass", FILE_SYSTEM_CHECKPOINTS)
        .config("spark.sql.warehouse.dir", str(settings.data_dir.resolve() / "spark-warehouse"))
        .config("spark.driver.extraJavaOptions", f"{derby_home} {jvm_tuning} {class_sharing}".strip())
        .config("spark.jars", str(spark_jar()))  # lambdaflow's own Spark classes: the stream's dedupe
        # Streaming state (the dedupe's event ids, a watermark's worth: ~3M at 5,000 events/s) is off the JVM
        # heap in RocksDB, which the dedupe's transformWithState requires. Spark's default store kept every id
        # on the heap, and the JVM collapsed in garbage collection after 8-9 minutes at 5,000 events/s (two
        # runs). RocksDB checkpoints a micro-batch's changes and snapshots the whole state in the background.
        .config("spark.sql.streaming.stateStore.providerClass", ROCKSDB_STATE_STORE)
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        # Counting the state's rows costs a read before every write (one per new event id in the dedupe; three
        # while it kept a timer and a value per id). Draining 100k-event micro-batches went from 27,800 to
        # ~32,000 events/s without it; the progress then reports no state row count.
        .config("spark.sql.streaming.stateStore.rocksdb.trackTotalNumberOfRows", "false")
    )
    for key, value in (config or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    if kafka_source:
        from lambdaflow.kafka_source import KafkaDataSource

        session.dataSource.register(KafkaDataSource)
    return session


def streaming_session(settings: Settings, app_name: str = "lambdaflow-stream") -> SparkSession:
    """A session for the streaming application: `stream_driver_memory`, and `stream_shuffle_partitions` for
    its stateful queries."""
    streaming_config = {
        "spark.sql.shuffle.partitions": str(settings.stream_shuffle_partitions),
        # micro-batches are cached for the few jobs that read them: compressing them cost more than it saved
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        # Every micro-batch builds its view DataFrames anew. With DataFrame debugging on (PySpark 4's
        # default), each PySpark function call also records its Python call site in the JVM: ~200 of the ~490
        # Py4J round trips of an IoT micro-batch, ~0.3 ms each. Errors then lack the Python line in their
        # query context. PySpark reads this once per process, at the first DataFrame call, so it is set
        # before the session starts.
        "spark.python.sql.dataFrameDebugging.enabled": "false",
        # Spark keeps its compiled code (whole-stage iterators, projections, predicates) in an LRU cache of
        # 100 classes by default. The app's queries cycle through more than that every second (and each
        # micro-batch compiles a new watermark predicate: the watermark is inlined as a literal), so the
        # cache missed nearly every time: ~2,000 Janino compilations a minute at 5,000 events/s, ~15 of the
        # JVM's ~65 CPU-seconds a minute. With 1,000, ~100 a minute, mostly those predicates.
        "spark.sql.codegen.cache.maxEntries": "1000",
    }
    return spark_session(
        settings, app_name, settings.stream_driver_memory, LOW_PAUSE_JVM, config=streaming_config
    )
