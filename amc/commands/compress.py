"""``amc compress CHECKPOINT|MODEL_REF --budget size=0.25|macs=0.5|latency=0.5``: the one button, over ``amc.compress``.

profile -> sensitivity -> search (AMC agent, Optuna, or the sensitivity-picked policy) -> recipe ->
finetune -> export -> report, into one run folder (recipe.yaml, model files, report.md with plots,
trials.csv, summary.json). A size budget prunes weights; MACs, parameter and latency budgets prune
channels so that the model really runs faster.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from amc.commands.common import add_data_args, add_model_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    from amc.pipeline import CompressConfig

    d = CompressConfig()
    p = sub.add_parser("compress", help="one-button compression to a budget", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--weights", default=None,
                   help="with a model reference instead of a checkpoint: its weights (.pt state dict or .safetensors)")
    p.add_argument("--num-classes", type=int, default=None, help="model outputs (default: the data's classes)")
    add_data_args(p)
    p.add_argument("--budget", default=d.budget, help="KIND=FRACTION, KIND in size, macs, params, latency")
    p.add_argument("--method", choices=("amc", "optuna", "sensitivity"), default=d.method)
    p.add_argument("--granularity", choices=("fine", "channel"), default=None,
                   help="default: fine for a size budget, channel otherwise")
    p.add_argument("--episodes", type=int, default=d.episodes, help="AMC episodes or Optuna trials")
    p.add_argument("--warmup", type=int, default=None, help="AMC random warm-up episodes")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--finetune-epochs", type=float, default=d.finetune_epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--distill", type=float, default=d.distill,
                   help="knowledge-distillation weight in [0, 1] of the finetune, the dense model as teacher")
    p.add_argument("--calib-images", type=int, default=d.calib_images, help="BN recalibration images per reward")
    p.add_argument("--eval-images", type=int, default=None, help="held-out images per reward (default: all)")
    p.add_argument("--score-on", choices=("auto", "masked", "physical"), default=d.score_on,
                   help="score channel policies on the masked dense copy or the physically pruned one "
                        "(auto: physical on the CPU with BN recovery)")
    p.add_argument("--test-limit", type=int, default=None, help="test images for the final numbers (default: all)")
    p.add_argument("--upper", type=float, default=d.upper,
                   help="highest per-layer ratio (default 0.9 for channel pruning, 0.98 for fine-grained)")
    p.add_argument("--criterion", default=d.criterion, help="importance: channel l1, l2, l2_next, bn, "
                   "taylor, obd, apoz; fine magnitude (l1/l2 mean it), obd, synflow")
    p.add_argument("--round-to", type=int, default=d.round_to, help="channel multiple (1 = off)")
    p.add_argument("--latency-runs", type=int, default=d.latency_runs)
    p.add_argument("--latency-fit-rounds", type=int, default=d.latency_fit_rounds,
                   help="latency budget: rounds that tighten the chosen policy until the built model meets the "
                        "budget by measurement (0: trust the latency table)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in the run folder)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default=d.export_dtype, help="exported weights")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--out", default=None, help="run folder (default: runs/<model>-<budget>-<method>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.errors import CheckpointError
    from amc.models import resolve_arch
    from amc.pipeline import CompressConfig

    cfg = CompressConfig(budget=args.budget, method=args.method, granularity=args.granularity,
                         episodes=args.episodes, warmup=args.warmup, seed=args.seed,
                         finetune_epochs=args.finetune_epochs, lr=args.lr, distill=args.distill,
                         batch_size=args.batch_size,
                         calib_images=args.calib_images, eval_images=args.eval_images, score_on=args.score_on,
                         upper=args.upper,
                         criterion=args.criterion, round_to=args.round_to, test_limit=args.test_limit,
                         latency_runs=args.latency_runs,
                         latency_fit_rounds=args.latency_fit_rounds, export_dtype=args.dtype, onnx=not args.no_onnx,
                         storage=args.storage)
    from amc.api import compress as compress_api
    from amc.commands.common import load_source_recorded

    if Path(args.checkpoint).is_file():  # a checkpoint: the architecture from --model or its file name
        weights: str | None = args.checkpoint
        ref = resolve_arch(args.model, args.checkpoint)
    else:  # a model reference (torchvision:NAME, timm:NAME, package.module:factory, a zoo name)
        weights, ref = args.weights, args.checkpoint
        if "/" in ref or ref.endswith((".pt", ".pth", ".safetensors")):
            raise CheckpointError(f"checkpoint not found: {ref}")
    out = Path(args.out or f"runs/{ref.replace(':', '-')}-{args.budget.replace('=', '')}-{args.method}")
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

    splits, record = load_source_recorded(args)  # the data first: its classes and image size shape the model
    say(f"data: {splits.size('train'):,} train, {splits.size('heldout'):,} held-out, {splits.size('test'):,} test, "
        f"{splits.num_classes} classes, images {'x'.join(map(str, splits.input_shape))}")
    res = compress_api(ref, budget=cfg.budget, data=splits, method=cfg.method, episodes=cfg.episodes,
                       finetune=cfg.finetune_epochs, weights=weights, num_classes=args.num_classes,
                       run_dir=out, progress=say, config=cfg, data_record=record)
    m = res.metrics
    print(f"accuracy {m['dense_accuracy']:.2%} dense -> {m['accuracy_before_finetune']:.2%} pruned -> "
          f"{m['accuracy']:.2%} finetuned; size {m['size_fraction']:.2%}, MACs {m['macs_fraction']:.2%} of dense; "
          f"CPU latency {m['latency_ms']:.2f} ms ({m['latency_speedup']:.2f}x)")
    print(f"wrote {res.run_dir}/: recipe.yaml, report.md, " + ", ".join(res.files))
    return 0
