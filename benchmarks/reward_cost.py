"""Benchmark: the cost of one search reward on the CPU, and how much cheaper it can be while it
keeps the ranking of policies.

ResNet-20 (shared checkpoint), channel pruning to macs=0.3, the test-halves protocol
(``amc.data.holdout``). ``--policies`` random feasible policies (uniform random ratios projected
onto the budget, seed 0), each scored by:

* ``before``: today's CPU reward: the masked dense model, BN recalibration on 1,024 train
  images, validation accuracy on 2,000 images (``amc.evaluator.Evaluator``);
* ``masked-<c>-<e>``: the same evaluator on ``c`` calibration and ``e`` validation images;
* ``physical-<c>-<e>``: the physically smaller model (``Evaluator.build``: copy + channel removal)
  recalibrated on ``c`` and scored on ``e`` images, the build included in the time.

Per variant: median seconds per reward and Spearman's rank correlation with ``before``
(``scipy.stats.spearmanr``) on the same policies. ``reward_s_after`` / ``spearman`` name the
cheapest variant whose Spearman is >= 0.9 (else the one with the highest Spearman). Cached per
variant under runs/reward_cost/; writes reports/reward_cost.{md,json}.

    nice -n 15 python benchmarks/reward_cost.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

import amc
from amc.data import load_cifar10, make_splits
from amc.data.holdout import halve_test
from amc.models import load_model
from amc.train import evaluate, recalibrate_bn
from benchmarks.harness import MODELS, Cache, machine_info, markdown_table, parser, write_report

BEFORE = (1024, 2000)  # today's CPU reward: calibration images, scored images
VARIANTS = ("masked-256-1000", "masked-128-500", "physical-1024-2000", "physical-256-1000", "physical-128-500")


def _variant(name: str) -> tuple[str, int, int]:
    kind, c, e = name.split("-")
    return kind, int(c), int(e)


def score_all(kind: str, calib: int, images: int, dense, splits, budget, policies) -> tuple[list[float], list[float]]:
    cfg = amc.EvalConfig(granularity="channel", reward="acc", calib_images=calib, eval_images=images, round_to=8,
                     criterion="l2", upper=0.9)
    ev = amc.Evaluator(dense, splits, budget, cfg)
    rewards, secs = [], []
    if kind == "masked":
        ev.evaluate(policies[0])  # warm
        for p in policies:
            r = ev.evaluate(p)
            rewards.append(r.reward)
            secs.append(r.seconds)
        return rewards, secs
    calib_b = list(splits.loader("train", 512, limit=calib, shuffle=False, augment=False))
    val_b = list(splits.loader("heldout", 512, limit=images))
    for p in policies:
        t = time.perf_counter()
        model, _ = ev.build(p)
        recalibrate_bn(model, calib_b)
        rewards.append(evaluate(model, val_b))
        secs.append(time.perf_counter() - t)
    return rewards, secs


def main() -> None:
    from scipy.stats import spearmanr

    ap = parser(__doc__, cache="runs/reward_cost", report_only=False, device=False, threads=1)
    ap.add_argument("--checkpoint", default=str(MODELS / "resnet20_dense.pt"))
    ap.add_argument("--policies", type=int, default=50)
    ap.add_argument("--budget", default="macs=0.3")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Cache(args.cache, indent=None, default=None)  # <variant>-<policies>.json
    halved, record = halve_test(load_cifar10(args.data))
    splits = make_splits(halved, 0, "cpu")
    dense = load_model("resnet20", args.checkpoint).eval()
    budget = amc.Budget.parse(args.budget)
    probe = amc.Evaluator(dense, splits, budget, amc.EvalConfig(granularity="channel", round_to=8, criterion="l2",
                                                        upper=0.9, calib_images=64, eval_images=64))
    g = torch.Generator().manual_seed(0)
    policies = [probe.projector.project({n: float(torch.rand((), generator=g)) for n in probe.names})
                for _ in range(args.policies)]
    results = {}
    for name in ["before", *[v for v in args.variants.split(",") if v]]:
        key = f"{name}-{args.policies}"
        if (cached := cache.get(key)) is not None:
            results[name] = cached
            continue
        kind, c, e = ("masked", *BEFORE) if name == "before" else _variant(name)
        rewards, secs = score_all(kind, c, e, dense, splits, budget, policies)
        results[name] = {"rewards": rewards, "seconds": secs, "median_s": statistics.median(secs)}
        cache.put(key, results[name])
        print(f"{name}: {results[name]['median_s']:.3f} s per reward", flush=True)
    ref = results["before"]["rewards"]
    for name, r in results.items():
        r["spearman"] = 1.0 if name == "before" else float(spearmanr(ref, r["rewards"]).statistic)
    others = {k: v for k, v in results.items() if k != "before"}
    good = {k: v for k, v in others.items() if v["spearman"] >= 0.9}
    pick = (min(good, key=lambda k: good[k]["median_s"]) if good else
            max(others, key=lambda k: others[k]["spearman"]) if others else "before")
    report = {"model": "resnet20", "budget": args.budget, "policies": args.policies, "protocol": record.row(),
              "machine": machine_info(), "threads": args.threads,
              "reward_s_before": results["before"]["median_s"], "reward_s_after": results[pick]["median_s"],
              "spearman": results[pick]["spearman"], "after_variant": pick,
              "variants": {k: {"median_s": v["median_s"], "spearman": v["spearman"]} for k, v in results.items()}}
    lines = ["# Reward cost on the CPU (ResNet-20, channel, " + args.budget + ")", "",
             f"{args.policies} random feasible policies, each scored by every variant; {args.threads} torch "
             "thread(s), `nice -n 15` on a 2-core CPU shared with other jobs. Spearman against `before` "
             "(today's reward: masked model, BN recalibration on 1,024 train images, 2,000 validation images).", ""]
    b = results["before"]["median_s"]
    lines += markdown_table(["variant", "median s per reward", "speed-up", "Spearman vs before"],
                            [[k, f"{v['median_s']:.3f}", f"{b / v['median_s']:.2f}x", f"{v['spearman']:.3f}"]
                             for k, v in results.items()])
    lines += ["", f"Chosen `after`: {pick} ({b / results[pick]['median_s']:.2f}x cheaper, Spearman "
              f"{results[pick]['spearman']:.3f}); goal >= 3x at Spearman >= 0.9.", ""]
    write_report(args.out, "reward_cost", report, "\n".join(lines), stamp=False, newline=False)


if __name__ == "__main__":
    main()
