#!/bin/bash
# Run once by the postgres image's entrypoint, when its data volume is empty: besides the store's database
# (POSTGRES_DB, owned by POSTGRES_USER), Airflow's metadata gets a database and a role of its own, and Grafana
# a role that may only read the store.
set -euo pipefail
psql --set ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set airflow_password="$AIRFLOW_POSTGRES_PASSWORD" \
    --set grafana_password="$GRAFANA_POSTGRES_PASSWORD" \
    --set store="$POSTGRES_DB" --set owner="$POSTGRES_USER" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE grafana LOGIN PASSWORD :'grafana_password';
GRANT CONNECT ON DATABASE :"store" TO grafana;
GRANT USAGE ON SCHEMA public TO grafana;
-- the store's tables are created later, by its migrations and view sync, as the owner
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO grafana;
SQL
