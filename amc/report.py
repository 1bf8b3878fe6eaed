"""Run reports: one ``report.md`` with tables and PNG plots (matplotlib, Agg backend) in a run folder.

Lifecycle: build sections from what a run produced -> ``write_report(run_dir, *sections)`` ->
``run_dir/report.md`` plus one PNG (and, for data sections, one CSV) per section, each written
atomically. A section is a small frozen dataclass with ``render(run_dir, slug) -> markdown``:

- ``Text(title, body)``, ``Table(title, frame)``: prose and tables (e.g. metrics, stage timings).
- ``WeightDistributions(dense, pruned)``: per-layer weight histograms before/after (``amc.plots``).
- ``Sensitivity(curves)``: accuracy vs. per-layer ratio; columns ``layer``, ``ratio`` (or
  ``sparsity``), ``accuracy`` (``amc.plots``).
- ``SearchProgress(trials)``: reward per episode; columns ``episode`` (or Optuna's ``trial``),
  ``reward``, ``feasible`` and optionally ``best`` (running best value, or a flag marking new bests).
- ``PolicyBars(policies)``: per-layer ratios, one bar group per layer, one colour per policy.
- ``AccuracyVsBudget(results)``: accuracy against the budget reached; columns ``method``,
  ``budget`` (fraction of dense), ``accuracy``; optional ``dense_accuracy`` draws a reference line.
- ``Image(title, path)``: an existing PNG copied in.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from amc.io import atomic_write_bytes, atomic_write_text
from amc.layers import prunable_names
from amc.plots import label_axes, save_figure

MAX_HIST_LAYERS = 16  # weight histograms: at most this many layers (evenly spaced) keep the grid readable


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g", index: bool = False) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    df = frame.reset_index() if index else frame

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        if isinstance(v, bool):
            return "yes" if v else "no"
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def _img(title: str, name: str) -> str:
    return f"![{title}]({name})"


@dataclass(frozen=True)
class Text:
    title: str
    body: str

    def render(self, run_dir: Path, slug: str) -> str:
        return self.body


@dataclass(frozen=True)
class Table:
    title: str
    frame: pd.DataFrame
    note: str = ""
    floatfmt: str = ".4g"
    csv: bool = False  # also write <slug>.csv

    def render(self, run_dir: Path, slug: str) -> str:
        parts = [markdown_table(self.frame, self.floatfmt)]
        if self.csv:
            parts.append(f"Data: [{slug}.csv]({slug}.csv)")
            _write_csv(self.frame, run_dir / f"{slug}.csv")
        if self.note:
            parts.append(self.note)
        return "\n\n".join(parts)


@dataclass(frozen=True)
class Image:
    title: str
    path: Path
    caption: str = ""

    def render(self, run_dir: Path, slug: str) -> str:
        src = Path(self.path)
        dst = run_dir / f"{slug}{src.suffix}"
        if src.resolve() != dst.resolve():
            atomic_write_bytes(dst, src.read_bytes())
        return "\n\n".join(filter(None, [_img(self.title, dst.name), self.caption]))


@dataclass(frozen=True)
class WeightDistributions:
    dense: nn.Module
    pruned: nn.Module | None = None
    names: tuple[str, ...] | None = None
    title: str = "Weight distributions"

    def render(self, run_dir: Path, slug: str) -> str:
        from amc.plots import weight_histograms

        names = list(self.names) if self.names is not None else prunable_names(self.dense)
        if len(names) > MAX_HIST_LAYERS:
            step = (len(names) - 1) / (MAX_HIST_LAYERS - 1)
            names = [names[round(i * step)] for i in range(MAX_HIST_LAYERS)]
        path = weight_histograms(self.dense, run_dir / f"{slug}.png", pruned=self.pruned, names=names)
        note = "Blue: dense weights; red: the compressed model's non-zero weights (density-normalised)."
        return f"{_img(self.title, path.name)}\n\n{note}"


@dataclass(frozen=True)
class Sensitivity:
    curves: pd.DataFrame  # layer, ratio | sparsity, accuracy
    title: str = "Sensitivity"

    def render(self, run_dir: Path, slug: str) -> str:
        from amc.plots import sensitivity_curves

        df = self.curves
        _require(df, ["layer", "accuracy"], self.title)
        if "ratio" not in df.columns:
            if "sparsity" not in df.columns:
                raise ValueError(f"{self.title}: needs a 'ratio' or 'sparsity' column")
            df = df.rename(columns={"sparsity": "ratio"})
        _write_csv(df, run_dir / f"{slug}.csv")
        path = sensitivity_curves(df, run_dir / f"{slug}.png")
        worst = (df.groupby("layer", sort=False)["accuracy"].min().sort_values().head(3))
        lines = ", ".join(f"{k} ({100 * v:.1f}%)" for k, v in worst.items())
        return (f"{_img(self.title, path.name)}\n\nEach layer pruned alone. Most sensitive (lowest accuracy "
                f"at the highest ratio tried): {lines}. Data: [{slug}.csv]({slug}.csv)")


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: data lacks columns {missing} (has {list(df.columns)})")


def _progress_frame(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Trials sorted by episode (Optuna's ``trial`` column accepted as one) and a feasibility mask
    (rows without a finite reward, such as failed or running trials, count as infeasible)."""
    df = trials.rename(columns={"trial": "episode"}) if "episode" not in trials.columns else trials
    _require(df, ["episode", "reward"], "search progress")
    df = df.sort_values("episode")
    reward = pd.to_numeric(df["reward"], errors="coerce")
    feasible = df["feasible"].fillna(False).astype(bool) if "feasible" in df.columns else reward.notna()
    return df.assign(reward=reward), feasible & reward.notna()


