"""A class-data-sharing archive of the classes Spark's driver JVM loads, so it starts faster.

A Spark driver loads tens of thousands of classes from the jars in the virtualenv; reading and verifying
them is a large part of its start-up and of the first run of each kind of job. The JVM can dump the
classes one run loaded into an archive (`-XX:ArchiveClassesAtExit`, JDK 13+) and map it into later runs
(`-XX:SharedArchiveFile`). `make venv` writes the archive once per install by running the batch views on a
few generated rows; every session started by `lambdaflow.spark` uses it. The JVM checks that the archive
matches its own build and class path and, if not (another JDK, reinstalled jars), starts without it.

`python -m lambdaflow.spark_classes` writes the archive.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.types import DataType

from lambdaflow.pyspark_compat import driver_process, jvm
from lambdaflow.spark import CLASS_ARCHIVE, spark_session

log = logging.getLogger(__name__)


def write_archive(archive: Path = CLASS_ARCHIVE) -> Path:
    """Start a driver that dumps its classes at exit, run the batch views on generated rows, and exit it."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from lambdaflow.lake import RAW_SCHEMAS
    from lambdaflow.settings import load_settings
    from lambdaflow.views import VIEWS, Parameters
    from lambdaflow.views.spark import SPARK_VIEWS, clean, dedupe_exact

    partial = archive.with_name(f".{archive.name}.tmp")
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="lambdaflow-classes-") as temporary:
        settings = load_settings(data_dir=Path(temporary))
        dump = f"-XX:ArchiveClassesAtExit={partial} -Xlog:cds*=error"
        spark = spark_session(settings, "lambdaflow-classes", class_sharing=dump)
        for contract in ("iot_sensors", "user_activity"):
            schema = from_arrow_schema(RAW_SCHEMAS[contract], prefer_timestamp_ntz=False)
            rows = spark.range(2_000).select(*(_generated(field.name, field.dataType) for field in schema))
            path = f"{temporary}/{contract}"
            rows.unionByName(rows.limit(20)).write.parquet(path)  # with duplicates, as in a lake
            events = clean(dedupe_exact(spark.read.schema(schema).parquet(path)))
            for name, view in VIEWS.items():
                if view.contract == contract:
                    SPARK_VIEWS[name].build(events, Parameters()).write.parquet(f"{temporary}/{name}")
            events.groupBy("_topic").count().cache().collect()
        proc, java = driver_process(spark), jvm(spark)
        spark.stop()
        logging.disable(logging.ERROR)  # py4j logs the dropped connection (with a traceback) as the JVM exits
        try:
            with contextlib.suppress(Exception):  # the exit never answers
                java.System.exit(0)  # written here; when Python just exits, the JVM goes without writing it
        finally:
            logging.disable(logging.NOTSET)
        proc.wait(timeout=300)
    if not partial.is_file():
        raise RuntimeError(f"the JVM did not write {partial} (does it support -XX:ArchiveClassesAtExit?)")
    partial.replace(archive)
    return archive


def _generated(name: str, data_type: DataType) -> Column:
    kind = data_type.typeName()
    if name == "event_id":  # a canonical UUID per row, repeatable (the duplicates must repeat it)
        return F.format_string("00000000-0000-4000-8000-%012d", F.col("id")).alias(name)
    if kind == "string":
        return F.concat(F.lit(f"{name}-"), (F.col("id") % 17).cast("string")).alias(name)
    if kind == "timestamp":
        return F.timestamp_micros(F.lit(1_790_000_000_000_000) + F.col("id") * 1_000_000).alias(name)
    return (F.col("id") % 41).cast(data_type).alias(name)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    archive = Path(sys.argv[1]) if len(sys.argv) > 1 else CLASS_ARCHIVE
    started = time.monotonic()
    try:
        write_archive(archive)
    except Exception as exc:  # an optional speed-up: say why and carry on without it
        log.warning("no Spark class archive (Spark starts ~4 s slower): %s", exc)
        return
    log.info("wrote the Spark class archive %s (%.0f MiB) in %.0f s", archive,
             archive.stat().st_size / 2**20, time.monotonic() - started)  # fmt: skip


if __name__ == "__main__":
    main()
