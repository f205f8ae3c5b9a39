"""Each private PySpark hook of `lambdaflow.pyspark_compat` on a real local session (the tests' one session):
after a PySpark upgrade, a hook that broke fails here, by name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pyspark
import pytest
from py4j.java_gateway import JavaClass

from lambdaflow import pyspark_compat

pytestmark = pytest.mark.integration


@contextmanager
def hook(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        pytest.fail(f"the PySpark hook pyspark_compat.{name} fails on PySpark {pyspark.__version__}: {exc!r}")


def test_active_context(spark):
    with hook("active_context"):
        assert pyspark_compat.active_context() is spark.sparkContext


def test_jvm(spark):
    with hook("jvm"):
        view = pyspark_compat.jvm(spark)
        assert view.java.lang.Math.max(2, 5) == 5
        # a class on the class path (lambdaflow's jar), not py4j's guess of a package
        assert isinstance(view.lambdaflow.DedupeWithinWatermark, JavaClass)


def test_java_dataframe_and_back(spark):
    frame = spark.range(5)
    with hook("java_dataframe / dataframe_from_java"):
        java_frame = pyspark_compat.java_dataframe(frame)
        assert java_frame.count() == 5
        again = pyspark_compat.dataframe_from_java(java_frame.limit(3), spark)
        assert sorted(row.id for row in again.collect()) == [0, 1, 2]


def test_driver_process(spark):
    with hook("driver_process"):
        process = pyspark_compat.driver_process(spark)
        assert process.poll() is None
        assert "java" in psutil.Process(process.pid).name()
        java_pid = pyspark_compat.jvm(spark).ProcessHandle.current().pid()
        assert java_pid == process.pid


def test_progress_from_json(spark, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_text('{"n": 1}\n{"n": 2}\n')
    received = []
    progressed = threading.Event()

    @pyspark_compat.progress_from_json
    class Recorder(pyspark.sql.streaming.StreamingQueryListener):
        def onQueryStarted(self, event):
            pass

        def onQueryProgress(self, event):
            received.append(event.progress)
            progressed.set()

        def onQueryIdle(self, event):
            pass

        def onQueryTerminated(self, event):
            pass

    listener = Recorder()
    with hook("progress_from_json"):
        spark.streams.addListener(listener)
        try:
            stream = spark.readStream.schema("n long").json(str(tmp_path / "in"))
            query = (
                stream.writeStream.format("noop")
                .queryName("compat_progress")
                .option("checkpointLocation", str(tmp_path / "checkpoint"))
                .trigger(availableNow=True)
                .start()
            )
            query.awaitTermination(120)
            assert progressed.wait(30), "no progress event reached the listener"
        finally:
            spark.streams.removeListener(listener)
        progress = received[0]
        assert (progress.name, progress.numInputRows) == ("compat_progress", 2)
