"""What every benchmark shares: paths, the common flags, the data, a resumable row cache, report writing.

Lifecycle of a benchmark script::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the checkout, for `python benchmarks/x.py`
    from benchmarks.harness import SHARED, Cache, cifar10, parser, write_report
    ap = parser(__doc__, cache="runs/mine")          # --data --out --cache --device --report-only
    ap.add_argument(...)                             # the benchmark's own flags
    args = ap.parse_args()
    cache = Cache(args.cache)
    row = cache.row("resnet20__uniform__s0", lambda: measure_something(...))   # computed once, then read back
    write_report(args.out, "mine", {"rows": [...]}, markdown_text)             # mine.json + mine.md, atomically

The script's one ``sys.path`` line makes ``python benchmarks/x.py`` import the checkout's ``amc`` and
this harness (tests import the same modules as ``benchmarks.x``). Every report's JSON
gets the machine it ran on (``machine``: CPU, capability, torch, threads) and the time it was written;
a report written from an incomplete cache says so (``partial: true`` and a first line in the markdown).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from amc.io import atomic_write_text
from amc.system import machine_info

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared"
CIFAR10 = SHARED / "datasets" / "cifar10-jpeg.tar.xz"
MODELS = SHARED / "models"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parser(doc: str | None, *, cache: str | None = None, out: str = "reports",
           device: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark takes: ``--data`` (the shared CIFAR-10),
    ``--out`` (where the report goes), ``--device``, and, for a benchmark that caches its rows
    (``cache`` given: its default folder), ``--cache`` and ``--report-only``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(CIFAR10), help="the data set (default: the shared CIFAR-10)")
    ap.add_argument("--out", default=str(ROOT / out) if not Path(out).is_absolute() else out,
                    help="folder of the report (<name>.md and <name>.json)")
    ap.add_argument("--device", default=device or default_device())
    if cache is not None:
        ap.add_argument("--cache", default=str(ROOT / cache), help="folder of the cached rows (a rerun resumes)")
        ap.add_argument("--report-only", action="store_true", help="write the report from the cache; measure nothing")
    return ap


def cifar10(args: argparse.Namespace, *, heldout: int = 5000, train_limit: int | None = None) -> Any:
    """The benchmark protocol's CIFAR-10 splits on ``args.device`` (``amc.data.make_splits``)."""
    from amc.data import load_cifar10, make_splits, subset

    data = load_cifar10(args.data)
    if train_limit is not None:
        data = subset(data, train_limit)
    return make_splits(data, heldout=heldout, device=args.device)


class Cache:
    """One JSON file per measured row under a folder: a row measured once is read back on every
    rerun, so a long benchmark killed at any point resumes where it stopped (files are written
    atomically: a row is there whole or not at all)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"a cache key is a plain file stem, got {key!r}")
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        return json.loads(p.read_text()) if p.exists() else None

    def put(self, key: str, row: dict[str, Any]) -> dict[str, Any]:
        atomic_write_text(self.path(key), json.dumps(row, indent=1, default=float) + "\n")
        return row

    def row(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached row ``key``, computing and storing it first when missing."""
        got = self.get(key)
        return got if got is not None else self.put(key, compute())

    def rows(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The cached rows among ``keys`` (missing ones left out: the report is then partial)."""
        return {k: r for k in keys if (r := self.get(k)) is not None}


def write_report(out: str | Path, name: str, report: dict[str, Any], markdown: str, *,
                 partial: bool = False) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` (``report`` plus ``machine``, ``written`` and ``partial``) and
    ``<out>/<name>.md`` atomically; a partial report's markdown opens with a line that says so."""
    out = Path(out)
    body = {**report, "machine": report.get("machine", machine_info()),
            "written": time.strftime("%Y-%m-%d %H:%M:%S"), "partial": partial}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(json_path, json.dumps(body, indent=1, default=float) + "\n")
    if partial and not markdown.startswith("**PARTIAL"):
        markdown = "**PARTIAL: rows are missing; rerun the benchmark to complete it.**\n\n" + markdown
    atomic_write_text(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path
