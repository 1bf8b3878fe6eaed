"""The users' uploaded data sets: ``datasets/<user>/<id>/`` (an ImageFolder) with its ``dataset.json``.

Lifecycle: ``add_dataset(config, user, archive, filename)`` checks and unpacks an archive
(``amc.data.archives.unpack_image_folder``: refused whole, or renamed into place whole) and then writes
its record; ``list_datasets`` / ``get_dataset`` read the records (a folder without one is not a data
set: an upload that stopped between the rename and the record); ``remove_dataset`` renames the folder
aside, then deletes it. ``data_source(config, user, name)`` is what a job's ``data`` names: a registered
data set (the service's config) or one of the user's uploads, with its class count and input shape.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amc.data.archives import ArchiveLimits, unpack_image_folder
from amc.errors import AmcError
from amc.io import atomic_write_text
from amc.service.config import ServiceConfig

RECORD = "dataset.json"
CIFAR_SHAPE = (3, 32, 32)


class NotYours(AmcError):
    """A data set id that exists, but belongs to another user (the API answers 403)."""


@dataclass(frozen=True)
class JobData:
    """What a job's ``data`` names: ``kind`` is ``registered`` (loaded as CIFAR-10) or ``upload``."""

    name: str
    kind: str
    path: Path
    num_classes: int
    input_shape: tuple[int, int, int]


def limits_of(config: ServiceConfig) -> ArchiveLimits:
    return ArchiveLimits(entries=config.max_dataset_entries, unpacked_bytes=config.max_dataset_unpacked_bytes,
                         image_pixels=config.max_image_pixels)


def _valid_id(did: str) -> bool:
    return did.isalnum() and did.isascii() and len(did) <= 32


def add_dataset(config: ServiceConfig, user: str, archive: Path, filename: str, archive_bytes: int) -> dict[str, Any]:
    """Check and unpack ``archive`` as ``user``'s new data set; returns its record (``ArchiveError`` if refused)."""
    folder = config.user_datasets / user
    folder.mkdir(parents=True, exist_ok=True)
    did = uuid.uuid4().hex[:12]
    summary = unpack_image_folder(archive, folder / did, limits_of(config))
    record = {"id": did, "name": Path(filename).name, "classes": summary.classes, "images": summary.images,
              "input_shape": summary.input_shape, "bytes": summary.bytes, "archive_bytes": archive_bytes,
              "skipped": summary.skipped, "created": time.time()}
    atomic_write_text(folder / did / RECORD, json.dumps(record, indent=1))
    return record


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / RECORD).read_text())
    except (OSError, ValueError):
        return None


def list_datasets(config: ServiceConfig, user: str) -> list[dict[str, Any]]:
    folder = config.user_datasets / user
    if not folder.is_dir():
        return []
    found = [_read(p) for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((r for r in found if r is not None), key=lambda r: r["created"])


def get_dataset(config: ServiceConfig, user: str, did: str) -> tuple[Path, dict[str, Any]] | None:
    """``user``'s data set ``did`` (folder, record); None if there is none; ``NotYours`` if another user's."""
    if not _valid_id(did):
        return None
    path = config.user_datasets / user / did
    record = _read(path)
    if record is not None:
        return path, record
    if config.user_datasets.is_dir() and any(_read(p / did) is not None for p in config.user_datasets.iterdir()
                                              if p.is_dir()):
        raise NotYours(f"data set {did} belongs to another user")
    return None


def remove_dataset(config: ServiceConfig, user: str, did: str) -> bool:
    found = get_dataset(config, user, did)
    if found is None:
        return False
    aside = found[0].parent / f".del-{did}-{uuid.uuid4().hex[:6]}"
    os.replace(found[0], aside)  # gone from listings at once, whatever the delete below takes
    shutil.rmtree(aside, ignore_errors=True)
    return True


def data_source(config: ServiceConfig, user: str, name: str) -> JobData:
    """The data set a job's ``data`` names (see the module doc); one ``AmcError`` if none."""
    registered = config.datasets.get(name)
    if registered is not None:
        return JobData(name, "registered", registered, 10, CIFAR_SHAPE)
    found = get_dataset(config, user, name)
    if found is None:
        mine = [r["id"] for r in list_datasets(config, user)]
        raise AmcError(f"unknown data set {name!r}; registered: {', '.join(config.datasets) or 'none'}; "
                       f"your uploads: {', '.join(mine) or 'none'} (POST /api/v1/datasets)")
    path, record = found
    c, h, w = record["input_shape"]
    return JobData(name, "upload", path, len(record["classes"]), (int(c), int(h), int(w)))
