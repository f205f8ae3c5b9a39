"""`lambdaflow reset` (`make reset`): empty the data directory so that `make run` starts afresh.

The broker's storage cannot go alone: everything downstream is keyed by its offsets. The streaming
checkpoints hold broker offsets, so without the checkpoints' records every query would stop (offsets gone
missing). Nor can it go with the checkpoints alone: new checkpoints number their micro-batches from 0
again, and the archiver would overwrite the lake's files of the old batches of the same numbers while the
store skipped the new speed batches as already committed. So a reset removes the broker's storage together
with the checkpoints, the lake, the serving store, Airflow's state, the status and quality files and the
logs: everything lambdaflow writes there except `secrets/`, whose credentials hold no data and may have
been handed to other tools. Anything else in the directory is not lambdaflow's and stays.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lambdaflow.settings import Settings

# what lambdaflow writes directly under the data directory, besides secrets/ and up.lock
DERIVED = ("broker", "checkpoints", "lake", "history", "status", "quality", "airflow", "logs", "metrics",
           "serving.db", "serving.db-wal", "serving.db-shm", "serving.db-journal", "serving.db.upgrade-lock",
           "spark-warehouse", "metastore_db", "derby.log")  # fmt: skip


class ResetRefused(RuntimeError):
    """A reset would lose data or break a running stack; the message is one line saying why."""


def reset_targets(settings: Settings) -> list[Path]:
    """What a reset of the settings' data directory removes."""
    data_dir = settings.data_dir.resolve()
    paths = [data_dir / name for name in DERIVED]
    return [path for path in paths if path.exists() or path.is_symlink()]


def check_resettable(settings: Settings) -> None:
    """Refuse a serving store outside the data directory: its speed commits would outlive the checkpoints."""
    if settings.store_url is None:
        return
    from sqlalchemy.engine import make_url

    url = make_url(settings.store_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ":memory:"
        if database == ":memory:" or Path(database).resolve().is_relative_to(settings.data_dir.resolve()):
            return
    raise ResetRefused(
        "the serving store (LAMBDAFLOW_STORE_URL) is outside the data directory: a reset would keep its "
        "speed commits, and the fresh stream's micro-batches would be skipped as done; empty that store "
        "first and reset with LAMBDAFLOW_STORE_URL unset"
    )


def reset_data_dir(settings: Settings) -> list[Path]:
    """Remove `reset_targets` while nothing runs on the data directory; return what was removed."""
    from cli.stack import AlreadyRunning, single_instance
    from lambdaflow.broker import BrokerError
    from lambdaflow.object_store import hold_storage

    check_resettable(settings)
    data_dir = settings.data_dir.resolve()
    if not data_dir.is_dir():
        return []
    try:
        with single_instance(data_dir / "up.lock"):
            broker = data_dir / "broker"
            lock = hold_storage(broker, wait_s=0) if broker.is_dir() else None  # a `lambdaflow broker` on it
            try:
                targets = reset_targets(settings)
                for path in targets:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            finally:
                if lock is not None:
                    lock.close()
    except (AlreadyRunning, BrokerError) as exc:
        raise ResetRefused(str(exc)) from None
    return targets
