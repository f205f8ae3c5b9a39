"""The commands of the distributed deployment's services, in one list.

docker-compose.yaml's services run exactly these commands (tests/test_compose.py compares them), and the
distributed test (tests/test_distributed.py) runs the same ones against a Spark standalone cluster on
loopback, so the two cannot drift. Where a service listens, its credentials and which cluster it submits
to come from the environment (`LAMBDAFLOW_*`, `AIRFLOW__*`, `SPARK_MASTER_*`, `SPARK_WORKER_*`), never from
its command: a command is the same in a container and on this machine. The only argument that is not
environment is the master a Spark worker joins (`Worker` takes it as an argument alone).

The batch is no service: the Airflow scheduler runs the `lambdaflow_batch` DAG's tasks (LocalExecutor), whose
Spark work goes to `LAMBDAFLOW_SPARK_MASTER`; `BATCH_DAY` is the same day's work by hand.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# the master's URL inside docker-compose.yaml's network (the service `spark-master`, Spark's default port)
COMPOSE_SPARK_MASTER = "spark://spark-master:7077"


@dataclass(frozen=True)
class Service:
    program: str  # an executable on the image's PATH: lambdaflow, airflow or spark-class
    args: tuple[str, ...]
    one_shot: bool = False  # runs to completion before the services that need it start

    @property
    def command(self) -> list[str]:
        """The command as a container runs it."""
        return [self.program, *self.args]

    def local_command(self, extra: tuple[str, ...] = ()) -> list[str]:
        """The same command with this machine's executables: this Python's `lambdaflow` and `airflow`, and
        the installed PySpark's `spark-class`."""
        return [*_local_program(self.program), *self.args, *extra]


def _local_program(program: str) -> list[str]:
    if program == "lambdaflow":
        return [sys.executable, "-m", "cli"]
    if program == "airflow":
        return [str(Path(sys.executable).parent / "airflow")]
    if program == "spark-class":
        return [str(spark_home() / "bin" / "spark-class")]
    raise ValueError(f"no local form of {program!r}")


def spark_home() -> Path:
    """The installed PySpark's folder, which is a Spark distribution: its jars and `bin/spark-class`."""
    import pyspark

    return Path(pyspark.__file__).parent


def services(spark_master: str = COMPOSE_SPARK_MASTER) -> dict[str, Service]:
    """Every service of the distributed deployment by its docker-compose name (Kafka, its topics,
    PostgreSQL and Grafana run their own images' commands and are not listed)."""
    return {
        "spark-master": Service("spark-class", ("org.apache.spark.deploy.master.Master",)),
        "spark-worker": Service("spark-class", ("org.apache.spark.deploy.worker.Worker", spark_master)),
        # the lake archiver and the speed layer's queries, one Spark application on the cluster
        "stream": Service("lambdaflow", ("stream",)),
        "serve": Service("lambdaflow", ("serve",)),
        "airflow-init": Service("airflow", ("db", "migrate"), one_shot=True),
        "airflow-api-server": Service("airflow", ("api-server",)),
        # the scheduler runs the tasks (LocalExecutor) and writes their logs where the API server reads them
        # (one AIRFLOW_HOME volume), so it serves no logs itself
        "airflow-scheduler": Service("airflow", ("scheduler", "--skip-serve-logs")),
        "airflow-dag-processor": Service("airflow", ("dag-processor",)),
        "airflow-triggerer": Service("airflow", ("triggerer",)),
    }


# one day's recompute and publish, as the DAG's tasks do it (`--date YYYY-MM-DD` follows)
BATCH_DAY = Service("lambdaflow", ("batch", "--publish"), one_shot=True)
