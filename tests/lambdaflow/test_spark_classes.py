import subprocess

import pytest

from lambdaflow.pyspark_compat import jvm
from lambdaflow.spark import CLASS_ARCHIVE, archive_java_options


def test_no_archive_adds_no_option(tmp_path):
    assert archive_java_options(tmp_path / "missing.jsa") == ""


def test_an_archive_is_mapped_when_present(tmp_path):
    archive = tmp_path / "classes.jsa"
    archive.write_bytes(b"")
    assert f"-XX:SharedArchiveFile={archive}" in archive_java_options(archive)


def test_the_installed_archive_maps_into_the_drivers_jvm(spark):
    """`make venv` wrote the archive for this install: a JVM with the driver's class path must map it
    (`-Xshare:on` fails instead of silently starting without it)."""
    if not CLASS_ARCHIVE.is_file():
        pytest.skip(f"{CLASS_ARCHIVE} is written by `make venv`")
    java_system = jvm(spark).System
    java = f"{java_system.getProperty('java.home')}/bin/java"
    class_path = java_system.getProperty("java.class.path")
    result = subprocess.run(
        [java, f"-XX:SharedArchiveFile={CLASS_ARCHIVE}", "-Xshare:on", "-cp", class_path, "-version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sharing" in result.stderr
