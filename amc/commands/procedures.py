"""Shared pieces of ``amc lottery``, ``amc slim`` and ``amc scratch``: training flags, checks, outputs."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.errors import AmcError, PolicyError
from amc.io import atomic_path, atomic_write_text
from amc.train import FinetuneConfig


def add_train_args(p: argparse.ArgumentParser, epochs: float, lr: float = FinetuneConfig.lr) -> None:
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=float, default=epochs, help=f"training epochs (default {epochs:g})")
    t.add_argument("--lr", type=float, default=lr, help=f"peak SGD learning rate, cosine schedule (default {lr:g})")
    t.add_argument("--train-limit", type=int, default=None, help="train on the first N (shuffled) train images")
    t.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N (shuffled) test images")
    t.add_argument("--seed", type=int, default=0)


def train_config(args: argparse.Namespace, epochs: float | None = None) -> FinetuneConfig:
    e = args.epochs if epochs is None else epochs
    if not (math.isfinite(e) and e > 0):
        raise AmcError(f"--epochs must be > 0, got {e}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise AmcError(f"--lr must be > 0, got {args.lr}")
    return FinetuneConfig(epochs=e, lr=args.lr)


def check_fraction(flag: str, v: float) -> float:
    if not (math.isfinite(v) and 0 < v < 1):
        raise PolicyError(f"{flag} must be in (0, 1), got {v}")
    return v


def save_model(model: nn.Module, path: Path, masks: dict[str, torch.Tensor] | None = None) -> None:
    """The state dict (and masks, bool) in one ``torch.save`` file, written atomically; it loads
    with ``torch.load(path, weights_only=True)``."""
    blob: dict[str, Any] = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if masks:
        blob["masks"] = {k: v.detach().cpu().bool() for k, v in masks.items()}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
