"""``amc info``: the layer table, size, MACs, and test accuracy when data is given."""

from __future__ import annotations

import argparse
import json

from amc.commands.common import add_model_args, device_of, load_model_arg, load_splits
from amc.layers import count_macs, count_params, layer_table, table_frame
from amc.metrics import MiB, dense_size_bits, global_sparsity, sparse_size_bits
from amc.train import evaluate


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="layer table, size, MACs (and accuracy with --data)")
    add_model_args(p)
    p.add_argument("--data", default=None, help="CIFAR-10 path: also measure test accuracy")
    p.add_argument("--heldout", type=int, default=5000)
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N (shuffled) test images")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model_arg(args)
    table = layer_table(model)
    total_macs, _ = count_macs(model)
    summary: dict[str, float | int | str] = {
        "params": count_params(model),
        "dense_size_mib": dense_size_bits(model) / MiB,
        "sparse_size_mib": sparse_size_bits(model) / MiB,
        "prunable_sparsity": global_sparsity(model),
        "macs": total_macs,
    }
    if args.data is not None:
        splits = load_splits(args)
        summary["test_accuracy"] = evaluate(model, splits.loader("test", args.batch_size, limit=args.limit))
        summary["test_images"] = min(args.limit or len(splits.test_y), len(splits.test_y))
        summary["device"] = str(device_of(args))
    df = table_frame(table)
    if args.json:
        print(json.dumps({"summary": summary, "layers": df.to_dict(orient="records")}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.checkpoint}")
    for col in ("name", "kind", "in", "out", "k", "stride", "params", "MACs (M)", "size share"):
        t.add_column(col, justify="left" if col in ("name", "kind") else "right")
    for r in table:
        t.add_row(r.name, r.kind, str(r.in_channels), str(r.out_channels), str(r.kernel), str(r.stride),
                  f"{r.params:,}", f"{r.macs / 1e6:.2f}", f"{r.size_share:.2%}")
    console = Console()
    console.print(t)
    console.print(f"params {summary['params']:,}  dense size {summary['dense_size_mib']:.2f} MiB  "
                  f"sparse size {summary['sparse_size_mib']:.2f} MiB  MACs {total_macs / 1e6:.2f} M")
    if "test_accuracy" in summary:
        console.print(f"test accuracy {summary['test_accuracy']:.2%} on {summary['test_images']:,} images "
                      f"({summary['device']})")
    return 0
