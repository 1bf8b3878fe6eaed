"""Latency estimate vs paired measurement, and data-free pruning to a latency budget, per architecture and runtime.

For each architecture (the CIFAR zoo and the shared MobileNetV2 at 32x32; torchvision models, ConvNeXt-Tiny
included, at a CPU-feasible input size) on the CPU, 1 thread, batch 1, per ``--runtime`` (eager PyTorch,
ONNX Runtime: the table's entries, its calibration and the measurements all taken on it):

* ``estimate``: the per-layer lookup table (``amc.latency.LatencyTable``), calibrated on the dense
  model, two uniformly thinner copies and ``CALIBRATION_RANDOM`` seeded random-policy copies (one scale
  per kind of layer, ``amc.latency.calibrate``), estimates the latency fraction of ``--policies``
  random policies (a ratio per channel group drawn uniformly in [0, ``--max-ratio``], seed 0); each
  is built and measured paired with the dense model (``amc.latency.paired``: alternating rounds, the
  median of the rounds' ratios; the dense model prepared once). Reported: the share of policies whose
  estimate is within +-10% of the measurement, the median absolute relative error, the fit, and the
  same figures for the older one-factor rule fitted on the same calibration points.
* ``prune``: ``amc.latency.prune_to_latency(model, x, "latency=0.6")`` (data-free, uniform ratio,
  the estimate corrected from measured candidates): the measured ratio, met or not, or its one error.

Rows are cached per (architecture, runtime, part) under ``--cache`` (an architecture's policies every
10 too, with its calibration); a rerun resumes; ``--report-only`` writes the report from what is cached
(PARTIAL when rows are missing). Real timings: run it niced, alone.

    nice -n 10 .venv/bin/python benchmarks/latency.py --archs resnet20 mobilenetv2_cifar --policies 6
    nice -n 10 .venv/bin/python benchmarks/latency.py --runtime onnxruntime --archs resnet20 --parts estimate
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from amc.latency import (
    CALIBRATION_RANDOM,
    CALIBRATION_RATIOS,
    KindFit,
    LatencyTable,
    Runtime,
    Target,
    paired,
    prune_to_latency,
)
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


class DenseOnce:
    """``runtime``, preparing the dense model once per target: every paired measurement of an architecture
    reuses its runner (on ONNX Runtime, one export and session instead of one per policy)."""

    def __init__(self, runtime: Runtime, dense: nn.Module) -> None:
        self.runtime, self.dense, self.label = runtime, dense, runtime.label
        self._runners: dict[Target, Callable[[int, int], list[float]]] = {}

    def prepare(self, model: nn.Module, target: Target) -> Callable[[int, int], list[float]]:
        if model is not self.dense:
            return self.runtime.prepare(model, target)
        if target not in self._runners:
            self._runners[target] = self.runtime.prepare(model, target)
        return self._runners[target]


def random_policies(table, n: int, max_ratio: float) -> list[dict[str, int]]:
    """The evaluated policies: a ratio per channel group uniform in [0, ``max_ratio``], seed 0 (the table's
    calibration draws its own with another seed), as kept channels per group root."""
    rng = np.random.default_rng(0)
    return [policy_counts(table, {r: float(rng.uniform(0.0, max_ratio)) for r in table.roots}, 8) for _ in range(n)]


def estimate_row(arch: str, runtime: str, policies: int, max_ratio: float, rounds: int, runs: int, lut_path: Path,
                 cache: Cache, key: str) -> dict:
    """Calibrate the table on the dense model (``LatencyTable.calibrate``: per-kind scales over the dense
    model, two uniform and ``CALIBRATION_RANDOM`` random copies), estimate every policy first (the table's
    missing entries measured together, right after the calibration), then measure each paired with the
    dense model. Progress is kept under ``key__partial`` every 10 policies: a rerun resumes from it with
    the same calibration."""
    dense, shape = build(arch)
    target = Target(input_shape=shape, runtime=runtime)  # type: ignore[arg-type]
    x = torch.zeros(1, *shape)
    t0 = time.perf_counter()
    lut = LatencyTable(lut_path, target=target, warmup=3, runs=15)
    table = channel_table(dense, x)
    done = cache.get(f"{key}__partial")
    if done is not None:  # the calibration the earlier policies were estimated with
        lut.scale, lut.overhead_ms = done["scale"], done["overhead_ms"]
        lut.fit = KindFit.from_state(done["fit_state"])
        dense_ms, calib_s, rows = done["dense_ms"], done["calibration_seconds"], done["policies"]
    else:
        dense_ms = lut.calibrate(dense, runs=45, thin=CALIBRATION_RATIOS)
        calib_s, rows = time.perf_counter() - t0, []
    assert lut.fit is not None
    fit = lut.fit
    cost = lut.counts_cost(table)
    full = cost({})
    single_full = fit.line[0] * sum(lut.lookup(k) for k in lut.layer_keys(table)) + fit.line[1]
    all_counts = random_policies(table, policies, max_ratio)
    estimates = [cost(c) / full for c in all_counts]  # every entry measured now, close to the calibration
    lut.save()
    timer = DenseOnce(lut.runtime, dense)
    for i in range(len(rows), policies):
        counts = all_counts[i]
        small = prune_channels(dense, plan_from_counts(dense, counts, "l2", table=table, round_to=8), x).eval()
        p = paired(small, dense, target, rounds=rounds, runs=runs, runtime=timer)
        summed = sum(lut.lookup(k) for k in lut.layer_keys(table, counts))
        single = (fit.line[0] * summed + fit.line[1]) / single_full
        rows.append({"policy": i, "predicted_ratio": estimates[i], "measured_ratio": p.fraction, "spread": p.spread,
                     "model_ms": p.model_ms, "dense_ms": p.dense_ms, "error": estimates[i] / p.fraction - 1,
                     "single_factor_error": single / p.fraction - 1})
        row = {"arch": arch, "runtime": runtime, "input_shape": list(shape), "target": target.row(),
               "dense_ms": dense_ms, "scale": lut.scale, "overhead_ms": lut.overhead_ms, "fit": fit.row(),
               "fit_state": fit.state(), "policies": rows, "calibration_seconds": calib_s,
               "seconds": time.perf_counter() - t0 + (done or {}).get("seconds", 0.0)}
        if (i + 1) % 10 == 0 and i + 1 < policies:
            cache.put(f"{key}__partial", {**row, "partial": True})
    lut.save()
    return with_stats(row)


def with_stats(row: dict) -> dict:
    """``row`` with its figures over its policies: the share within +-10% and the median absolute error, of the
    estimate and of the one-factor rule."""
    errors = [abs(r["error"]) for r in row["policies"]]
    single = [abs(r["single_factor_error"]) for r in row["policies"]]
    return {**row, "within_10pct": sum(e <= 0.10 for e in errors) / len(errors),
            "median_abs_error": statistics.median(errors),
            "single_factor_within_10pct": sum(e <= 0.10 for e in single) / len(single),
            "single_factor_median_abs_error": statistics.median(single),
            "median_relative_spread": statistics.median(r["spread"] / r["measured_ratio"] for r in row["policies"])}


def failed_row(arch: str, runtime: str, e: BaseException, t0: float) -> dict:
    return {"arch": arch, "runtime": runtime, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
            "trace": traceback.format_exc(limit=3), "seconds": time.perf_counter() - t0}


def prune_row(arch: str, runtime: str, budget: str, rounds: int, runs: int, lut_path: Path) -> dict:
    dense, shape = build(arch)
    t0 = time.perf_counter()
    try:
        _, fit = prune_to_latency(dense, torch.zeros(1, *shape), budget,
                                  Target(input_shape=shape, runtime=runtime),  # type: ignore[arg-type]
                                  paired_rounds=rounds, runs=runs, table_path=lut_path)
    except Exception as e:
        return {"budget": budget, **failed_row(arch, runtime, e, t0)}
    return {"arch": arch, "runtime": runtime, "budget": budget, **fit.row(),
            "policy_ratio_mean": statistics.mean(fit.policy.values()), "steps": fit.steps,
            "seconds": time.perf_counter() - t0}


def _fit_text(r: dict) -> str:
    f = r["fit"]
    scales = ", ".join(f"{k} {v:.2f}" for k, v in f["scales"].items() if k != "elements")
    elements = f" + {f['elements_ms_per_million']:.2f} ms/M dw elements" if f.get("elements_ms_per_million") else ""
    return f"{scales}{elements} + {f['overhead_ms']:.2f} ms"


def summary(est: list[dict]) -> dict:
    """Over one runtime's measured architectures: policies, the share within +-10%, architectures at >= 95%."""
    ok = [r for r in est if "error" not in r]
    n = sum(len(r["policies"]) for r in ok)
    within = sum(sum(abs(p["error"]) <= 0.10 for p in r["policies"]) for r in ok)
    single = sum(sum(abs(p["single_factor_error"]) <= 0.10 for p in r["policies"]) for r in ok)
    return {"architectures": len(ok), "policies": n, "within_10pct": within / n if n else None,
            "single_factor_within_10pct": single / n if n else None,
            "architectures_at_95pct": sorted(r["arch"] for r in ok
                                             if r["within_10pct"] >= 0.95 and not r.get("partial")),
            "architectures_with_100_policies": sorted(r["arch"] for r in ok if len(r["policies"]) >= 100)}


