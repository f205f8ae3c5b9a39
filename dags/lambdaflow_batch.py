"""The daily batch recomputation: wait for the lake, gate, recompute, gate, reconcile, publish, Data Docs,
and the day's copy in Azure Blob Storage (skipped without its Airflow connection).

The run for day D covers the data interval [D, D+1) UTC; its tasks key on the logical date D. A failed
gate fails the run before publishing (each gate's checkpoint has already updated the Data Docs). Backfill
from the CLI (`airflow backfill create --dag-id lambdaflow_batch --from-date … --to-date …
--reprocess-behavior completed`) or from the UI (Trigger ▸ Backfill).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

from batch import tasks as batch_tasks
from expectations import tasks as quality_tasks
from lambdaflow.settings import load_settings

settings = load_settings()
first_day = settings.batch_start_date

with DAG(
    dag_id="lambdaflow_batch",
    description="Recompute the exact views of a day from the lake, behind Great Expectations gates",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(first_day.year, first_day.month, first_day.day, tz="UTC"),
    catchup=True,
    max_active_runs=1,
    default_args={
        "retries": settings.batch_retries,
        "retry_delay": timedelta(seconds=settings.batch_retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=20),
    },
    tags=["lambdaflow", "batch"],
) as dag:
    wait_for_lake = PythonSensor(
        task_id="wait_for_lake",
        python_callable=batch_tasks.lake_ready,
        mode="reschedule",
        poke_interval=settings.batch_lake_poke_seconds,
        timeout=timedelta(hours=settings.batch_lake_timeout_hours).total_seconds(),
    )
    validate_raw = PythonOperator(task_id="validate_raw", python_callable=quality_tasks.validate_raw)
    recompute = PythonOperator(task_id="recompute", python_callable=batch_tasks.recompute)
    validate_views = PythonOperator(task_id="validate_views", python_callable=quality_tasks.validate_views)
    reconcile = PythonOperator(task_id="reconcile", python_callable=quality_tasks.reconcile)
    publish = PythonOperator(task_id="publish", python_callable=batch_tasks.publish)
    build_data_docs = PythonOperator(task_id="build_data_docs", python_callable=quality_tasks.build_data_docs)
    export_to_azure = PythonOperator(task_id="export_to_azure", python_callable=batch_tasks.export_to_azure)

    (
        wait_for_lake
        >> validate_raw
        >> recompute
        >> validate_views
        >> reconcile
        >> publish
        >> build_data_docs
        >> export_to_azure
    )
