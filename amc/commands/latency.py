"""``amc latency CHECKPOINT``: median forward latency of a dense checkpoint or a pruned model directory.

CPU: PyTorch eager or onnxruntime at ``--threads`` threads; CUDA: bf16, channels_last, CUDA events.
With ``--lut FILE`` it also predicts the latency from the per-layer lookup table (measuring and
caching missing entries) and prints the prediction error.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency", help="measure a model's forward latency (CPU, GPU, onnxruntime)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="dense checkpoint (.pt / .safetensors) or a directory written by "
                                      "'amc prune --granularity channel'")
    p.add_argument("--model", default=None, help="architecture (default: guessed from the file name or summary)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--lut", default=None, metavar="CSV",
                   help="per-layer latency table to predict from (created / extended as needed)")
    p.set_defaults(func=run)


def load_any(checkpoint: str, model: str | None):
    """A dense checkpoint, or a pruned-model directory (``amc.export.save_pruned``)."""
    from amc.models import load_model

    if Path(checkpoint).is_dir():
        from amc.export.files import load_pruned

        return load_pruned(checkpoint)
    return load_model(model, checkpoint)


def run(args: argparse.Namespace) -> int:
    from amc.errors import AmcError
    from amc.latency import LatencyTable, describe_target, measure

    if args.batch < 1 or args.threads < 1:
        raise AmcError("--batch and --threads must be >= 1")
    model = load_any(args.checkpoint, args.model)
    ms = measure(model, args.device, args.batch, args.threads, args.backend, args.warmup, args.runs)
    target = describe_target(args.device, args.threads)
    print(f"{ms:.3f} ms  median of {args.runs} runs after {args.warmup} warm-up; {args.backend} on {target}, "
          f"batch {args.batch}" + (" (bf16, channels_last)" if args.device.startswith("cuda") else ""))
    if args.lut:
        if args.backend != "torch":
            raise AmcError("--lut predicts PyTorch latency; use --backend torch")
        lut = LatencyTable(args.lut, args.device, args.batch, args.threads)
        pred = lut.predict(model)
        print(f"{pred:.3f} ms  predicted from {args.lut} (sum of per-layer entries; error {pred / ms - 1:+.1%})")
    return 0
