"""Airflow plugins of the embedded stack (its AIRFLOW__CORE__PLUGINS_FOLDER)."""
