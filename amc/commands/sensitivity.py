"""``amc sensitivity``: per-layer fine-grained sensitivity scan on the held-out split -> CSV + plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from amc.commands.common import add_data_args, add_model_args, load_model_arg, load_splits, progress
from amc.io import atomic_write_text
from amc.layers import prunable_names
from amc.plots import sensitivity_curves
from amc.sensitivity import DEFAULT_SPARSITIES, finegrained_scan


def parse_floats(text: str) -> list[float]:
    from amc.errors import AmcError

    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AmcError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not 0 <= v < 1 for v in vals):
        raise AmcError(f"sparsities must be in [0, 1): {text!r}")
    return vals


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="accuracy vs. sparsity of each layer pruned alone")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--sparsities", default=",".join(str(s) for s in DEFAULT_SPARSITIES))
    p.add_argument("--limit", type=int, default=None, help="use the first N held-out images")
    p.add_argument("--out", default="runs/sensitivity", help="output folder (CSV and PNG)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sparsities = parse_floats(args.sparsities)
    model = load_model_arg(args)
    splits = load_splits(args)
    loader = splits.loader("heldout", args.batch_size, limit=args.limit)
    names = prunable_names(model)
    with progress("sensitivity scan", total=len(names) * len(sparsities)) as advance:
        df = finegrained_scan(model, loader, names, sparsities,
                              on_point=lambda n, s, a: advance(info=f"{n} @ {s:.2f}: {a:.2%}"))
    out = Path(args.out)
    atomic_write_text(out / "sensitivity.csv", df.to_csv(index=False))
    sensitivity_curves(df, out / "sensitivity.png")
    print(df.pivot(index="layer", columns="ratio", values="accuracy").loc[names].round(4).to_string())
    print(f"wrote {out / 'sensitivity.csv'} and {out / 'sensitivity.png'}")
    return 0
