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

Where a script keeps an older layout (its JSON indentation, no ``written`` stamp, a cache of nested
folders), the same helpers take it as an argument: ``write_report(..., stamp=False, indent=2)``,
``Cache(folder, indent=None)``, ``cache.path("task/s0/row")``; ``write_json`` / ``write_text`` write any
other file atomically, and ``ints("0,1,2")`` reads a comma list of seeds.
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

__all__ = ["CIFAR10", "MODELS", "ROOT", "SHARED", "Cache", "cifar10", "default_device", "ints", "machine_info",
           "markdown_table", "parser", "write_json", "write_report", "write_text"]

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared"
CIFAR10 = SHARED / "datasets" / "cifar10-jpeg.tar.xz"
MODELS = SHARED / "models"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parser(doc: str | None, *, cache: str | None = None, out: str | None = "reports", device: str | bool | None = None,
           data: bool = True, report_only: bool | None = None, quick: str | None = None,
           seeds: str | None = None, threads: int | None = None) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark takes: ``--data`` (the shared CIFAR-10),
    ``--out`` (where the report goes), ``--device`` (a string: its default) and, for a benchmark that
    caches its rows (``cache`` given: its default folder), ``--cache`` and ``--report-only``. Each of
    ``data=False``, ``out=None``, ``device=False``, ``report_only=False`` leaves its flag out;
    ``quick`` (its help text), ``seeds`` (the default comma list) and ``threads`` (the default count)
    add ``--quick``, ``--seeds`` and ``--threads``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if data:
        ap.add_argument("--data", default=str(CIFAR10), help="the data set (default: the shared CIFAR-10)")
    if out is not None:
        ap.add_argument("--out", default=str(ROOT / out), help="folder of the report (<name>.md and <name>.json)")
    if device is not False:
        ap.add_argument("--device", default=device if isinstance(device, str) else default_device())
    if cache is not None:
        ap.add_argument("--cache", default=str(ROOT / cache), help="folder of the cached rows (a rerun resumes)")
    if report_only or (report_only is None and cache is not None):
        ap.add_argument("--report-only", action="store_true", help="write the report from the cache; measure nothing")
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)
    if seeds is not None:
        ap.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default {seeds})")
    if threads is not None:
        ap.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    return ap


def ints(text: str) -> list[int]:
    """A comma list of integers (``--seeds 0,1,2``); empty items are skipped."""
    return [int(x) for x in text.split(",") if x.strip()]


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
    atomically: a row is there whole or not at all). A key is a file stem, or a relative path of
    stems (``"macs03/s0/row_amc"``) for a cache of nested folders; ``indent`` and ``default`` are
    ``json.dumps``'s."""

    def __init__(self, folder: str | Path, *, indent: int | None = 1,
                 default: Callable[[Any], Any] | None = float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.indent, self.default = indent, default

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(not p or p.startswith(".") for p in parts):
            raise ValueError(f"a cache key is a plain file stem (or a relative path of them), got {key!r}")
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        return json.loads(p.read_text()) if p.exists() else None

    def put(self, key: str, row: dict[str, Any]) -> dict[str, Any]:
        write_json(self.path(key), row, indent=self.indent, default=self.default)
        return row

    def row(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached row ``key``, computing and storing it first when missing."""
        got = self.get(key)
        return got if got is not None else self.put(key, compute())

    def rows(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The cached rows among ``keys`` (missing ones left out: the report is then partial)."""
        return {k: r for k in keys if (r := self.get(k)) is not None}


def run_in_child(target: Callable[..., None], args: tuple, limit_s: float) -> tuple[Any, float, int | None]:
    """``target(*args, queue)`` in a forked child that puts its row on ``queue``, killed when no row came
    within ``limit_s`` seconds: (the row or None, seconds taken, the child's exit code)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    t0 = time.perf_counter()
    p.start()
    try:
        row = q.get(timeout=limit_s)
    except Exception:  # queue.Empty past the limit, or a child that died before putting its row
        row = None
    p.join(5)
    if p.is_alive():
        p.kill()
        p.join()
    return row, time.perf_counter() - t0, p.exitcode


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (its folder made first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1, default: Callable[[Any], Any] | None = float,
               newline: bool = True) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``newline``: end the file with one)."""
    return write_text(path, json.dumps(obj, indent=indent, default=default) + ("\n" if newline else ""))


def markdown_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """The lines of a markdown table: a header row, its ``| --- |`` rule and one line per row."""
    header = list(header)
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def write_report(out: str | Path, name: str, report: dict[str, Any], markdown: str | None, *,
                 partial: bool = False, stamp: bool = True, indent: int | None = 1,
                 default: Callable[[Any], Any] | None = float, newline: bool = True) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` (``report`` plus ``machine``, ``written`` and ``partial``; with
    ``stamp=False``, ``report`` as it is) and ``<out>/<name>.md`` (unless ``markdown`` is None)
    atomically; a partial report's markdown opens with a line that says so."""
    out = Path(out)
    body = report if not stamp else {**report, "machine": report.get("machine", machine_info()),
                                     "written": time.strftime("%Y-%m-%d %H:%M:%S"), "partial": partial}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    write_json(json_path, body, indent=indent, default=default, newline=newline)
    if markdown is not None:
        if partial and not markdown.startswith("**PARTIAL"):
            markdown = "**PARTIAL: rows are missing; rerun the benchmark to complete it.**\n\n" + markdown
        write_text(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path
