"""Latency estimate vs paired measurement, and data-free pruning to a latency budget, per architecture.

For each architecture (the CIFAR zoo and the shared MobileNetV2 at 32x32; torchvision models at a
CPU-feasible input size) on one target (CPU, eager PyTorch, 1 thread, batch 1):

* ``estimate``: the per-layer lookup table (``amc.latency.LatencyTable``), calibrated on the dense
  model and two uniformly thinner copies, estimates the latency fraction of ``--policies`` random
  policies (a ratio per channel group drawn uniformly in [0, ``--max-ratio``], seeded); each is
  built and measured paired with the dense model (``amc.latency.paired``: alternating rounds, the
  median of the rounds' ratios). Reported: the share of policies whose estimate is within +-10% of
  the measurement, and the median absolute relative error.
* ``prune``: ``amc.latency.prune_to_latency(model, x, "latency=0.6")`` (data-free, uniform ratio,
  the estimate corrected from measured candidates): the measured ratio, met or not, or its one error.

Rows are cached per (architecture, part) under ``--cache``; a rerun resumes; ``--report-only`` writes
the report from what is cached (PARTIAL when rows are missing). Real timings: run it niced, alone.

    nice -n 10 .venv/bin/python benchmarks/latency.py --archs resnet20 mobilenetv2_cifar --policies 6
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from amc.latency import CALIBRATION_RATIOS, LatencyTable, Target, paired, prune_to_latency
from amc.pruners.channel import channel_table, plan_from_counts, policy_counts, prune_channels
from benchmarks.harness import MODELS, Cache, parser, write_report

CIFAR = {"resnet20": "resnet20_dense.pt", "resnet56": "resnet56_dense.pt", "vgg8": "vgg8_dense.pt",
         "mobilenetv2_cifar": "mobilenetv2_cifar_dense.pt"}
TORCHVISION = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_y_400mf",
               "mnasnet1_0", "resnet18", "convnext_tiny")
ARCHS = (*CIFAR, *TORCHVISION)
TV_SIZE = 96  # torchvision models at 96x96: CPU-feasible at 1 thread, batch 1


def mobilenetv2_cifar() -> nn.Module:
    """The shared MobileNetV2 for 32x32 (its README): torchvision's class, stem at full resolution."""
    import torchvision

    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]
    m = torchvision.models.mobilenet_v2(num_classes=10, inverted_residual_setting=setting)
    m.features[0][0].stride = (1, 1)
    return m