def markdown(est: dict[str, list[dict]], pruned: list[dict], wanted: list[str], budget: str, note: str = "",
             missing: dict[str, list[str]] | None = None) -> str:
    lines = ["# Latency: estimate vs paired measurement; data-free pruning to a latency budget", "",
             "Targets: CPU, 1 thread, batch 1, eager PyTorch (`Target()`) and ONNX Runtime "
             "(`Target(runtime=\"onnxruntime\")`, the table's entries measured on it too); the CIFAR models at 32x32, "
             f"torchvision models at {TV_SIZE}x{TV_SIZE} with random weights (asked for: {', '.join(wanted)}). "
             "CUDA rows were not run.", "",
             "The estimate: the per-layer lookup table (`amc.latency.LatencyTable`) calibrated by "
             "`calibrate(dense, thin=CALIBRATION_RATIOS)`: one scale per kind of layer (depthwise, 1x1, k x k, linear, "
             "squeeze-excite gate), a cost per million depthwise output elements and an overhead, fitted by "
             "non-negative least squares over the dense model, its two uniform copies (0.5, 0.8) and "
             f"{CALIBRATION_RANDOM} seeded random-policy copies (`amc.latency.calibrate`). Each policy (a ratio per "
             "channel group uniform in [0, 0.7], seed 0, never the calibration's) is estimated as a fraction of the "
             "dense model's estimate and measured paired with the dense model (`amc.latency.paired`, the median of the "
             "rounds' ratios). `measurement spread`: the median over the policies of the paired measurement's half "
             "interquartile range over its ratio (the measurement's own noise, which counts against the +-10%). "
             "`one factor`: the older rule (`scale * summed + overhead`) fitted on the same calibration points, for "
             "comparison.", ""]
    for runtime, rows in est.items():
        s = summary(rows)
        lines += [f"## Estimate vs paired measurement: {runtime}", ""]
        if s["policies"]:
            lines += [f"Over {s['architectures']} architectures and {s['policies']} policies: "
                      f"{s['within_10pct']:.1%} within +-10% (one factor: {s['single_factor_within_10pct']:.1%}); "
                      f"at least 95% within +-10% (finished architectures): "
                      f"{', '.join(s['architectures_at_95pct']) or 'none'} ({len(s['architectures_at_95pct'])}).", ""]
        lines += ["| architecture | input | dense ms | policies | within +-10% | median abs error | measurement spread "
                  "| one factor: within +-10% | calibration fit (scales by kind) | calibration max error | s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['arch']} | | | | error: {r['error'][:200]} | | | | | | {r['seconds']:.0f} |")
                continue
            lines.append(f"| {r['arch']} | {'x'.join(map(str, r['input_shape']))} | {r['dense_ms']:.2f} | "
                         f"{len(r['policies'])} | {r['within_10pct']:.0%} | {r['median_abs_error']:.1%} | "
                         f"+-{r['median_relative_spread']:.1%} | {r['single_factor_within_10pct']:.0%} | "
                         f"{_fit_text(r)} | {r['fit']['max_abs_error']:.1%} | {r['seconds']:.0f} |")
        lines.append("")
    for runtime in ("torch", "onnxruntime"):
        if runtime not in est:
            lines += [f"## Estimate vs paired measurement: {runtime}", "", "Not run.", ""]
    gaps = [f"{rt}: {', '.join(archs)}" for rt, archs in (missing or {}).items() if archs]
    if gaps:
        lines += ["Estimate rows missing or unfinished (fewer policies than asked): " + "; ".join(gaps) + ".", ""]
    lines += [f"## Data-free `prune_to_latency(model, x, \"{budget}\")`", "",
              "| architecture | runtime | predicted | measured (paired) | spread | met | fit rounds | dense ms | s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in pruned:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['runtime']} | | | | error: {r['error'][:160]} | | | {r['seconds']:.0f} |")
        else:
            lines.append(f"| {r['arch']} | {r['runtime']} | {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | "
                         f"+-{r['spread']:.3f} | {'yes' if r['met'] else 'no'} | {r['fit_rounds']} | "
                         f"{r['dense_ms']:.2f} | {r['seconds']:.0f} |")
    lines += ["", "Conditions: a shared 2-core CPU; `measured` is always the paired median of the rounds' ratios "
              "(rounds and forwards per round in the JSON). The table's entries and its calibration are timed "
              "alone, not paired: a load that changes between them moves the estimate, not the measurement."
              + (f" {note}" if note else ""),
              "",
              "Trained rows (searchers at a tight measured budget, finetuned, 3 seeds) were not run.", ""]
    return "\n".join(lines)