def search_progress_figure(trials: pd.DataFrame) -> Figure:
    """Reward per episode: feasible points, infeasible ones, and the running best."""
    df, feasible = _progress_frame(trials)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.scatter(df.loc[feasible, "episode"], df.loc[feasible, "reward"], s=12, color="tab:blue", label="feasible")
    if (~feasible).any():
        ax.scatter(df.loc[~feasible, "episode"], df.loc[~feasible, "reward"], s=14, marker="x",
                   color="tab:gray", label="over budget")
    if "best" in df.columns and pd.api.types.is_numeric_dtype(df["best"]) and df["best"].dtype != bool:
        best = df["best"]
    else:
        best = df["reward"].where(feasible).cummax()
    ax.step(df["episode"], best, where="post", color="tab:red", label="best so far")
    label_axes(ax, "episode / trial", "reward", "search progress")
    ax.legend(fontsize=8)
    return fig


@dataclass(frozen=True)
class SearchProgress:
    trials: pd.DataFrame  # episode, reward, feasible, best
    title: str = "Search progress"

    def render(self, run_dir: Path, slug: str) -> str:
        path = save_figure(search_progress_figure(self.trials), run_dir / f"{slug}.png")
        _write_csv(self.trials, run_dir / f"{slug}.csv")
        df, feasible = _progress_frame(self.trials)
        n, nf = len(df), int(feasible.sum())
        best = df.loc[feasible, "reward"].max() if nf else float("nan")
        at = int(df.loc[df.loc[feasible, "reward"].idxmax(), "episode"]) if nf else None
        summary = (f"{n} episodes, {nf} within budget; best reward {best:.4g}" + (f" at episode {at}" if nf else "")
                   + f". Data: [{slug}.csv]({slug}.csv)")
        return f"{_img(self.title, path.name)}\n\n{summary}"


