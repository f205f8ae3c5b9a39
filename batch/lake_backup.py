"""The lake's copy in Azure Blob Storage: export a day after it is published, restore it from there.

The master dataset lives on one disk; everything else (the speed layer, the store, the views) can be
recomputed from it, so it is what must survive losing the machine. A day's export holds its raw partitions
of every topic, its quarantine, its recomputed views, its own Data Docs validation pages and the site's shared
pages (index, expectation suites, static files; other days' pages went with their days), under the blob names
of the data directory's layout (`lake/raw/<topic>/date=D/part-….parquet`, …, `quality/data_docs/…`). The day's
manifest, `manifests/date=D/_manifest.json` (every file's name, bytes, rows and MD5), is uploaded last, and
removed first when the day's content changed: a day without a manifest is incomplete. A blob already there
with the same MD5 is not uploaded again, so re-running an export, or finishing a cut one, sends only what is
missing. Restore downloads a day's raw partitions and quarantine by its manifest and checks every MD5.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

from lambdaflow.azure_blob import (
    MAX_CONCURRENCY,
    BlobContainer,
    BlobStorageError,
    bytes_md5,
    file_md5,
)
from lambdaflow.lake import day_dir, replaced_atomically, walk_files
from lambdaflow.settings import Settings

log = logging.getLogger(__name__)

RESTORED = ("lake/raw/", "lake/quarantine/")  # the master dataset: what a recompute needs
DATA_DOCS = "quality/data_docs"


@dataclass(frozen=True)
class ManifestFile:
    name: str  # the blob's name: the file's path under the data directory
    bytes: int
    rows: int | None  # Parquet files only
    md5: str  # base64, as Azure's Content-MD5


@dataclass(frozen=True)
class Transfer:
    day: date
    files: int  # in the day's manifest
    sent: int  # uploaded or downloaded by this run
    sent_bytes: int

    def summary(self, verb: str) -> str:
        return (f"{verb} {self.day}: {self.sent} of {self.files} files ({self.sent_bytes / 1e6:,.1f} MB); "
                f"{self.files - self.sent} already there")  # fmt: skip


def manifest_name(day: date) -> str:
    return f"manifests/date={day.isoformat()}/_manifest.json"


def open_container(settings: Settings) -> BlobContainer:
    return BlobContainer(settings.azure_conn_id, settings.azure_container)


def _data_docs_folders(site: Path, day: date) -> Iterator[Path]:
    """The Data Docs a day's export holds, as the site's top-level entries and the day's validation folders:
    the gates name each validation run after its suite and day, `validations/<suite>/<suite>-D/`, so a day
    neither reads nor lists the pages of the days before it."""
    for entry in sorted(site.iterdir()) if site.is_dir() else ():
        if entry.name.startswith((".", "_")):
            continue
        if entry.name == "validations" and entry.is_dir():
            for suite in sorted(entry.iterdir()):
                yield suite / f"{suite.name}-{day.isoformat()}"
        else:
            yield entry


def day_files(settings: Settings, day: date) -> dict[str, Path]:
    """The files a day's export holds, by blob name: raw and quarantine of every topic, every view's day,
    the day's Data Docs validation pages and the site's shared pages."""
    data_dir = settings.data_dir.resolve()
    found: dict[str, Path] = {}
    for area in ("raw", "quarantine", "views"):
        base = settings.lake_dir / area
        for folder in sorted(base.iterdir()) if base.is_dir() else ():
            for path in walk_files(day_dir(folder, day)):
                found[path.relative_to(data_dir).as_posix()] = path
    for entry in _data_docs_folders(data_dir / DATA_DOCS, day):
        for path in [entry] if entry.is_file() else walk_files(entry):
            found[path.relative_to(data_dir).as_posix()] = path
    return found


def _describe(name: str, path: Path) -> ManifestFile:
    rows = pq.read_metadata(path).num_rows if path.suffix == ".parquet" else None
    return ManifestFile(name, path.stat().st_size, rows, file_md5(path))


def manifest_bytes(day: date, files: list[ManifestFile]) -> bytes:
    """The manifest's content: a function of the files alone, so an unchanged day has an unchanged MD5."""
    body = {
        "day": day.isoformat(),
        "files": [vars(file) for file in sorted(files, key=lambda file: file.name)],
        "total_bytes": sum(file.bytes for file in files),
        "total_rows": sum(file.rows or 0 for file in files if file.name.startswith(RESTORED)),
    }
    return json.dumps(body, indent=1).encode()


def _listed_prefixes(settings: Settings, day: date, names: list[str]) -> list[str]:
    """The blob-name prefixes that hold the day's export: the day's lake folders among the names
    (`lake/<area>/<name>/date=D/`), the Data Docs site's shared entries and the day's validation folders."""
    data_dir = settings.data_dir.resolve()
    marker = f"/date={day.isoformat()}/"
    prefixes = {name[: name.index(marker) + len(marker)] for name in names if marker in name}
    prefixes.add(manifest_name(day))
    for entry in _data_docs_folders(data_dir / DATA_DOCS, day):
        prefixes.add(entry.relative_to(data_dir).as_posix() + ("" if entry.is_file() else "/"))
    return sorted(prefixes)


