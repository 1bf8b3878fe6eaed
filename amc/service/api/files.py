"""A job's artefacts: the file list, any file in its run folder, and the report rendered as HTML.

Paths are resolved inside the job's run folder and refused (400) when they would leave it (``..``,
absolute paths, symlinks out); the study database and temporary files are not served.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from amc.service.api.deps import Config, Job

router = APIRouter(prefix="/api/v1/jobs", tags=["files"])
HIDDEN = re.compile(r"(^|/)(\.|study\.db|.*\.tmp)")
MAIN = ("recipe.yaml", "report.md", "trials.csv", "model.onnx", "summary.json", "model.sparse.safetensors",
        "pruned/model.safetensors", "pruned/config.json")


def safe_path(run_dir: Path, rel: str) -> Path:
    root = run_dir.resolve()
    if rel.startswith(("/", "\\")) or ".." in Path(rel).parts or "\\" in rel or "\x00" in rel:
        raise HTTPException(400, f"path {rel!r} leaves the job's run folder")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise HTTPException(400, f"path {rel!r} leaves the job's run folder")
    return path


def list_files(run_dir: Path) -> list[dict[str, Any]]:
    if not run_dir.is_dir():
        return []
    out = []
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and not p.is_symlink() and not HIDDEN.search(rel):
            out.append({"path": rel, "bytes": p.stat().st_size, "main": rel in MAIN})
    return out


@router.get("/{job_id}/files")
def files(job: Job, config: Config) -> list[dict[str, Any]]:
    return list_files(config.runs / job.id)


@router.get("/{job_id}/files/{path:path}")
def download(job: Job, path: str, config: Config) -> FileResponse:
    target = safe_path(config.runs / job.id, path)
    if HIDDEN.search(path) or not target.is_file():
        raise HTTPException(404, f"job {job.id} has no file {path!r}")
    return FileResponse(target, filename=target.name)


@router.get("/{job_id}/report", response_class=HTMLResponse)
def report(job: Job, config: Config) -> HTMLResponse:
    """report.md as an HTML fragment; its images point at this job's files (``data-src``, fetched with
    the token by the page)."""
    from markdown_it import MarkdownIt

    md = config.runs / job.id / "report.md"
    if not md.is_file():
        raise HTTPException(404, f"job {job.id} has no report yet (state {job.state})")
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(md.read_text())
    base = f"/api/v1/jobs/{job.id}/files/"
    html = re.sub(r'<img src="(?!https?:|/)([^"]+)"', lambda m: f'<img data-src="{base}{m.group(1)}"', html)
    return HTMLResponse(html)
