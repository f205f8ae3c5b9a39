"""Azurite, Microsoft's Azure Storage emulator (npm `azurite`, installed by `make azurite` under .cache/):
its Blob service on a free loopback port with a throw-away data folder, for the tests and the benchmark."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lambdaflow.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
AZURITE_BLOB = ROOT / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft; not a secret)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True)
class Azurite:
    port: int

    def connection_string(self, key: str = ACCOUNT_KEY) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};")  # fmt: skip

    def airflow_connection(self, key: str = ACCOUNT_KEY) -> str:
        """An `AIRFLOW_CONN_<ID>` value (Airflow's JSON form) for a `wasb` connection to this Azurite."""
        return json.dumps({"conn_type": "wasb", "extra": {"connection_string": self.connection_string(key)}})

    def env(self, conn_id: str = "lambdaflow_azure", key: str = ACCOUNT_KEY) -> dict[str, str]:
        return {f"AIRFLOW_CONN_{conn_id.upper()}": self.airflow_connection(key)}


@contextmanager
def running_azurite(location: Path) -> Iterator[Azurite]:
    if not AZURITE_BLOB.exists():
        raise RuntimeError(f"{AZURITE_BLOB} is missing: run `make azurite`")
    port = free_port()
    location.mkdir(parents=True, exist_ok=True)
    log = (location / "azurite.log").open("w")
    process = subprocess.Popen(
        [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
         "--disableTelemetry", "--skipApiVersionCheck", "--silent"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Azurite did not start: {(location / 'azurite.log').read_text()[-2000:]}"
                    ) from exc
                time.sleep(0.2)
        yield Azurite(port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
