"""The DAG's backfill as docker-compose.yaml runs it: its Spark work on a standalone cluster
(local_services/spark_cluster.py, started with the services' commands), the store and Airflow's metadata on
PostgreSQL; the same days published equal to the ground truth, and a day backfilled again leaves the store as
it was."""

from __future__ import annotations

import pytest

from local_services.spark_cluster import SparkCluster
from tests.conftest import new_database
from tests.dags.test_backfill import backfill_days_then_one_again

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def settings(make_settings, postgres_url):
    return make_settings(store_url=new_database(postgres_url))


@pytest.fixture
def lambdaflow_env(spark_cluster: SparkCluster, settings) -> dict[str, str]:
    """The DAG's tasks submit their Spark work to the cluster and write the store on PostgreSQL."""
    return {"LAMBDAFLOW_SPARK_MASTER": spark_cluster.url, "LAMBDAFLOW_STORE_URL": settings.store_url}


@pytest.mark.timeout(1500)
def test_backfill_on_the_cluster_publishes_the_days_and_a_rerun_is_idempotent(
    spark, settings, airflow_services, spark_cluster
):
    before = len(spark_cluster.applications())
    backfill_days_then_one_again(spark, settings, airflow_services, count=2)
    # each run's recompute was an application of the cluster: two days, then one of them again
    recomputes = spark_cluster.applications()[before:]
    assert len(recomputes) == 3 and len(set(recomputes)) == 2, recomputes
    assert all(name.startswith("lambdaflow-batch-") for name in recomputes), recomputes
