"""``amc compress CHECKPOINT|MODEL_REF --budget size=0.25|macs=0.5|latency=0.5``: the one button, over ``amc.compress``.

profile -> sensitivity -> search (AMC agent, Optuna, or the sensitivity-picked policy) -> recipe ->
finetune -> export -> report, into one run folder (recipe.yaml, model files, report.md with plots,
trials.csv, summary.json). A size budget prunes weights; MACs, parameter and latency budgets prune
channels so that the model really runs faster.

Any task: ``amc compress pkg.module:factory --task pkg.module:make_task`` (``make_task()`` returns an
``amc.Task``: the model's example inputs, its evaluate, calibration, finetune and test; no --data).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from amc.commands.common import add_data_args, add_model_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    from amc.commands.options import add_option_flags

    p = sub.add_parser("compress", help="one-button compression to a budget", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--weights", default=None,
                   help="with a model reference instead of a checkpoint: its weights (.pt state dict or .safetensors)")
    p.add_argument("--num-classes", type=int, default=None, help="model outputs (default: the data's classes)")
    add_data_args(p)  # --batch-size among them: the finetune's batch size option
    p.add_argument("--task", default=None, metavar="PKG.MODULE:FUNCTION",
                   help="a factory returning an amc.Task (the model's example inputs, its evaluate, calibration, "
                        "finetune and test): compress any model for any task; --data is then not used")
    add_option_flags(p, exclude=("batch_size",))  # every other option of amc.options.CompressConfig
    p.add_argument("--out", default=None, help="run folder (default: runs/<model>-<budget>-<method>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.api import compress as compress_api
    from amc.commands.common import load_source_recorded
    from amc.commands.options import config_from_args
    from amc.errors import CheckpointError
    from amc.models import resolve_arch

    cfg = config_from_args(args)  # every option validated before the data or the model is read
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

    if args.task is not None:
        return _run_task(args, ref, weights, cfg, out, say)
    splits, record = load_source_recorded(args)  # the data first: its classes and image size shape the model
    say(f"data: {splits.size('train'):,} train, {splits.size('heldout'):,} held-out, {splits.size('test'):,} test, "
        f"{splits.num_classes} classes, images {'x'.join(map(str, splits.input_shape))}")
    res = compress_api(ref, data=splits, weights=weights, num_classes=args.num_classes, run_dir=out, progress=say,
                       config=cfg, data_record=record)
    m = res.metrics
    print(f"accuracy {m['dense_accuracy']:.2%} dense -> {m['accuracy_before_finetune']:.2%} pruned -> "
          f"{m['accuracy']:.2%} finetuned; size {m['size_fraction']:.2%}, MACs {m['macs_fraction']:.2%} of dense; "
          f"latency {m['latency_ms']:.2f} ms vs {m['dense_latency_ms']:.2f} ms dense, {m['latency_speedup']:.2f}x "
          f"(paired: {m['latency_fraction']:.3f} of dense +-{m['latency_fraction_spread']:.3f} over "
          f"{m['latency_rounds']} rounds, {m['latency_device']})")
    print(f"wrote {res.run_dir}/: recipe.yaml, report.md, " + ", ".join(res.files))
    return 0


def _run_task(args: argparse.Namespace, ref: str, weights: str | None, cfg, out: Path, say) -> int:
    """``amc compress MODEL --task pkg.module:make_task``: the user's task instead of --data."""
    from amc.api import compress as compress_api
    from amc.task import TaskError, make_task

    if args.data is not None or args.val is not None:
        raise TaskError("give --data or --task, not both (a task brings its own evaluate and calibration)")
    task = make_task(args.task)
    say(f"task: {task.name} ({task.metric}) from {args.task}")
    res = compress_api(ref, task=task, weights=weights, run_dir=out, progress=say, config=cfg, device=args.device)
    m = res.metrics

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    latency = (f"; latency {m['latency_ms']:.2f} ms vs {m['dense_latency_ms']:.2f} ms dense, "
               f"{m['latency_speedup']:.2f}x (paired)" if m.get("latency_ms") is not None else "")
    test = f"; test {fmt(m['dense_test_score'])} -> {fmt(m['test_score'])}" if m.get("test_score") is not None else ""
    print(f"{task.metric} {fmt(m['dense_score'])} dense -> {fmt(m['score_before_finetune'])} pruned -> "
          f"{fmt(m['score'])} finetuned (validation){test}; MACs {m['macs_fraction']:.2%}, params "
          f"{m['params_fraction']:.2%} of dense{latency}")
    print(f"wrote {res.run_dir}/: recipe.yaml, report.md, " + ", ".join(res.files))
    return 0
