from tests.dags.conftest import migrated_sqlite_metadata  # noqa: F401  (the DAG tests' migrated SQLite metadata)
