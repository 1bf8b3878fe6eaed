"""``amc apply RECIPE --checkpoint DENSE``: rebuild a compressed model from its recipe, optionally
finetune as the recipe says, and write the model files (sparse safetensors, or pruned safetensors +
config + ONNX), the recipe with the measured metrics, and a summary."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from torch import nn

from amc.commands.common import add_data_args, device_of, finetune_progress, load_splits
from amc.errors import AmcError
from amc.export.files import export_compressed
from amc.io import atomic_write_text
from amc.layers import count_macs, count_params
from amc.metrics import dense_size_bits, sparse_size_bits
from amc.models import build_model
from amc.recipe import apply_recipe, load_recipe, save_recipe
from amc.train import Masks, evaluate


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="rebuild a compressed model from a recipe (bit for bit), finetune, export")
    p.add_argument("recipe", help="recipe YAML written by amc")
    p.add_argument("--checkpoint", required=True, help="the dense checkpoint the recipe was made from")
    p.add_argument("--force", action="store_true", help="apply even if the checkpoint's sha256 differs")
    p.add_argument("--finetune", action="store_true",
                   help="finetune as the recipe says (needs the data set; default data: the shared CIFAR-10)")
    p.add_argument("--epochs", type=float, default=None,
                   help="override the recipe's finetune epochs (recorded in the written recipe)")
    p.add_argument("--evaluate", action="store_true", help="measure test accuracy (dense, rebuilt, finetuned)")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N (shuffled) test images")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="value type of the exported weights")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx for fine/nm recipes "
                   "(channel recipes always get one)")
    p.add_argument("--out", default="runs/apply", help="output folder")
    add_data_args(p)
    p.set_defaults(func=run)


def _measure(model: nn.Module, dense_bits: int, dense_macs: int, input_shape: tuple[int, ...]) -> dict:
    macs, _ = count_macs(model, input_shape)
    return {"size_fraction": sparse_size_bits(model) / dense_bits, "params": count_params(model),
            "macs": macs, "macs_fraction": macs / dense_macs}


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    recipe = load_recipe(args.recipe, checkpoint=args.checkpoint, force=args.force)
    if args.epochs is not None:
        if args.epochs < 0:
            raise AmcError(f"--epochs must be >= 0, got {args.epochs}")
        recipe = replace(recipe, finetune=replace(recipe.finetune, epochs=args.epochs))
    out = Path(args.out)
    shape = recipe.model.input_shape
    dense = build_model(recipe.model.arch, recipe.model.num_classes).eval()
    dense_bits, (dense_macs, _) = dense_size_bits(dense), count_macs(dense, shape)
    need_data = args.finetune or args.evaluate
    splits = load_splits(args) if need_data else None
    device = device_of(args) if need_data else None
    summary: dict = {"recipe": str(args.recipe), "checkpoint": str(args.checkpoint),
                     "granularity": recipe.granularity, "device": str(device or "cpu")}
    test = None
    if splits is not None and args.evaluate:
        test = splits.loader("test", args.batch_size, limit=args.eval_limit)
    if test is not None:
        from amc.models import load_model

        t = time.perf_counter()
        summary["dense_accuracy"] = evaluate(load_model(recipe.model.arch, args.checkpoint).to(device), test)
        times["evaluate_dense"] = time.perf_counter() - t

    def rebuilt(model: nn.Module, masks: Masks) -> None:
        times["rebuild"] = time.perf_counter() - t
        summary["rebuilt"] = _measure(model, dense_bits, dense_macs, shape)
        if test is not None:
            t_eval = time.perf_counter()
            summary["accuracy_before_finetune"] = evaluate(model, test)
            times["evaluate_rebuilt"] = time.perf_counter() - t_eval

    loader = None
    if args.finetune and splits is not None:
        loader = splits.loader("train", recipe.finetune.batch_size, seed=recipe.finetune.seed)
    t = time.perf_counter()
    with finetune_progress("finetune" if loader is not None else "rebuild") as on_step:
        model, _ = apply_recipe(recipe, args.checkpoint, args.force, loader=loader, device=device,
                                on_step=on_step, on_rebuilt=rebuilt)
    if loader is not None:
        times["finetune"] = time.perf_counter() - t - times["rebuild"] - times.get("evaluate_rebuilt", 0.0)
        if test is not None:
            summary["accuracy"] = evaluate(model, test)
    model = model.cpu()
    t = time.perf_counter()
    files = export_compressed(model, recipe.model.arch, out, recipe.granularity, dtype=args.dtype,
                              onnx=args.onnx or recipe.granularity == "channel", input_shape=shape,
                              num_classes=recipe.model.num_classes)
    times["export"] = time.perf_counter() - t
    final = _measure(model, dense_bits, dense_macs, shape)
    file_bytes = files.get("sparse_bytes", files.get("pruned_bytes"))
    metrics = {"size_fraction": final["size_fraction"], "params": final["params"], "macs": final["macs"],
               "macs_fraction": final["macs_fraction"], "file_bytes": file_bytes}
    for key in ("dense_accuracy", "accuracy_before_finetune", "accuracy"):
        if key in summary:
            metrics[key] = summary[key]
    if loader is None:
        metrics["accuracy"] = None  # this folder's model is not finetuned: see accuracy_before_finetune
    save_recipe(recipe.with_metrics(**metrics), out / "recipe.yaml")
    summary.update(final=final, files={k: v if isinstance(v, int) else str(v) for k, v in files.items()}, times_s=times)
    summary["times_s"]["total"] = time.perf_counter() - t0
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    line = (f"rebuilt {recipe.model.arch} ({recipe.granularity}): size {final['size_fraction']:.2%} of dense, "
            f"MACs {final['macs_fraction']:.2%}, file {file_bytes:,} bytes")
    if "accuracy" in summary:
        line += f", accuracy {summary['accuracy']:.2%}"
    elif "accuracy_before_finetune" in summary:
        line += f", accuracy {summary['accuracy_before_finetune']:.2%} (not finetuned)"
    print(f"{line} -> {out}")
    return 0
