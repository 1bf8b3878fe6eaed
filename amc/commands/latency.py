"""``amc latency CHECKPOINT``: median forward latency of a dense checkpoint or a pruned model directory.

CPU: PyTorch eager or onnxruntime at ``--threads`` threads; CUDA: bf16, channels_last, CUDA events.
With ``--against DENSE`` the model is timed paired with another one (alternating rounds, the median
of the rounds' ratios and its spread): the only speedup worth quoting. With ``--lut FILE`` it also
predicts the latency from the per-layer lookup table (measuring and caching missing entries) and
prints the prediction error.
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
    p.add_argument("--layout", choices=("contiguous", "channels_last"), default="contiguous",
                   help="CPU memory layout of the weights and input")
    p.add_argument("--input-shape", default="3,32,32", help="one input's shape, without the batch (default 3,32,32)")
    p.add_argument("--against", default=None, metavar="DENSE",
                   help="a second checkpoint or pruned directory to time paired with this one (speedup over it)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds of --against (default 7)")
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
    from amc.latency import LatencyTable, Target, describe_target, measure, paired

    if args.batch < 1 or args.threads < 1:
        raise AmcError("--batch and --threads must be >= 1")
    try:
        shape = tuple(int(d) for d in args.input_shape.split(","))
    except ValueError:
        raise AmcError(f"--input-shape must be comma-separated integers, got {args.input_shape!r}") from None
    target = Target.of(args.device, args.backend, threads=args.threads, batch=args.batch, input_shape=shape,
                       layout=args.layout)
    model = load_any(args.checkpoint, args.model)
    ms = measure(model, warmup=args.warmup, runs=args.runs, target=target)
    where = describe_target(args.device, args.threads)
    print(f"{ms:.3f} ms  median of {args.runs} runs after {args.warmup} warm-up; {target.describe()} on {where}"
          + (" (bf16, channels_last)" if target.runtime == "cuda" else ""))
    if args.against:
        other = load_any(args.against, None)
        print(f"paired with {args.against}: " + paired(model, other, target, rounds=args.rounds, runs=args.runs).line())
    if args.lut:
        if target.runtime == "onnxruntime":
            raise AmcError("--lut predicts PyTorch latency; use --backend torch")
        lut = LatencyTable(args.lut, target=target)
        pred = lut.predict(model)
        print(f"{pred:.3f} ms  predicted from {args.lut} (sum of per-layer entries; error {pred / ms - 1:+.1%})")
    return 0
