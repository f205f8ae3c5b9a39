"""lambdaflow's own classes for Spark's JVM (`lambdaflow/java`), in a jar every session loads.

Spark's Python API cannot run a stateful operator's per-key logic in the JVM; the speed layer's dedupe
(`DedupeWithinWatermark.java`) is one, so it is Java. The jar is compiled against the installed PySpark's
jars (`make venv` does it; a session compiles it first when its stamp, a digest of the sources and the PySpark
version, differs: so two checkouts sharing a virtualenv each get their own classes) and lives in the
virtualenv, like the class archive of `lambdaflow.spark_classes`. Compiling needs a JDK 17+
(`javac` on the path or in `JAVA_HOME`); running needs only Spark's JVM.

`python -m lambdaflow.spark_jar [JAR]` compiles it.
"""

from __future__ import annotations

import hashlib
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
STAMP = "META-INF/lambdaflow-sources.sha256"


def java_sources() -> list[Path]:
    return sorted(SOURCES.rglob("*.java"))


def sources_digest(sources: list[Path]) -> str:
    """What the jar is compiled from: the sources' names and contents, and the PySpark it compiles against."""
    digest = hashlib.sha256(pyspark.__version__.encode())
    for source in sources:
        digest.update(b"\0" + source.relative_to(SOURCES).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def _stamp_of(jar: Path) -> str | None:
    try:
        with zipfile.ZipFile(jar) as archive:
            return archive.read(STAMP).decode()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def spark_jar(jar: Path = JAR, force: bool = False) -> Path:
    """The jar of lambdaflow's Spark classes, compiled first unless it holds the stamp of these sources and
    this PySpark (or with `force`). A modification time would not do: another checkout sharing the
    virtualenv compiles its own sources into the same jar."""
    sources = java_sources()
    digest = sources_digest(sources)
    if not force and _stamp_of(jar) == digest:
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
            archive.writestr(STAMP, digest)
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
