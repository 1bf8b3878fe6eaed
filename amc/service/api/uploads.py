"""``POST /api/v1/uploads``: weights for a job (a safetensors file or a weights-only ``.pt`` state dict).

The body is refused before it is read when its Content-Length is over the limit (413); the file is
streamed to a temporary name, read back with ``amc.models.read_state_dict`` (safetensors, or
``torch.load(weights_only=True)``: never a pickle of code), optionally loaded into ``model`` to check
that it fits, and only then renamed to ``uploads/<user>/<id>.<ext>``. Any failure removes it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from amc.errors import AmcError
from amc.service.api.deps import Config, User

router = APIRouter(prefix="/api/v1", tags=["uploads"])
SUFFIXES = {".safetensors": ".safetensors", ".pt": ".pt", ".pth": ".pt", ".bin": ".pt"}
CHUNK = 1 << 20


async def spool(file: UploadFile, path: Path, limit: int) -> int:
    """Stream an uploaded file to ``path`` in chunks (never whole in memory), refusing it with 413 once
    it passes ``limit`` bytes; the bytes written. The caller removes ``path`` whatever happens."""
    total = 0
    with open(path, "wb") as out:
        while chunk := await file.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise HTTPException(413, f"upload is over the limit of {limit:,} bytes")
            out.write(chunk)
    return total


class Upload(BaseModel):
    id: str
    bytes: int
    tensors: int
    model: str | None = None


def _check(path: Path, model: str | None) -> int:
    from amc.models import read_state_dict, resolve_model

    sd = read_state_dict(path)  # corrupt, truncated, pickled code: one CheckpointError
    if model:
        resolve_model(model, weights=path)  # unknown reference or weights of another model (any class count)
    return len(sd)


@router.post("/uploads", response_model=Upload, status_code=201, openapi_extra={"requestBody": {
    "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "model": {"type": "string"}}}}}}})
async def upload(request: Request, config: Config, user: User) -> Upload:
    """Multipart fields: ``file`` (``.safetensors``, ``.pt`` / ``.pth`` / ``.bin`` state dict) and,
    optionally, ``model`` (an architecture reference the weights must fit)."""
    size = request.headers.get("content-length")
    if size is None:
        raise HTTPException(411, "uploads need a Content-Length header")
    if int(size) > config.max_upload_bytes:
        raise HTTPException(413, f"upload of {int(size):,} bytes is over the limit of {config.max_upload_bytes:,}")
    async with request.form(max_files=1, max_fields=4) as form:
        file, model = form.get("file"), form.get("model")
        if not isinstance(file, UploadFile) or not file.filename:
            raise HTTPException(400, "send the weights as the multipart field 'file'")
        ext = SUFFIXES.get(Path(file.filename).suffix.lower())
        if ext is None:
            raise HTTPException(415, f"weights must be .safetensors or a .pt / .pth / .bin state dict, got "
                                     f"{Path(file.filename).name!r}")
        folder = config.uploads / user
        folder.mkdir(parents=True, exist_ok=True)
        uid = uuid.uuid4().hex[:12]
        tmp = folder / f".tmp-{uid}{ext}"
        try:
            total = await spool(file, tmp, config.max_upload_bytes)
            try:
                tensors = await run_in_threadpool(_check, tmp, model if isinstance(model, str) else None)
            except AmcError as e:
                raise HTTPException(400, str(e).replace(str(tmp), Path(file.filename).name)) from None
            os.replace(tmp, folder / f"{uid}{ext}")
        finally:
            tmp.unlink(missing_ok=True)
    return Upload(id=uid, bytes=total, tensors=tensors, model=model if isinstance(model, str) else None)
