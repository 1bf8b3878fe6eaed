"""``amc inspect MODEL``: the prunability check — per layer: kind, shapes, params, MACs, and whether
its output channels can be pruned or are held, with the reason.

MODEL is a model reference (``resnet20``, ``torchvision:mobilenet_v2``, ``timm:resnet18``,
``package.module:factory``) or a checkpoint whose file name starts with a zoo name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from amc.errors import AmcError
from amc.inspect import inspect_model
from amc.models import resolve_arch, resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="which layers can be channel-pruned, which are held and why",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model reference or checkpoint (.pt state dict / .safetensors)")
    p.add_argument("--weights", default=None, help="weights to load (.pt state dict or .safetensors)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the "
                   "model's own, or what the weights hold)")
    p.add_argument("--input-size", default="3,32,32", help="C,H,W of one input (default 3,32,32; "
                   "ImageNet models: 3,224,224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def parse_input_size(text: str) -> tuple[int, int, int]:
    try:
        size = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise AmcError(f"--input-size must look like 3,224,224, got {text!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise AmcError(f"--input-size must be three positive numbers C,H,W, got {text!r}")
    return size  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    size = parse_input_size(args.input_size)
    ref, weights = args.model, args.weights
    if Path(ref).suffix in (".pt", ".pth", ".safetensors") or Path(ref).is_file():
        if weights is not None:
            raise AmcError("give the checkpoint as MODEL or as --weights, not both")
        ref, weights = resolve_arch(None, args.model), args.model
    model = resolve_model(ref, num_classes=args.num_classes, weights=weights, input_size=size)
    report = inspect_model(model, torch.randn(1, *size))
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.model} at {'x'.join(map(str, size))}")
    for col in ("layer", "kind", "in", "out", "out hw", "params", "MACs (M)", "prunable", "why / coupled with"):
        t.add_column(col, justify="right" if col in ("in", "out", "params", "MACs (M)") else "left")
    for la in report.layers:
        t.add_row(la.name, la.kind, str(la.in_channels), str(la.out_channels), "x".join(map(str, la.out_hw)),
                  f"{la.params:,}", f"{la.macs / 1e6:.2f}", "yes" if la.prunable else "held", la.reason)
    console = Console(width=max(Console().width, 160))
    console.print(t)
    held = report.held()
    console.print(f"{len(report.layers) - len(held)} of {len(report.layers)} layers prunable in {report.groups} "
                  f"coupled groups ({report.prunable_macs_share:.1%} of {report.dense_macs / 1e6:.2f} M MACs); "
                  f"{len(held)} held")
    return 0
