"""``amc prune --granularity channel``: physically smaller model from a MACs target or a policy file.

``amc.commands.prune`` (the fine-grained path) calls ``add_args(parser)`` to register the flags
below and ``run(args)`` when ``--granularity channel`` is chosen. ``args`` also carries
``checkpoint``, ``model``, ``data``, ``heldout``, ``device``, ``batch_size``, ``finetune_epochs``
and ``out`` (a directory).

Writes to ``out``: ``model.safetensors`` + ``config.json`` (``amc.export.save_pruned``: reload
with ``amc.export.load_pruned``), ``channel_plan.json`` (the kept channel indices: re-applies to a
fresh dense model with ``amc.pruners.channel.prune_channels``), ``model.onnx`` (checked against
onnxruntime) and ``summary.json`` (accuracy before/after finetuning, MACs, parameters, notes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from amc.errors import BudgetError, PolicyError


def add_args(p: argparse.ArgumentParser) -> None:
    from amc.importance import CHANNEL_CRITERIA

    g = p.add_argument_group("channel pruning (--granularity channel)")
    g.add_argument("--macs", type=float, default=None, metavar="FRACTION",
                   help="keep at most this fraction of the dense MACs with a uniform ratio (default 0.5 "
                        "when no --channel-policy is given; with one, a budget the policy must meet)")
    g.add_argument("--criterion", choices=sorted(CHANNEL_CRITERIA), default="l2",
                   help="channel importance: l1/l2 of the layer's filters, l2_next (next layer's input "
                        "slice), bn (|gamma|), taylor (|w*grad|), group_l2 (every coupled slice); default l2")
    g.add_argument("--round-to", type=int, default=8, metavar="N",
                   help="kept channels rounded to a multiple of N, never below N (1 = off; default 8)")
    g.add_argument("--channel-policy", default=None, metavar="FILE",
                   help="YAML or JSON {layer name: fraction of output channels to remove} "
                        "(or {policy: {...}}); layers sharing a channel group take the largest ratio")
    g.add_argument("--reconstruct", type=int, default=0, metavar="IMAGES",
                   help="refit the weights of every layer that lost input channels by least squares so "
                        "it reproduces the dense layer's outputs, from IMAGES training images (AMC's "
                        "recovery step; 0 = off, 1024 is plenty)")


def run(args: argparse.Namespace) -> int:
    import torch

    from amc.commands.common import check_distill, device_of, finetune_progress, load_model_arg, load_splits
    from amc.export.files import save_pruned
    from amc.export.onnx import check_onnx, export_onnx
    from amc.io import atomic_write_text
    from amc.layers import count_macs, count_params
    from amc.models import resolve_arch
    from amc.policy import load_policy_file
    from amc.pruners.channel import (
        channel_table,
        find_uniform_ratio,
        needs_data,
        plan_channels,
        plan_cost,
        prune_channels,
        uniform_policy,
    )
    from amc.train import FinetuneConfig, evaluate, finetune

    if args.round_to < 1:
        raise PolicyError(f"--round-to must be >= 1, got {args.round_to}")
    n_recon = int(getattr(args, "reconstruct", 0) or 0)
    if n_recon < 0:
        raise PolicyError(f"--reconstruct takes a number of images >= 0, got {n_recon}")
    if args.macs is not None and not 0 < args.macs <= 1:
        raise BudgetError(f"--macs must be in (0, 1], got {args.macs}")
    device = device_of(args)
    model = load_model_arg(args)
    distill = float(getattr(args, "distill", 0.0) or 0.0)
    check_distill(distill)
    table = channel_table(model, torch.randn(1, 3, 32, 32, device=device))
    if args.channel_policy:
        policy = load_policy_file(args.channel_policy)
        how = f"policy file {args.channel_policy}"
    else:
        frac = args.macs if args.macs is not None else 0.5
        ratio = find_uniform_ratio(table, frac, args.round_to)
        policy = uniform_policy(table, ratio)
        how = f"uniform ratio {ratio:.4f} for <= {frac:.1%} of dense MACs"
    splits = load_splits(args)
    loader = splits.loader("heldout", args.batch_size) if needs_data(args.criterion) else None
    plan = plan_channels(model, policy, args.criterion, args.round_to, loader=loader)
    cost = plan_cost(table, plan)
    if args.macs is not None and cost["macs"] > args.macs * table.dense_macs:
        raise BudgetError(f"the policy keeps {cost['macs'] / table.dense_macs:.1%} of dense MACs, "
                          f"over the --macs budget of {args.macs:.1%}")
    small = prune_channels(model, plan)
    test = splits.loader("test", args.batch_size, limit=getattr(args, "eval_limit", None))
    dense_acc = evaluate(model, test)
    recon: dict[str, Any] = {}
    if n_recon > 0:
        from amc.pruners.reconstruct import reconstruct

        recon["acc_before"] = evaluate(small, test)
        calib = splits.loader("train", args.batch_size, shuffle=True, augment=False)
        rep = reconstruct(model, small, plan, calib, images=n_recon)
        recon.update(images=n_recon, layers={k: {"rel_error_before": a, "rel_error_after": b}
                                             for k, (a, b) in rep.layers.items()}, notes=rep.notes)
    before = evaluate(small, test)
    epochs = float(getattr(args, "finetune_epochs", 0) or 0)
    if epochs > 0:
        cfg = FinetuneConfig(epochs=epochs, lr=getattr(args, "lr", None) or FinetuneConfig.lr, distill_weight=distill)
        with finetune_progress() as on_step:
            finetune(small, splits.loader("train", args.batch_size), cfg, teacher=model if distill > 0 else None,
                     on_step=on_step)
    after = evaluate(small, test) if epochs > 0 else before
    macs, params = count_macs(small)[0], count_params(small)
    summary = {
        "granularity": "channel", "how": how, "criterion": args.criterion, "round_to": args.round_to,
        "policy": policy, "dense": {"acc": dense_acc, "macs": table.dense_macs, "params": table.dense_params},
        "acc_before_finetune": before, "acc_after_finetune": after, "finetune_epochs": epochs,
        "distill": distill, "reconstruction": recon or None,
        "macs": macs, "params": params, "macs_fraction": macs / table.dense_macs,
        "params_fraction": params / table.dense_params, "notes": plan.notes,
    }
    model_name = resolve_arch(args.model, args.checkpoint)
    out = Path(args.out)
    small = small.cpu().eval()
    export = save_pruned(small, model_name, out)
    plan.save(out / "channel_plan.json")
    onnx_path = export_onnx(small, out / "model.onnx")
    diff = check_onnx(small, onnx_path)
    summary.update(model=model_name, file_bytes=export.file_bytes, onnx_max_abs_diff=diff)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    for note in plan.notes:
        print(f"note: {note}")
    print(f"channel pruning ({how}, criterion {args.criterion}, round to {args.round_to}): "
          f"MACs {macs / 1e6:.2f}M ({macs / table.dense_macs:.1%} of dense), "
          f"params {params:,} ({params / table.dense_params:.1%})")
    for note in recon.get("notes", []):
        print(f"note: {note}")
    if recon:
        print(f"least-squares reconstruction from {n_recon} images: {len(recon['layers'])} layers refitted, "
              f"test accuracy {recon['acc_before']:.2%} -> {before:.2%}")
    print(f"test accuracy: dense {dense_acc:.2%}, pruned {before:.2%}"
          + (f", after {epochs:g} finetune epochs {after:.2%}" if epochs > 0 else ""))
    print(f"wrote {out}/: model.safetensors + config.json ({export.file_bytes:,} bytes), channel_plan.json, "
          f"model.onnx (onnxruntime max diff {diff:.1e}), summary.json")
    return 0