def policy_figure(policies: Mapping[str, Mapping[str, float]], ylabel: str = "ratio") -> Figure:
    """Grouped bars: one group per layer (in first-seen order), one bar per policy."""
    layers: list[str] = []
    for pol in policies.values():
        layers += [name for name in pol if name not in layers]
    k = max(len(policies), 1)
    width = 0.8 / k  # the groups fill 80% of each layer's slot
    fig = Figure(figsize=(max(6.0, 0.45 * len(layers) * max(1, k / 2)), 4))
    ax = fig.subplots()
    for i, (label, pol) in enumerate(policies.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(layers))]
        ax.bar(xs, [pol.get(name, 0.0) for name in layers], width=width, label=label)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title("per-layer policy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


@dataclass(frozen=True)
class PolicyBars:
    policies: Mapping[str, Mapping[str, float]]  # label -> {layer: ratio}
    title: str = "Per-layer policy"
    ylabel: str = "pruning ratio"

    def render(self, run_dir: Path, slug: str) -> str:
        path = save_figure(policy_figure(self.policies, self.ylabel), run_dir / f"{slug}.png")
        frame = pd.DataFrame(self.policies).rename_axis("layer").reset_index()
        return f"{_img(self.title, path.name)}\n\n{markdown_table(frame, '.3f')}"


def accuracy_budget_figure(results: pd.DataFrame) -> Figure:
    _require(results, ["method", "budget", "accuracy"], "accuracy vs. budget")
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for method, g in results.groupby("method", sort=False):
        g = g.sort_values("budget")
        ax.plot(100 * g["budget"], 100 * g["accuracy"], marker="o", label=str(method))
    if "dense_accuracy" in results.columns and results["dense_accuracy"].notna().any():
        ax.axhline(100 * float(results["dense_accuracy"].dropna().iloc[0]), color="black", ls="--", lw=1,
                   label="dense")
    label_axes(ax, "budget reached (% of dense)", "accuracy (%)", "accuracy vs. budget")
    ax.legend(fontsize=8)
    return fig


@dataclass(frozen=True)
class AccuracyVsBudget:
    results: pd.DataFrame  # method, budget, accuracy[, dense_accuracy]
    title: str = "Accuracy vs. budget"

    def render(self, run_dir: Path, slug: str) -> str:
        path = save_figure(accuracy_budget_figure(self.results), run_dir / f"{slug}.png")
        _write_csv(self.results, run_dir / f"{slug}.csv")
        return f"{_img(self.title, path.name)}\n\n{markdown_table(self.results)}"


Section = Text | Table | Image | WeightDistributions | Sensitivity | SearchProgress | PolicyBars | AccuracyVsBudget


def _slug(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "section"
    slug, i = base, 2
    while slug in taken or slug == "report":  # never collide with report.md's own name
        slug, i = f"{base}_{i}", i + 1
    taken.add(slug)
    return slug


@dataclass(frozen=True)
class ReportResult:
    path: Path
    files: list[Path] = field(default_factory=list)  # everything written, report.md last


def write_report(run_dir: str | os.PathLike, *sections: Section, title: str = "Compression report",
                 intro: str = "", filename: str = "report.md", prefix: str = "") -> ReportResult:
    """Render ``sections`` in order into ``run_dir/<filename>`` (plots and CSVs beside it, their
    names starting with ``prefix``, so that several reports can share one folder)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    before = {p: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    taken: set[str] = set()
    parts = [f"# {title}"]
    if intro:
        parts.append(intro)
    for section in sections:
        slug = prefix + _slug(section.title, taken)
        parts.append(f"## {section.title}\n\n{section.render(run_dir, slug)}")
    path = run_dir / filename
    atomic_write_text(path, "\n\n".join(parts) + "\n")
    written = sorted(p for p in run_dir.iterdir()
                     if p != path and (p not in before or p.stat().st_mtime_ns != before[p]))
    return ReportResult(path, [*written, path])



def recipe_table(recipe: Any) -> pd.DataFrame:
    """One row per recorded fact of an ``amc.recipe.Recipe``: model, budget, search, achieved metrics."""
    from dataclasses import asdict

    rows: list[tuple[str, Any]] = [("architecture", recipe.model.arch), ("granularity", recipe.granularity),
                                   ("criterion", recipe.criterion), ("layers pruned", len(recipe.layers))]
    if recipe.budget is not None:
        rows.append(("budget", str(recipe.budget)))
    if recipe.search is not None:
        rows.append(("search", f"{recipe.search.method}, {recipe.search.episodes} episodes, seed {recipe.search.seed}"))
    ft = recipe.finetune
    sched = f", then {ft.iterative.kind} x{ft.iterative.steps}" if ft.iterative is not None else ""
    rows.append(("finetune", f"{ft.epochs:g} epochs, lr {ft.lr:g}, {ft.schedule}{sched}"))
    rows += [(k, v) for k, v in asdict(recipe.metrics).items() if v is not None]
    return pd.DataFrame(rows, columns=["item", "value"]).astype({"value": str})


def run_report(
    run_dir: str | os.PathLike,
    recipe: Any,
    dense: nn.Module | None = None,
    compressed: nn.Module | None = None,
    trials: pd.DataFrame | None = None,
    sensitivity: pd.DataFrame | None = None,
    results: pd.DataFrame | None = None,
    timings: Mapping[str, float] | None = None,
    files: Mapping[str, int] | None = None,
    baseline_policies: Mapping[str, Mapping[str, float]] | None = None,
    title: str | None = None,
) -> ReportResult:
    """The standard report of one compression run: recipe summary, stage timings, files, search
    progress, policy, sensitivity, weight distributions, accuracy vs. budget (each when given)."""
    sections: list[Section] = [Table("Result", recipe_table(recipe))]
    if timings:
        frame = pd.DataFrame({"stage": list(timings), "seconds": [float(v) for v in timings.values()]})
        sections.append(Table("Wall time per stage", frame, floatfmt=".2f"))
    if files:
        sections.append(Table("Files", pd.DataFrame({"file": list(files), "bytes": [int(v) for v in files.values()]})))
    if trials is not None and len(trials):
        sections.append(SearchProgress(trials))
    policies = {"chosen": recipe.policy, **(baseline_policies or {})}
    sections.append(PolicyBars(policies))
    if sensitivity is not None and len(sensitivity):
        sections.append(Sensitivity(sensitivity))
    if dense is not None:
        sections.append(WeightDistributions(dense, compressed))
    if results is not None and len(results):
        sections.append(AccuracyVsBudget(results))
    return write_report(run_dir, *sections, title=title or f"Compression report: {recipe.model.arch}")