class _ManifestRemoval:
    """Deletes the day's earlier manifest once, before the first blob of the day changes."""

    def __init__(self, container: BlobContainer, day: date, present: bool) -> None:
        self.container, self.day, self.present = container, day, present
        self.removed = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self.present and not self.removed:
                self.container.delete(manifest_name(self.day))
                self.removed = True


def export_day(settings: Settings, day: date, container: BlobContainer | None = None) -> Transfer:
    """Upload day `day` (see the module's docstring); raise `BlobStorageError` (one line) on a refusal."""
    container = container or open_container(settings)
    local = day_files(settings, day)
    if not any(name.startswith(RESTORED) for name in local):
        raise ValueError(f"the lake holds no raw events or quarantine for {day} under {settings.lake_dir}")
    container.create_if_missing()
    remote = {}
    with ThreadPoolExecutor(MAX_CONCURRENCY) as pool:  # one listing request per prefix
        for listed in pool.map(container.list, _listed_prefixes(settings, day, list(local))):
            remote.update(listed)
    old_manifest = remote.get(manifest_name(day))
    remove_manifest = _ManifestRemoval(container, day, present=old_manifest is not None)

    def send(name: str, path: Path) -> tuple[ManifestFile, bool]:
        file = _describe(name, path)
        if name in remote and remote[name].md5 == file.md5:
            return file, False
        remove_manifest()  # the day is incomplete until its new manifest is up
        container.upload_file(path, name, file.md5)
        return file, True

    # each file is hashed and sent by one worker, so hashing overlaps the other workers' uploads; a file
    # over the SDK's single-request size goes up in blocks, MAX_CONCURRENCY at a time
    with ThreadPoolExecutor(MAX_CONCURRENCY) as pool:
        described = list(pool.map(lambda item: send(*item), local.items()))
    files = [file for file, _ in described]
    sent = [file for file, was_sent in described if was_sent]
    manifest = manifest_bytes(day, files)
    if old_manifest is not None and old_manifest.md5 != bytes_md5(manifest):
        remove_manifest()
    stale = [name for name in remote if name not in local and f"/date={day.isoformat()}/" in name
             and name.startswith("lake/")]  # fmt: skip
    for name in stale:  # files of an earlier recompute of the day (Spark names its parts afresh)
        container.delete(name)
    if old_manifest is None or remove_manifest.removed:
        container.upload_bytes(manifest, manifest_name(day))
    transfer = Transfer(day, len(files), len(sent), sum(file.bytes for file in sent))
    log.info("%s to container %r", transfer.summary("exported"), container.name)
    return transfer


def read_manifest(container: BlobContainer, day: date) -> list[ManifestFile]:
    data = container.read_bytes(manifest_name(day))
    if data is None:
        raise BlobStorageError(
            f"container {container.name!r} has no {manifest_name(day)}: {day} was never exported completely"
        )
    return [ManifestFile(**file) for file in json.loads(data)["files"]]


def restore_day(settings: Settings, day: date, data_dir: Path | None = None,
                container: BlobContainer | None = None) -> Transfer:  # fmt: skip
    """Download day `day`'s raw partitions and quarantine into `<data_dir>/lake/` (default: the configured
    data directory), checking each file's MD5 against the manifest. A file already there with the manifest's
    MD5 is kept; one with other content is refused, not replaced."""
    container = container or open_container(settings)
    target_dir = (data_dir or settings.data_dir).resolve()
    wanted = [file for file in read_manifest(container, day) if file.name.startswith(RESTORED)]
    for file in wanted:  # whoever can write the container must not choose where restore writes
        if not (target_dir / file.name).resolve().is_relative_to(target_dir / "lake"):
            raise BlobStorageError(f"the manifest of {day} names {file.name!r}, outside the lake; nothing "
                                   "was restored")  # fmt: skip
    missing = []
    for file in wanted:
        path = target_dir / file.name
        if path.exists():
            if file_md5(path) != file.md5:
                raise BlobStorageError(f"{path} exists with content other than {file.name} of the manifest; "
                                       "restore into another data directory (--to)")  # fmt: skip
            continue
        missing.append(file)

    def download(file: ManifestFile) -> None:
        with replaced_atomically(target_dir / file.name) as temporary:
            md5 = container.download_file(file.name, temporary)
            if md5 != file.md5:
                raise BlobStorageError(f"{file.name}: downloaded MD5 {md5} differs from the manifest's "
                                       f"{file.md5}; the file was not restored")  # fmt: skip

    with ThreadPoolExecutor(MAX_CONCURRENCY) as pool:
        for _ in pool.map(download, missing):
            pass
    transfer = Transfer(day, len(wanted), len(missing), sum(f.bytes for f in missing))
    log.info("%s into %s", transfer.summary("restored"), target_dir)
    return transfer
