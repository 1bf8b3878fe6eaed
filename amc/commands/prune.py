"""``amc prune``: fine-grained (policy file, size target, global), N:M, or channel pruning, then an
optional finetune with the masks kept; writes the pruned weights, the policy and a summary."""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from amc.commands.common import (
    add_data_args,
    add_model_args,
    check_distill,
    finetune_progress,
    load_model_arg,
    load_splits,
    progress,
)
from amc.commands.sensitivity import parse_floats
from amc.errors import AmcError
from amc.io import atomic_path, atomic_write_text
from amc.layers import count_params, layer_weight, prunable_names
from amc.metrics import layer_sparsity, size_fraction
from amc.policy import load_policy_file, save_policy_file
from amc.pruners.finegrained import apply_policy, global_prune, nm_prune
from amc.sensitivity import auto_policy, finegrained_scan, pick_policy
from amc.train import FinetuneConfig, evaluate, finetune


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a checkpoint (fine-grained, N:M or channel) and finetune")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--granularity", choices=("fine", "nm", "channel"), default="fine")
    g = p.add_argument_group("fine-grained")
    g.add_argument("--policy", default=None, help="YAML/JSON {layer: sparsity}")
    g.add_argument("--size", type=float, default=None,
                   help="size target as a fraction of dense (policy picked from a sensitivity scan)")
    g.add_argument("--picker", choices=("auto", "curves"), default="auto",
                   help="with --size: 'curves' picks from the sensitivity curves alone; 'auto' (default) also "
                        "tries one global magnitude threshold and LAMP, checks each candidate on the whole model "
                        "(BN recalibrated, held-out images) and keeps the best")
    g.add_argument("--calib-images", type=int, default=5120, help="BN recalibration images of the --picker auto check")
    g.add_argument("--global-sparsity", type=float, default=None, help="one magnitude threshold for all layers")
    g.add_argument("--sparsities", default="0.4,0.5,0.6,0.7,0.8,0.85,0.9,0.93,0.95,0.97,0.98",
                   help="scan grid for --size")
    g.add_argument("--nm", default="2:4", help="N:M pattern for --granularity nm")
    g.add_argument("--weight-criterion", choices=("magnitude", "obd", "synflow"), default="magnitude",
                   help="with --size: obd (Optimal Brain Damage, Fisher of a few held-out batches) or synflow "
                        "(iterative, data-free) scores under one global threshold instead of the magnitude picker")
    cp = _channel()
    if cp is not None:
        cp.add_args(p)
    t = p.add_argument_group("finetune")
    t.add_argument("--finetune-epochs", type=float, default=0.0)
    t.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    t.add_argument("--distill", type=float, default=0.0,
                   help="knowledge-distillation weight in [0, 1]: the dense model teaches the finetune "
                   "(0 = labels only)")
    t.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N (shuffled) test images")
    p.add_argument("--out", default="runs/prune", help="output folder")
    p.set_defaults(func=run)


def _channel():
    try:
        from amc.commands import channel_prune
    except ImportError:  # pragma: no cover - channel pruning not installed in this build
        return None
    return channel_prune


def run(args: argparse.Namespace) -> int:
    if args.granularity == "channel":
        cp = _channel()
        if cp is None:
            raise AmcError("channel pruning is not available in this build")
        return cp.run(args)
    check_distill(args.distill)
    chosen = [x is not None for x in (args.policy, args.size, args.global_sparsity)]
    if args.granularity == "fine" and sum(chosen) != 1:
        raise AmcError("give exactly one of --policy FILE, --size FRACTION, --global-sparsity S")
    model = load_model_arg(args)
    teacher = copy.deepcopy(model) if args.distill > 0 and args.finetune_epochs > 0 else None  # the dense model
    splits = load_splits(args)
    out = Path(args.out)
    summary: dict = {"checkpoint": str(args.checkpoint), "granularity": args.granularity, "times_s": {}}
    test = splits.loader("test", args.batch_size, limit=args.eval_limit)
    t0 = time.perf_counter()
    summary["dense_accuracy"] = evaluate(model, test)
    dense_params = count_params(model)
    if args.granularity == "nm":
        try:
            n, m = (int(v) for v in args.nm.split(":"))
        except ValueError:
            raise AmcError(f"--nm must look like 2:4, got {args.nm!r}") from None
        masks, skipped = nm_prune(model, n, m)
        summary["skipped_layers"] = skipped
        policy = {k: 1 - n / m for k in masks}
    elif args.global_sparsity is not None:
        masks = global_prune(model, args.global_sparsity)
        policy = layer_sparsity(model, list(masks))
    elif args.size is not None and args.weight_criterion != "magnitude":
        from amc.importance import prune_by_criterion

        heldout = splits.loader("heldout", args.batch_size)
        masks, policy = prune_by_criterion(model, args.size, args.weight_criterion, loader=heldout)
        summary["weight_criterion"] = args.weight_criterion
    else:
        if args.size is not None:
            sparsities = parse_floats(args.sparsities)
            names = prunable_names(model)
            with progress("sensitivity scan", total=len(names) * len(sparsities)) as advance:
                curves = finegrained_scan(model, splits.loader("heldout", args.batch_size), names, sparsities,
                                          on_point=lambda n, s, a: advance(info=f"{n} @ {s:.2f}"))
            atomic_write_text(out / "sensitivity.csv", curves.to_csv(index=False))
            if args.picker == "auto":
                calib = splits.loader("train", args.batch_size, limit=args.calib_images, shuffle=False, augment=False)
                policy, table = auto_policy(model, curves, args.size, splits.loader("heldout", args.batch_size),
                                            calib=calib, names=names)
                atomic_write_text(out / "candidates.csv", table.to_csv(index=False))
                summary["candidates"] = table.to_dict("records")
                print(f"picked {table.loc[table['chosen'], 'candidate'].item()} of "
                      + ", ".join(f"{r.candidate} {r.score:.4f}" for r in table.itertuples()))
            else:
                params = {n: layer_weight(model, n).numel() for n in names}
                policy = pick_policy(curves, params, dense_params, args.size)
            summary["times_s"]["sensitivity"] = time.perf_counter() - t0
        else:
            policy = load_policy_file(args.policy)
        masks = apply_policy(model, policy)
    summary["policy"] = policy
    summary["size_fraction"] = size_fraction(model)
    summary["accuracy_before_finetune"] = evaluate(model, test)
    if args.finetune_epochs > 0:
        cfg = FinetuneConfig(epochs=args.finetune_epochs, lr=args.lr, distill_weight=args.distill)
        summary["distill"] = args.distill
        t1 = time.perf_counter()
        with finetune_progress() as on_step:
            finetune(model, splits.loader("train", args.batch_size), cfg, masks=masks, teacher=teacher,
                     on_step=on_step)
        summary["times_s"]["finetune"] = time.perf_counter() - t1
        summary["accuracy_after_finetune"] = evaluate(model, test)
        summary["size_fraction_after_finetune"] = size_fraction(model)
    summary["times_s"]["total"] = time.perf_counter() - t0
    from safetensors.torch import save_file

    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    save_policy_file(policy, out / "policy.yaml")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    line = (f"size {summary['size_fraction']:.2%} of dense; accuracy {summary['dense_accuracy']:.2%} dense -> "
            f"{summary['accuracy_before_finetune']:.2%} pruned")
    if "accuracy_after_finetune" in summary:
        line += f" -> {summary['accuracy_after_finetune']:.2%} after {args.finetune_epochs:g} epochs"
    print(line)
    print(f"wrote {out}/model.safetensors, policy.yaml, summary.json")
    return 0
