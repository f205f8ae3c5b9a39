"""Every private PySpark / Py4J hook lambdaflow relies on, each behind one small named function.

PySpark has no public API for these: the JVM view, a DataFrame's Java side, the driver JVM's process, the
active SparkContext, and the JVM side of a streaming query listener. They are pinned to the installed PySpark
(requirements.txt); `tests/lambdaflow/test_pyspark_compat.py` tries each one on a real session, so an
upgrade that breaks one fails there, naming it, instead of deep inside a stream.
"""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING, Any, TypeVar

from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import JStreamingQueryListener, QueryProgressEvent

if TYPE_CHECKING:
    from py4j.java_gateway import JavaObject, JVMView

Listener = TypeVar("Listener", bound=type[StreamingQueryListener])


def active_context() -> SparkContext | None:
    """The SparkContext of the running session in this process, or None (without starting one)."""
    return SparkContext._active_spark_context


def jvm(spark: SparkSession) -> JVMView:
    """The session's JVM view (`jvm(spark).lambdaflow.SomeClass`, `jvm(spark).System`)."""
    view = spark.sparkContext._jvm
    if view is None:
        raise RuntimeError("the SparkContext has no JVM (stopped?)")
    return view


def java_dataframe(frame: DataFrame) -> JavaObject:
    """The Java Dataset behind a DataFrame, to hand to a JVM method."""
    return frame._jdf


def dataframe_from_java(java_frame: JavaObject, spark: SparkSession) -> DataFrame:
    """A DataFrame around a Java Dataset that a JVM method returned."""
    return DataFrame(java_frame, spark)


def driver_process(spark: SparkSession) -> subprocess.Popen:
    """The driver JVM's process, for a session this Python process launched (spark-submit execs the JVM)."""
    gateway = spark.sparkContext._gateway
    process = getattr(gateway, "proc", None)
    if process is None:
        raise RuntimeError("this session's JVM was not launched by this process")
    return process


class _ProgressFromJson(JStreamingQueryListener):
    """Hands a progress event to the Python listener from its JSON, one call into the JVM. PySpark's own
    conversion reads it field by field, and looks up `PythonSQLUtils` by its bare name for each observed
    metric, which makes the JVM search every jar on its class path for it, every micro-batch."""

    def onQueryProgress(self, jevent: Any) -> None:
        self.pylistener.onQueryProgress(QueryProgressEvent.fromJson(json.loads(jevent.json())))


def _progress_from_json_listener(self: StreamingQueryListener) -> JavaObject:
    if not hasattr(self, "_jlistenerobj"):
        view = SparkContext._jvm
        if view is None:
            raise RuntimeError("no SparkContext: a listener is added to a running session")
        self._jlistenerobj = view.PythonStreamingQueryListenerWrapper(_ProgressFromJson(self))
    return self._jlistenerobj


def progress_from_json(listener: Listener) -> Listener:
    """Class decorator: the listener's progress events are made from their JSON (see `_ProgressFromJson`).
    PySpark asks a listener for its JVM side by the `_jlistener` property when it is added."""
    listener._jlistener = property(_progress_from_json_listener)  # type: ignore[attr-defined]
    return listener
