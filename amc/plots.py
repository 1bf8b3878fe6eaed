"""Basic plots as PNG files through matplotlib's Agg backend: weight histograms, sensitivity curves,
parameter-count bars. Each function writes one file atomically and returns its path."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
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
