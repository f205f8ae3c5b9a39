"""Azure Blob Storage (or ADLS Gen2 through its blob endpoint): the one module that knows the connection.

The connection is an Airflow connection of type `wasb` named by `LAMBDAFLOW_AZURE_CONN_ID`, resolved the way
Airflow resolves any connection (an `AIRFLOW_CONN_<ID>` environment variable, a secrets backend, or
Airflow's metadata database), and used through the Airflow Azure provider's `WasbHook`, so the DAG's task and
the command line reach the same account with the same credentials and the repository holds none of them.
Airflow is imported when a container is opened, never by importing this module (the serving process does
not load Airflow).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

# Each transfer's blocks go up or come down this many at a time (the SDK's `max_concurrency`); files larger
# than the SDK's single-request size (64 MiB by default) are uploaded in blocks.
MAX_CONCURRENCY = 4
_CHUNK = 4 * 1024 * 1024


class BlobStorageError(OSError):
    """Blob Storage refused or failed a request; the message is one line saying which and why."""


class BlobStorageNotConfigured(BlobStorageError):
    """No Airflow connection of the configured id exists."""


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    md5: str | None  # base64, as Azure's Content-MD5; None when the blob was stored without one


def file_md5(path: Path) -> str:
    """The base64 MD5 of a file, as Azure's Content-MD5 header carries it."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def bytes_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def connection_configured(conn_id: str) -> bool:
    """Whether Airflow knows the connection `conn_id` (environment, secrets backend or metadata)."""
    if os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}"):
        return True  # Airflow's first place to look; answered without importing Airflow
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        WasbHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return False
    return True


class BlobContainer:
    """One container of the storage account that the Airflow connection `conn_id` describes."""

    def __init__(self, conn_id: str, container: str, max_concurrency: int = MAX_CONCURRENCY) -> None:
        if not connection_configured(conn_id):
            raise BlobStorageNotConfigured(
                f"no Airflow connection {conn_id!r} (set AIRFLOW_CONN_{conn_id.upper()} or "
                f"LAMBDAFLOW_AZURE_CONN_ID)"
            )
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        self.conn_id = conn_id
        self.name = container
        self.max_concurrency = max_concurrency
        self.hook = WasbHook(wasb_conn_id=conn_id)

    def _client(self) -> ContainerClient:
        with self._errors("connecting"):
            return self.hook.blob_service_client.get_container_client(self.name)

    def create_if_missing(self) -> None:
        with self._errors(f"creating container {self.name!r}"):
            self.hook.create_container(self.name)  # an existing container is kept

    def list(self, prefix: str) -> dict[str, BlobInfo]:
        """Every blob whose name starts with `prefix`, by name (empty when the container does not exist)."""
        from azure.core.exceptions import ResourceNotFoundError

        found = {}
        with self._errors(f"listing {prefix!r}"):
            try:
                for blob in self._client().list_blobs(name_starts_with=prefix):
                    md5 = blob.content_settings.content_md5
                    encoded = base64.b64encode(md5).decode() if md5 else None
                    found[blob.name] = BlobInfo(blob.name, blob.size, encoded)
            except ResourceNotFoundError:
                return {}
        return found

    def upload_file(self, path: Path, name: str, md5: str) -> None:
        """Upload a file as a block blob (replacing any blob of that name), recording its MD5."""
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_md5=bytearray(base64.b64decode(md5)))
        with self._errors(f"uploading {name}"):
            self.hook.load_file(str(path), self.name, name, overwrite=True, content_settings=settings,
                                max_concurrency=self.max_concurrency, length=path.stat().st_size)  # fmt: skip

    def upload_bytes(self, data: bytes, name: str) -> None:
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_md5=bytearray(hashlib.md5(data, usedforsecurity=False).digest()),
                                   content_type="application/json")  # fmt: skip
        with self._errors(f"uploading {name}"):
            self.hook.upload(self.name, name, data, overwrite=True, content_settings=settings)

    def read_bytes(self, name: str) -> bytes | None:
        """A blob's content, or None when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors(f"reading {name}"):
            try:
                return self.hook.download(self.name, name).readall()
            except ResourceNotFoundError:
                return None

    def download_file(self, name: str, path: Path) -> str:
        """Download a blob into `path` (a temporary name: the caller checks the MD5 it returns, base64, before
        renaming the file into place)."""
        digest = hashlib.md5(usedforsecurity=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(f"downloading {name}"), path.open("wb") as file:
            stream = self.hook.download(self.name, name, max_concurrency=self.max_concurrency)
            for chunk in stream.chunks():
                digest.update(chunk)
                file.write(chunk)
        return base64.b64encode(digest.digest()).decode()

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors(f"deleting {name}"), contextlib.suppress(ResourceNotFoundError):
            self._client().delete_blob(name)

    def _errors(self, doing: str) -> _OneLineErrors:
        return _OneLineErrors(f"Azure Blob Storage ({self.conn_id}, container {self.name!r}): {doing}")


class _OneLineErrors:
    """Turns the Azure SDK's multi-line errors into `BlobStorageError` with one line: what was being done,
    the service's error code and its first line."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: Any) -> bool:
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

        if error is None or not isinstance(error, AzureError) or isinstance(error, BlobStorageError):
            return False
        code = getattr(error, "error_code", None) or type(error).__name__
        first = next((line.strip() for line in str(error.message or error).splitlines() if line.strip()), "")
        if isinstance(error, ClientAuthenticationError) or (
            isinstance(error, HttpResponseError) and error.status_code == 403
        ):
            reason = f"the credentials were refused ({code}: {first})"
        else:
            reason = f"{code}: {first}"
        raise BlobStorageError(f"{self.doing}: {reason}") from None