def est_key(arch: str, runtime: str, policies: int) -> str:
    return f"{arch}__estimate__{runtime}__kinds__p{policies}"


def prune_key(arch: str, runtime: str, budget: str) -> str:
    return f"{arch}__prune__{budget}" if runtime == "torch" else f"{arch}__prune__{runtime}__{budget}"


def main() -> int:
    ap = parser(__doc__, cache="runs/bench-latency", data=False, device=False)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--runtime", nargs="+", default=["torch"], choices=["torch", "onnxruntime"],
                    help="where the table's entries and the paired measurements are taken (CPU, 1 thread)")
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
    for runtime in args.runtime if not args.report_only else []:
        for arch in args.archs:
            if "estimate" in args.parts:
                key = est_key(arch, runtime, args.policies)

                def compute(a: str = arch, rt: str = runtime, k: str = key) -> dict:
                    t0 = time.perf_counter()
                    try:
                        return estimate_row(a, rt, args.policies, args.max_ratio, args.rounds, args.runs, lut_path,
                                            cache, k)
                    except Exception as e:
                        return failed_row(a, rt, e, t0)

                cache.row(key, compute)
                print(f"{arch} {runtime}: estimate done", flush=True)
            if "prune" in args.parts:
                cache.row(prune_key(arch, runtime, args.budget),
                          lambda a=arch, rt=runtime: prune_row(a, rt, args.budget, args.rounds, args.runs, lut_path))
                print(f"{arch} {runtime}: prune done", flush=True)
    runtimes = ("torch", "onnxruntime")
    est: dict[str, list[dict]] = {}
    for rt in runtimes:
        rows = []
        for a in ARCHS:
            r = cache.get(est_key(a, rt, args.policies))
            if r is None and (part := cache.get(f"{est_key(a, rt, args.policies)}__partial")) is not None:
                r = with_stats(part)  # an architecture not finished: its policies so far
            if r is not None:
                rows.append(with_stats(r) if r.get("policies") else r)  # the figures of this version
        est[rt] = rows
    est = {rt: rows for rt, rows in est.items() if rows}
    pruned = [r for rt in runtimes for a in ARCHS if (r := cache.get(prune_key(a, rt, args.budget))) is not None]
    missing = {rt: [a for a in ARCHS if not any(r["arch"] == a and ("error" in r or len(r["policies"]) >= args.policies)
                                              for r in est.get(rt, []))] for rt in runtimes}
    partial = any(missing.values()) or len(pruned) < len(ARCHS)
    report = {"targets": {rt: Target(runtime=rt).row() for rt in est}, "budget": args.budget,  # type: ignore[arg-type]
              "missing": missing,
              "torchvision_input": TV_SIZE, "rounds": args.rounds, "runs": args.runs, "max_ratio": args.max_ratio,
              "calibration": {"uniform": list(CALIBRATION_RATIOS), "random": CALIBRATION_RANDOM},
              "estimate": {rt: {r["arch"]: r for r in rows} for rt, rows in est.items()},
              "summary": {rt: summary(rows) for rt, rows in est.items()},
              "prune": {f"{r['arch']}__{r['runtime']}": r for r in pruned},
              "within_10pct": {rt: {r["arch"]: r.get("within_10pct") for r in rows} for rt, rows in est.items()},
              "median_abs_error": {rt: {r["arch"]: r.get("median_abs_error") for r in rows}
                                   for rt, rows in est.items()},
              "note": args.note}
    text = markdown(est, pruned, list(args.archs), args.budget, args.note, missing)
    write_report(args.out, "latency", report, text, partial=partial)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
