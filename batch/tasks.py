"""The batch layer's steps as Airflow callables: Airflow passes the context values they name (`ds`,
`data_interval_end`); each loads the settings from the environment at run time."""

from __future__ import annotations

import logging
from datetime import date

from lambdaflow.settings import load_settings

log = logging.getLogger(__name__)


def lake_ready(ds: str) -> bool:
    """The sensor: the lake is complete for day `ds` (`batch.publish.lake_completeness`, the rule publishing
    checks too).

    Every task keys on the run's logical date `ds`: a scheduled or backfilled run of [D, D+1) and
    `airflow dags test lambdaflow_batch D` both have `ds` = D (a manual run's inferred data interval is the
    one that ended at D, so the interval itself would disagree between the two)."""
    from batch.publish import lake_completeness

    lake = lake_completeness(load_settings(), date.fromisoformat(ds))
    log.info("lake complete until %s; the day needs %s", lake.until, lake.needed)
    return lake.complete


def recompute(ds: str) -> dict[str, int]:
    """Recompute day `ds` from the raw files its raw gate validated (late events archived since wait for the
    day's next run or backfill)."""
    from batch.recompute import recompute_day
    from lambdaflow.lake import VALIDATED, read_day_inputs
    from lambdaflow.spark import spark_session

    settings = load_settings()
    day = date.fromisoformat(ds)
    spark = spark_session(settings, f"lambdaflow-batch-{ds}", kafka_source=False)
    try:
        result = recompute_day(spark, settings, day, read_day_inputs(settings.lake_dir, day, VALIDATED))
    finally:
        spark.stop()
    log.info("recomputed %s in %.1f s: %s", ds, result.seconds, result.rows)
    return result.rows


def publish(ds: str) -> str:
    """Publish day `ds`; a day the lake is not complete for or holds no raw events for fails the task with
    the refusal (the sensor makes that rare)."""
    from batch.publish import publish_batch_day

    return publish_batch_day(load_settings(), date.fromisoformat(ds)).isoformat()


def export_to_azure(ds: str) -> dict[str, int]:
    """Copy day `ds` of the lake, its views and the Data Docs to Azure Blob Storage (`batch.lake_backup`).
    Without the Airflow connection the task is skipped, not failed: the copy is optional; a refused or
    failed upload fails the task, which retries and sends only what is still missing."""
    from airflow.sdk.exceptions import AirflowSkipException

    from batch.lake_backup import export_day
    from lambdaflow.azure_blob import connection_configured

    settings = load_settings()
    if not connection_configured(settings.azure_conn_id):
        message = (f"no Airflow connection {settings.azure_conn_id!r} (AIRFLOW_CONN_"
                   f"{settings.azure_conn_id.upper()}): the lake is not copied to Azure")  # fmt: skip
        log.info("skipped: %s", message)
        raise AirflowSkipException(message)
    transfer = export_day(settings, date.fromisoformat(ds))
    return {"files": transfer.files, "uploaded": transfer.sent, "uploaded_bytes": transfer.sent_bytes}
