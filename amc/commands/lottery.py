"""``amc lottery``: the lottery ticket procedure (iterative magnitude pruning with rewinding) and,
with ``--control``, its random-reinit control trained the same way."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from amc.commands.common import add_data_args, add_model_args, finetune_progress, load_model_arg, load_splits
from amc.commands.procedures import add_train_args, check_fraction, save_model, train_config, write_summary
from amc.errors import PolicyError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lottery", help="lottery ticket: iterative magnitude pruning with rewinding (+ control)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--size", type=float, required=True, help="final size as a fraction of dense, in (0, 1)")
    p.add_argument("--rounds", type=int, default=3, help="prune-train rounds (default 3)")
    p.add_argument("--rewind-steps", type=int, default=10,
                   help="rewind to the weights this many steps into the first round's training (default 10)")
    p.add_argument("--control", action="store_true", help="also train the random-reinit control")
    add_train_args(p, epochs=1.0)
    p.add_argument("--out", default="runs/lottery", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from amc.metrics import size_fraction
    from amc.procedures import lottery, random_reinit
    from amc.train import evaluate, finetune

    check_fraction("--size", args.size)
    if args.rounds < 1 or args.rewind_steps < 0:
        raise PolicyError(f"--rounds must be >= 1 and --rewind-steps >= 0, got {args.rounds}, {args.rewind_steps}")
    cfg = train_config(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    model = load_model_arg(args)
    splits = load_splits(args)
    train = splits.loader("train", args.batch_size, seed=args.seed, limit=args.train_limit)
    test = splits.loader("test", args.batch_size, limit=args.eval_limit)
    torch.manual_seed(args.seed)
    res = lottery(model, train, args.size, args.rounds, args.rewind_steps, cfg,
                  on_round=lambda r, s, loss: print(f"round {r}/{args.rounds}: sparsity {s:.2%}, loss {loss:.3f}"))
    summary: dict = {"checkpoint": str(args.checkpoint), "size": args.size, "rounds": args.rounds,
                     "rewind_step": res.rewind_step, "sparsities": res.sparsities, "epochs_per_round": cfg.epochs,
                     "lr": cfg.lr, "seed": args.seed}
    ticket = res.ticket
    with finetune_progress("train ticket") as on_step:
        finetune(ticket, train, cfg, masks=res.masks, on_step=on_step)
    summary["ticket"] = {"accuracy": evaluate(ticket, test), "size_fraction": size_fraction(ticket)}
    save_model(ticket, out / "ticket.pt", res.masks)
    if args.control:
        ctrl = random_reinit(res.ticket, res.masks, args.seed)
        torch.manual_seed(args.seed)
        with finetune_progress("train control") as on_step:
            finetune(ctrl, train, cfg, masks=res.masks, on_step=on_step)
        summary["random_reinit"] = {"accuracy": evaluate(ctrl, test), "size_fraction": size_fraction(ctrl)}
        save_model(ctrl, out / "random_reinit.pt", res.masks)
    summary["seconds"] = time.perf_counter() - t0
    write_summary(out, summary)
    line = f"lottery ticket at size {summary['ticket']['size_fraction']:.2%}: {summary['ticket']['accuracy']:.2%}"
    if args.control:
        line += f"; random reinit: {summary['random_reinit']['accuracy']:.2%}"
    print(f"{line} -> {out}")
    return 0
