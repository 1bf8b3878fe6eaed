"""``amc scratch RECIPE``: the recipe's pruned architecture, randomly initialised and trained from
scratch (the "Rethinking the Value of Network Pruning" comparison)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from amc.commands.common import add_data_args, device_of, finetune_progress, load_splits
from amc.commands.procedures import add_train_args, save_model, train_config, write_summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scratch", help="train a recipe's pruned architecture from a random initialisation")
    p.add_argument("recipe", help="recipe.yaml (channel: the smaller model; fine / nm: the masks)")
    p.add_argument("--checkpoint", default=None,
                   help="dense checkpoint (fine / nm recipes: their masks are rebuilt from its weights)")
    add_data_args(p)
    add_train_args(p, epochs=1.0, lr=0.1)
    p.add_argument("--out", default="runs/scratch", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.layers import count_params
    from amc.procedures import scratch_model
    from amc.recipe import load_recipe
    from amc.train import evaluate, finetune

    cfg = train_config(args)
    recipe = load_recipe(args.recipe, args.checkpoint)
    t0 = time.perf_counter()
    out = Path(args.out)
    model, masks = scratch_model(recipe, args.checkpoint, args.seed)
    splits = load_splits(args)
    dev = device_of(args)
    model = model.to(dev)
    masks = {k: v.to(dev) for k, v in masks.items()}
    train = splits.loader("train", args.batch_size, seed=args.seed, limit=args.train_limit)
    test = splits.loader("test", args.batch_size, limit=args.eval_limit)
    with finetune_progress("train") as on_step:
        finetune(model, train, cfg, masks=masks or None, on_step=on_step)
    summary = {"recipe": str(args.recipe), "granularity": recipe.granularity, "epochs": cfg.epochs, "lr": cfg.lr,
               "seed": args.seed, "params": count_params(model), "accuracy": evaluate(model, test),
               "seconds": time.perf_counter() - t0}
    save_model(model, out / "model.pt", masks)
    write_summary(out, summary)
    print(f"{recipe.model.arch} ({recipe.granularity}) from scratch, {cfg.epochs:g} epochs: "
          f"accuracy {summary['accuracy']:.2%} -> {out}")
    return 0
