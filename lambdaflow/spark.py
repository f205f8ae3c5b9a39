"""The Spark session factory: every layer gets its session here, configured for event-time work in UTC."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from lambdaflow.settings import Settings
from lambdaflow.spark_jar import spark_jar

# The streaming application's fair-scheduler pools (`in_pool`): the speed queries' tasks before the archiver's
SCHEDULER_POOLS = Path(__file__).with_name("spark_pools.xml")
SPEED_POOL, ARCHIVE_POOL = "speed", "archive"
POOL_PROPERTY = "spark.scheduler.pool"

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
    from lambdaflow.kafka_source import offset_positions  # the Kafka clients, only where a stream runs

    progress = query.lastProgress
    if progress is None:
        return None
    found: dict[str, int] = {}
    for source in progress.get("sources", []):
        found.update(offset_positions(source.get("endOffset")))
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

# The parallel collector: batch jobs want throughput; G1's shorter pauses matter only to the streaming app.
# On 2 cores the JIT compilers take much of a batch job's CPU, so batch JVMs compile only methods 3x hotter.
# The streaming app compiles with C1 only: its C2 compiler threads never caught up with the code its queries
# keep generating, and took the cores its micro-batches wait for. Its code outgrows C1's default code cache,
# so it gets C2's size. Its threads get 16 MiB stacks (reserved, used only if needed): stopping a query
# interrupts its foreachBatch, and Spark tells that from a failure with a backtracking regex over the Python
# error's text (StreamExecution.PROXY_ERROR), which overflowed the default 1 MiB and killed the query's thread
# with a StackOverflowError instead of stopping it.
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
    """A local (or `spark_master`) session; `kafka_source` registers the Kafka data source (start-up time
    that a batch job, which reads only the lake, need not spend). `class_sharing` is the driver's
    class-data-sharing options: by default it maps the archive that `make venv` writes (see
    `lambdaflow.spark_classes`).
    `config`: more Spark settings, over these."""
    prepare_environment()
    derby_home = f"-Dderby.system.home={settings.data_dir.resolve()}"
    # A cluster's executors connect back to the driver: in a container, SPARK_LOCAL_HOSTNAME names the
    # driver's host on the cluster's network (docker-compose.yaml sets it); on one machine, loopback.
    driver_host = os.environ.get("SPARK_LOCAL_HOSTNAME") or "127.0.0.1"
    if class_sharing is None:
        class_sharing = archive_java_options()
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.driver.memory", driver_memory or settings.spark_driver_memory)
        .config("spark.driver.host", driver_host)
        .config("spark.driver.bindAddress", driver_host)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        # Coalescing a few large shuffle partitions into fewer makes big aggregations (millions of keys) run
        # out of memory, spill and fall back to sorting.
        .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # lower() by the JVM's case mapping, not ICU's, which builds a word-break iterator for every string;
        # the same for ASCII, and both layers clean with the same one
        .config("spark.sql.icu.caseMappings.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # not INT96: readable by pyarrow
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        # Streaming checkpoints (offsets and commits logs, state store files) are local. Spark's default
        # writer renames through Hadoop's FileContext, whose local file system, without Hadoop's native
        # library, checks every rename for symlinks by running `readlink` in a child process of the JVM; the
        # FileSystem-based writer renames with java.io.
        .config("spark.sql.streaming.checkpointFileManagerClass", FILE_SYSTEM_CHECKPOINTS)
        .config("spark.sql.warehouse.dir", str(settings.data_dir.resolve() / "spark-warehouse"))
        .config("spark.driver.extraJavaOptions", f"{derby_home} {jvm_tuning} {class_sharing}".strip())
        # A cluster's executors run the work local mode's one JVM runs, so they get its tuning and its class
        # archive (their class path is the driver's; the image has the archive at the same path). Local mode
        # starts no executor JVM and ignores this.
        .config("spark.executor.extraJavaOptions", f"{jvm_tuning} {archive_java_options()}".strip())
        .config("spark.jars", str(spark_jar()))  # lambdaflow's own Spark classes: the stream's dedupe
        # Streaming state (the dedupe's event ids, a watermark's worth: millions) is off the JVM heap in
        # RocksDB, which the dedupe's transformWithState requires. Spark's default store keeps every id on the
        # heap, where a sustained load drove the JVM into back-to-back garbage collection. RocksDB checkpoints
        # a micro-batch's changes and snapshots the whole state in the background.
        .config("spark.sql.streaming.stateStore.providerClass", ROCKSDB_STATE_STORE)
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        # Counting the state's rows costs a read before every write (one per new event id in the dedupe), so
        # it is off; the progress then reports no state row count.
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


@contextmanager
def in_pool(spark: SparkSession, pool: str) -> Iterator[None]:
    """Streaming queries started inside run their jobs in the scheduler `pool`: a query's thread inherits the
    local properties of the thread that starts it, and PySpark runs a foreachBatch function's calls on it."""
    context = spark.sparkContext
    context.setLocalProperty(POOL_PROPERTY, pool)
    try:
        yield
    finally:
        context.setLocalProperty(POOL_PROPERTY, None)  # type: ignore[arg-type]  # None removes it


def streaming_session(settings: Settings, app_name: str = "lambdaflow-stream") -> SparkSession:
    """A session for the streaming application: `stream_driver_memory`, and `stream_shuffle_partitions` for
    its stateful queries."""
    streaming_config = {
        "spark.sql.shuffle.partitions": str(settings.stream_shuffle_partitions),
        # micro-batches are cached for the few jobs that read them: compressing them cost more than it saved
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        # Every micro-batch builds its view DataFrames anew. With DataFrame debugging on (PySpark 4's
        # default), each PySpark function call also records its Python call site in the JVM, one more Py4J
        # round trip per call. Errors then lack the Python line in their query context. PySpark reads this
        # once per process, at the first DataFrame call, so it is set before the session starts.
        "spark.python.sql.dataFrameDebugging.enabled": "false",
        # Spark keeps its compiled code (whole-stage iterators, projections, predicates) in an LRU cache of
        # 100 classes by default. The app's queries cycle through more than that every second (and each
        # micro-batch compiles a new watermark predicate: the watermark is inlined as a literal), so the
        # cache missed nearly every time and Janino recompiled the same code over and over. With 1,000 entries
        # only the new watermark predicates are compiled.
        "spark.sql.codegen.cache.maxEntries": "1000",
        "spark.scheduler.mode": "FAIR",
        "spark.scheduler.allocation.file": str(SCHEDULER_POOLS),
    }
    return spark_session(
        settings, app_name, settings.stream_driver_memory, LOW_PAUSE_JVM, config=streaming_config
    )
