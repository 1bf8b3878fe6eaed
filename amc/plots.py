"""Basic plots as PNG files through matplotlib's Agg backend: weight histograms, sensitivity curves,
parameter-count bars, and the run report's figures (search progress, per-layer policy, accuracy vs. budget).
Each function writes one file atomically and returns its path, or returns a Figure for the caller."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from amc.io import atomic_path
from amc.layers import layer_weight, prunable_names

DPI = 110  # PNG resolution: sharp on screen, ~50-150 KB per plot


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically and release it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _grid(n: int, size: float = 2.6):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * 0.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title and the light grid every figure of the project uses."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def weight_histograms(model: nn.Module, path: str | os.PathLike, pruned: nn.Module | None = None,
                      names: list[str] | None = None, bins: int = 60) -> Path:
    """Per-layer histograms of weights; with ``pruned``, its non-zero weights overlaid."""
    names = names if names is not None else prunable_names(model)
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names, strict=False):
        w = layer_weight(model, name).detach().float().flatten().cpu().numpy()
        ax.hist(w, bins=bins, color="tab:blue", alpha=0.6, label="dense", density=True)
        if pruned is not None:
            wp = layer_weight(pruned, name).detach().float().flatten().cpu().numpy()
            nz = wp[wp != 0]
            ax.hist(nz, bins=bins, color="tab:red", alpha=0.6, label="pruned (non-zero)", density=True)
            ax.set_title(f"{name}\n{1 - nz.size / max(wp.size, 1):.0%} zero", fontsize=8)
        else:
            ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    fig.suptitle("weight distributions", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def sensitivity_curves(curves: pd.DataFrame, path: str | os.PathLike, xlabel: str = "sparsity") -> Path:
    """Accuracy vs. ratio, one line per layer (columns layer, ratio, accuracy)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, g in curves.groupby("layer", sort=False):
        g = g.sort_values("ratio")
        ax.plot(g["ratio"], 100 * g["accuracy"], marker="o", ms=3, label=str(name))
    label_axes(ax, xlabel, "held-out accuracy (%)", "sensitivity: each layer pruned alone")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def param_bars(model: nn.Module, path: str | os.PathLike, pruned: nn.Module | None = None) -> Path:
    """Weights per prunable layer; with ``pruned``, its non-zero count beside."""
    names = prunable_names(model)
    dense = [layer_weight(model, n).numel() for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs] if pruned is not None else xs, dense, width=0.4 if pruned is not None else 0.7,
           label="dense", color="tab:blue")
    if pruned is not None:
        nz = [int(layer_weight(pruned, n).count_nonzero()) for n in names]
        ax.bar([x + 0.2 for x in xs], nz, width=0.4, label="non-zero after pruning", color="tab:red")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("weights")
    ax.set_title("parameters per layer")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# -- the run report's figures (amc.report) ---------------------------------------------------------
def require_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: data lacks columns {missing} (has {list(df.columns)})")


def progress_frame(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Trials sorted by episode (Optuna's ``trial`` column accepted as one) and a feasibility mask
    (rows without a finite reward, such as failed or running trials, count as infeasible)."""
    df = trials.rename(columns={"trial": "episode"}) if "episode" not in trials.columns else trials
    require_columns(df, ["episode", "reward"], "search progress")
    df = df.sort_values("episode")
    reward = pd.to_numeric(df["reward"], errors="coerce")
    feasible = df["feasible"].fillna(False).astype(bool) if "feasible" in df.columns else reward.notna()
    return df.assign(reward=reward), feasible & reward.notna()


def search_progress_figure(trials: pd.DataFrame) -> Figure:
    """Reward per episode: feasible points, infeasible ones, and the running best."""
    df, feasible = progress_frame(trials)
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


def accuracy_budget_figure(results: pd.DataFrame, metric: str | None = None) -> Figure:
    """Accuracy (in %) against the budget reached; with ``metric`` (a task's score: mAP, minus a loss) the
    ``accuracy`` column holds that score, drawn as it is."""
    require_columns(results, ["method", "budget", "accuracy"], "accuracy vs. budget")
    scale = 1.0 if metric else 100.0
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for method, g in results.groupby("method", sort=False):
        g = g.sort_values("budget")
        ax.plot(100 * g["budget"], scale * g["accuracy"], marker="o", label=str(method))
    if "dense_accuracy" in results.columns and results["dense_accuracy"].notna().any():
        ax.axhline(scale * float(results["dense_accuracy"].dropna().iloc[0]), color="black", ls="--", lw=1,
                   label="dense")
    label_axes(ax, "budget reached (% of dense)", metric or "accuracy (%)", f"{metric or 'accuracy'} vs. budget")
    ax.legend(fontsize=8)
    return fig
