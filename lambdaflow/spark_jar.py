"""lambdaflow's own classes for Spark's JVM (`lambdaflow/java`), in a jar every session loads.

Spark's Python API cannot run a stateful operator's per-key logic in the JVM; the speed layer's dedupe
(`DedupeWithinWatermark.java`) is one, so it is Java. The jar is compiled against the installed PySpark's
jars (`make venv` does it; a session compiles it first when it is missing or older than a source, ~2 s) and
lives in the virtualenv, like the class archive of `lambdaflow.spark_classes`. Compiling needs a JDK 17+
(`javac` on the path or in `JAVA_HOME`); running needs only Spark's JVM.

`python -m lambdaflow.spark_jar [JAR]` compiles it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyspark

SOURCES = Path(__file__).parent / "java"
JAR = Path(sys.prefix) / "lambdaflow-spark.jar"


def spark_jar(jar: Path = JAR, force: bool = False) -> Path:
    """The jar of lambdaflow's Spark classes, compiled first if it is missing or older than a source (or
    `force`: after a reinstall of PySpark)."""
    sources = sorted(SOURCES.rglob("*.java"))
    newest = max(source.stat().st_mtime for source in sources)
    if not force and jar.is_file() and jar.stat().st_mtime >= newest:
        return jar
    classes = Path(pyspark.__file__).parent / "jars"
    with tempfile.TemporaryDirectory(prefix="lambdaflow-javac-") as output:
        compiled = subprocess.run(
            [_javac(), "-nowarn", "--release", "17", "-cp", f"{classes}/*", "-d", output, *map(str, sources)],
            capture_output=True,
            text=True,
        )
        if compiled.returncode != 0:
            raise RuntimeError(f"compiling {SOURCES} failed:\n{compiled.stderr.strip()}")
        # sessions may compile at once: each writes its own file, the last rename wins
        partial = jar.with_name(f".{jar.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(output).rglob("*.class")):
                archive.write(path, path.relative_to(output).as_posix())
        partial.replace(jar)
    return jar


def _javac() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "javac").is_file():
        return str(Path(java_home) / "bin" / "javac")
    found = shutil.which("javac")
    if found is None:
        raise RuntimeError(f"compiling {SOURCES} needs a JDK 17+: no javac in JAVA_HOME or on PATH")
    return found


if __name__ == "__main__":
    print(spark_jar(Path(sys.argv[1]) if len(sys.argv) > 1 else JAR, force=True))
