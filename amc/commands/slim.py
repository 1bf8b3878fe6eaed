"""``amc slim``: network slimming: train with an L1 penalty on the BatchNorm scales, prune the
channels with the smallest scales (one global threshold) to a MACs budget, then finetune."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from amc.commands.common import (
    add_data_args,
    add_model_args,
    device_of,
    finetune_progress,
    load_model_arg,
    load_splits,
)
from amc.commands.procedures import add_train_args, save_model, train_config, write_summary
from amc.errors import BudgetError, PolicyError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slim", help="network slimming: BN-scale L1 penalty, then channel pruning to a budget")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--macs", type=float, required=True, help="keep at most this fraction of the dense MACs")
    p.add_argument("--penalty", type=float, default=1e-4, help="lambda of the L1 penalty on |gamma| (default 1e-4)")
    p.add_argument("--round-to", type=int, default=8, help="kept channels rounded to this multiple (default 8)")
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="finetune after pruning (default 1; 0 = none)")
    add_train_args(p, epochs=1.0)
    p.add_argument("--out", default="runs/slim", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from amc.layers import count_macs
    from amc.procedures import slim_plan, slim_train
    from amc.pruners.channel import prune_channels
    from amc.train import evaluate, finetune

    if not 0 < args.macs <= 1:
        raise BudgetError(f"--macs must be in (0, 1], got {args.macs}")
    if args.penalty < 0 or args.round_to < 1 or args.finetune_epochs < 0:
        raise PolicyError("--penalty must be >= 0, --round-to >= 1 and --finetune-epochs >= 0")
    cfg = train_config(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    model = load_model_arg(args)
    dense_macs = count_macs(model)[0]
    splits = load_splits(args)
    train = splits.loader("train", args.batch_size, seed=args.seed, limit=args.train_limit)
    test = splits.loader("test", args.batch_size, limit=args.eval_limit)
    torch.manual_seed(args.seed)
    stats = slim_train(model, train, cfg, args.penalty)
    plan = slim_plan(model.cpu(), args.macs, args.round_to)
    small = prune_channels(model, plan).to(device_of(args))
    summary: dict = {"checkpoint": str(args.checkpoint), "penalty": args.penalty, "epochs": cfg.epochs,
                     "mean_abs_gamma_after_training": stats.get("mean_abs_gamma"),
                     "macs_fraction": count_macs(small)[0] / dense_macs,
                     "accuracy_before_finetune": evaluate(small, test)}
    if args.finetune_epochs > 0:
        with finetune_progress() as on_step:
            finetune(small, train, train_config(args, args.finetune_epochs), on_step=on_step)
        summary["accuracy"] = evaluate(small, test)
    plan.save(out / "plan.json")
    save_model(small, out / "model.pt")
    summary["seconds"] = time.perf_counter() - t0
    write_summary(out, summary)
    acc = summary.get("accuracy", summary["accuracy_before_finetune"])
    print(f"slimmed to {summary['macs_fraction']:.2%} of dense MACs: accuracy {acc:.2%} -> {out}")
    return 0