def build(arch: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The dense model (the shared weights where there are some) and one input's shape."""
    if arch == "mobilenetv2_cifar":
        m = mobilenetv2_cifar()
        state = torch.load(MODELS / CIFAR[arch], weights_only=True, map_location="cpu")
        m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        return m.eval(), (3, 32, 32)
    if arch in CIFAR:
        from amc.models import resolve_model

        return resolve_model(arch, weights=MODELS / CIFAR[arch]).eval(), (3, 32, 32)
    from amc.models import resolve_model

    torch.manual_seed(0)  # random weights: latency does not depend on them
    return resolve_model(f"torchvision:{arch}").eval(), (3, TV_SIZE, TV_SIZE)


def estimate_row(arch: str, policies: int, max_ratio: float, rounds: int, runs: int, lut_path: Path) -> dict:
    dense, shape = build(arch)
    target = Target(input_shape=shape)
    x = torch.zeros(1, *shape)
    t0 = time.perf_counter()
    lut = LatencyTable(lut_path, target=target, warmup=3, runs=15)
    dense_ms = lut.calibrate(dense, runs=30, thin=CALIBRATION_RATIOS)
    table = channel_table(dense, x)
    cost = lut.counts_cost(table)
    full = cost({})
    rng = np.random.default_rng(0)
    rows = []
    for i in range(policies):
        policy = {r: float(rng.uniform(0.0, max_ratio)) for r in table.roots}
        counts = policy_counts(table, policy, 8)
        small = prune_channels(dense, plan_from_counts(dense, counts, "l2", table=table, round_to=8), x).eval()
        est = cost(counts) / full
        p = paired(small, dense, target, rounds=rounds, runs=runs)
        rows.append({"policy": i, "predicted_ratio": est, "measured_ratio": p.fraction, "spread": p.spread,
                     "model_ms": p.model_ms, "dense_ms": p.dense_ms, "error": est / p.fraction - 1})
    lut.save()
    errors = [abs(r["error"]) for r in rows]
    return {"arch": arch, "input_shape": list(shape), "target": target.row(), "dense_ms": dense_ms,
            "scale": lut.scale, "overhead_ms": lut.overhead_ms, "policies": rows,
            "within_10pct": sum(e <= 0.10 for e in errors) / len(errors),
            "median_abs_error": statistics.median(errors), "seconds": time.perf_counter() - t0}


def prune_row(arch: str, budget: str, rounds: int, runs: int, lut_path: Path) -> dict:
    dense, shape = build(arch)
    t0 = time.perf_counter()
    try:
        _, fit = prune_to_latency(dense, torch.zeros(1, *shape), budget, Target(input_shape=shape),
                                  paired_rounds=rounds, runs=runs, table_path=lut_path)
    except Exception as e:
        return {"arch": arch, "budget": budget, "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc(limit=3), "seconds": time.perf_counter() - t0}
    return {"arch": arch, "budget": budget, **fit.row(), "policy_ratio_mean": statistics.mean(fit.policy.values()),
            "steps": fit.steps, "seconds": time.perf_counter() - t0}


def markdown(est: list[dict], pruned: list[dict], wanted: list[str], budget: str, note: str = "") -> str:
    lines = ["# Latency: estimate vs paired measurement; data-free pruning to a latency budget", "",
             "Target: CPU, eager PyTorch, 1 thread, batch 1 (`amc.latency.Target()`); the CIFAR models at 32x32, "
             f"torchvision models at {TV_SIZE}x{TV_SIZE} with random weights. Measured: "
             f"{', '.join(r['arch'] for r in est) or 'nothing yet'} (asked for: {', '.join(wanted)}). "
             "ONNX Runtime and CUDA rows were not run.", "",
             "## Estimate (calibrated lookup table) vs paired measurement, random policies", "",
             "| architecture | input | dense ms | policies | within +-10% | median abs error | table fit |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in est:
        lines.append(f"| {r['arch']} | {'x'.join(map(str, r['input_shape']))} | {r['dense_ms']:.2f} | "
                     f"{len(r['policies'])} | {r['within_10pct']:.0%} | {r['median_abs_error']:.1%} | "
                     f"{r['scale']:.3f} x summed + {r['overhead_ms']:.2f} ms |")
    lines += ["", f"## Data-free `prune_to_latency(model, x, \"{budget}\")`", "",
              "| architecture | predicted | measured (paired) | spread | met | fit rounds | dense ms | s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in pruned:
        if "error" in r:
            lines.append(f"| {r['arch']} | | | | error: {r['error'][:160]} | | | {r['seconds']:.0f} |")
        else:
            lines.append(f"| {r['arch']} | {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | "
                         f"+-{r['spread']:.3f} | {'yes' if r['met'] else 'no'} | {r['fit_rounds']} | "
                         f"{r['dense_ms']:.2f} | {r['seconds']:.0f} |")
    lines += ["", "Conditions: a shared 2-core CPU while other jobs ran; the same dense model's milliseconds differ "
              "between the two tables (and between the table's per-layer entries and the end-to-end calibration) "
              "by up to several times when the load changed, which the paired ratios share but the table's fit "
              "(its scale) does not. `measured` is always the paired median of the rounds' ratios."
              + (f" {note}" if note else ""),
              "",
              "Trained rows (searchers at a tight measured budget, finetuned, 3 seeds) were not run.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = parser(__doc__, cache="runs/bench-latency")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--policies", type=int, default=100, help="random policies per architecture")
    ap.add_argument("--max-ratio", type=float, default=0.7)
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds per measurement")
    ap.add_argument("--runs", type=int, default=10, help="forwards a side per paired round")
    ap.add_argument("--budget", default="latency=0.6")
    ap.add_argument("--note", default="", help="a sentence on the conditions of this run, added to the report")
    ap.add_argument("--parts", nargs="+", default=["estimate", "prune"], choices=["estimate", "prune"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = Cache(args.cache)
    lut_path = Path(args.cache) / "latency_lut.csv"
    for arch in args.archs if not args.report_only else []:
        if "estimate" in args.parts:
            key = f"{arch}__estimate__p{args.policies}"
            cache.row(key, lambda a=arch: estimate_row(a, args.policies, args.max_ratio, args.rounds, args.runs,
                                                         lut_path))
            print(f"{arch}: estimate done", flush=True)
        if "prune" in args.parts:
            cache.row(f"{arch}__prune__{args.budget}",
                      lambda a=arch: prune_row(a, args.budget, args.rounds, args.runs, lut_path))
            print(f"{arch}: prune done", flush=True)
    est = [r for a in ARCHS if (r := cache.get(f"{a}__estimate__p{args.policies}")) is not None]
    pruned = [r for a in ARCHS if (r := cache.get(f"{a}__prune__{args.budget}")) is not None]
    partial = len(est) < len(ARCHS) or len(pruned) < len(ARCHS) or any(len(r["policies"]) < 100 for r in est)
    report = {"target": Target().row(), "budget": args.budget, "torchvision_input": TV_SIZE,
              "estimate": {r["arch"]: r for r in est}, "prune": {r["arch"]: r for r in pruned},
              "within_10pct": {r["arch"]: r["within_10pct"] for r in est},
              "median_abs_error": {r["arch"]: r["median_abs_error"] for r in est}, "note": args.note}
    text = markdown(est, pruned, list(args.archs), args.budget, args.note)
    write_report(args.out, "latency", report, text, partial=partial)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
