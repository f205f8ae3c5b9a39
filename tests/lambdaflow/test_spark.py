"""The streaming application's fair-scheduler pools: the pools file defines the pools the queries name, and a
query started in a pool runs its foreachBatch function's jobs in it (on the query's own thread)."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest

from lambdaflow.settings import Settings
from lambdaflow.spark import ARCHIVE_POOL, POOL_PROPERTY, SCHEDULER_POOLS, SPEED_POOL, in_pool


def test_the_pools_file_gives_the_speed_queries_a_minimum_share_and_the_archiver_none():
    pools = {
        pool.get("name"): {child.tag: child.text for child in pool}
        for pool in ElementTree.parse(SCHEDULER_POOLS).getroot()
    }
    assert set(pools) == {SPEED_POOL, ARCHIVE_POOL}
    assert Settings.model_fields["spark_master"].default == "local[2]"
    assert int(pools[SPEED_POOL]["minShare"]) >= 2  # every core of the default master
    assert int(pools[ARCHIVE_POOL]["minShare"]) == 0
    assert int(pools[SPEED_POOL]["weight"]) > int(pools[ARCHIVE_POOL]["weight"])


@pytest.mark.integration
def test_a_query_started_in_a_pool_runs_its_foreach_batch_jobs_in_it(spark, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.json").write_text('{"n": 1}\n{"n": 2}\n')
    seen: list[tuple[str | None, int]] = []

    def record(batch, batch_id):
        seen.append((batch.sparkSession.sparkContext.getLocalProperty(POOL_PROPERTY), batch.count()))

    with in_pool(spark, SPEED_POOL):
        query = (
            spark.readStream.schema("n long").json(str(tmp_path / "in"))
            .writeStream.queryName("pooled")
            .foreachBatch(record)
            .option("checkpointLocation", str(tmp_path / "checkpoint"))
            .trigger(availableNow=True)
            .start()
        )  # fmt: skip
    assert spark.sparkContext.getLocalProperty(POOL_PROPERTY) is None  # the starting thread's is cleared
    query.awaitTermination(120)
    assert seen == [(SPEED_POOL, 2)]
