"""lambdaflow's Spark classes: compiled into a jar stamped with what it was compiled from."""

import os
import zipfile

from lambdaflow.spark_jar import STAMP, java_sources, sources_digest, spark_jar


def test_a_jar_is_recompiled_when_its_stamp_is_not_these_sources_even_if_it_is_newer(tmp_path):
    these_sources = sources_digest(java_sources())
    jar = spark_jar(tmp_path / "classes.jar")
    with zipfile.ZipFile(jar) as archive:
        assert "DedupeWithinWatermark.class" in {name.rsplit("/", 1)[-1] for name in archive.namelist()}
        assert archive.read(STAMP).decode() == these_sources
    compiled_at = jar.stat().st_mtime_ns
    assert spark_jar(jar).stat().st_mtime_ns == compiled_at  # up to date: not compiled again

    # another checkout sharing the virtualenv wrote its own classes later
    with zipfile.ZipFile(jar, "w") as archive:
        archive.writestr(STAMP, "another checkout's sources")
    os.utime(jar, ns=(compiled_at + 10**9, compiled_at + 10**9))
    with zipfile.ZipFile(spark_jar(jar)) as archive:
        assert archive.read(STAMP).decode() == these_sources
