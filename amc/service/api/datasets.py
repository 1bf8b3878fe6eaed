"""``/api/v1/datasets``: a user's own ImageFolder data sets, uploaded as .tar, .tar.gz or .zip.

``POST`` (multipart field ``file``): refused before it is read when its Content-Length is over
``max_dataset_bytes`` (413); otherwise streamed to a temporary file (counted: past the limit, 413),
then checked and unpacked by ``amc.service.datasets.add_dataset`` (``amc.data.archives``: every
check before anything is extracted, then the images decoded, then one rename). A refused archive is
one 400 naming its first problem, and nothing of it stays on disk. ``GET`` lists the caller's data
sets, ``GET /{id}`` reads one, ``DELETE /{id}`` removes one (409 while a queued or running job of the
caller names it). Another user's data set is a 403, as another user's job is.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from amc.errors import AmcError
from amc.service.api.deps import Config, StoreDep, User
from amc.service.api.uploads import spool
from amc.service.datasets import NotYours, add_dataset, get_dataset, list_datasets, remove_dataset

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


class Dataset(BaseModel):
    id: str
    name: str
    classes: list[str]
    images: dict[str, int]
    input_shape: list[int]
    bytes: int
    archive_bytes: int
    skipped: int
    created: float


def _owned(config: Any, user: str, did: str) -> tuple[Path, dict[str, Any]]:
    try:
        found = get_dataset(config, user, did)
    except NotYours as e:
        raise HTTPException(403, str(e)) from None
    if found is None:
        raise HTTPException(404, f"no data set {did!r}")
    return found


@router.post("", response_model=Dataset, status_code=201, openapi_extra={"requestBody": {
    "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}}}}})
async def upload_dataset(request: Request, config: Config, user: User) -> Dataset:
    """Multipart field ``file``: ``train/<class>/<image>``, ``test/<class>/<image>`` (and optionally
    ``val/``), at the archive's root or under one top folder, as .tar, .tar.gz or .zip."""
    limit = config.max_dataset_bytes
    size = request.headers.get("content-length")
    if size is None:
        raise HTTPException(411, "uploads need a Content-Length header")
    if int(size) > limit:
        raise HTTPException(413, f"upload of {int(size):,} bytes is over the limit of {limit:,}")
    async with request.form(max_files=1, max_fields=2) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile) or not file.filename:
            raise HTTPException(400, "send the archive as the multipart field 'file'")
        name = Path(file.filename).name
        if not name.lower().endswith(SUFFIXES):
            raise HTTPException(415, f"a data set is a .tar, .tar.gz or .zip archive, got {name!r}")
        folder = config.user_datasets / user
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".upload-{uuid.uuid4().hex[:12]}"
        try:
            total = await spool(file, tmp, limit)
            try:
                record = await run_in_threadpool(add_dataset, config, user, tmp, name, total)
            except AmcError as e:
                raise HTTPException(400, f"{name}: {e}") from None
        finally:
            tmp.unlink(missing_ok=True)
    return Dataset(**record)


@router.get("", response_model=list[Dataset])
def datasets(config: Config, user: User) -> list[Dataset]:
    return [Dataset(**r) for r in list_datasets(config, user)]


@router.get("/{dataset_id}", response_model=Dataset)
def dataset(dataset_id: str, config: Config, user: User) -> Dataset:
    return Dataset(**_owned(config, user, dataset_id)[1])


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, config: Config, store: StoreDep, user: User) -> None:
    _owned(config, user, dataset_id)
    busy = [j.id for j in store.list_jobs(user, limit=1000)
            if j.state in ("queued", "running", "cancelling") and j.spec.get("data") == dataset_id]
    if busy:
        raise HTTPException(409, f"data set {dataset_id} is in use by job(s) {', '.join(busy)}")
    remove_dataset(config, user, dataset_id)
