"""Benchmark: the AMC agent (as AMC built it) on the two ResNet-20 channel tasks of reports/search_hard.md.

The protocol is search_hard's, reused from ``benchmarks/search_hard.py`` (its ``Bench``): the shared
ResNet-20 checkpoint, the test set halved once by class (validation half: every search reward;
final-test half: the reported accuracy), the search reward ``acc`` after BN recalibration on
``calib_images`` train images and scored on ``eval_images`` validation images, channels in multiples of
8, per-layer ratios in [0, 0.9]; the tasks ``macs03`` (channel pruning to <= 30% MACs) and ``lat05``
(<= 50% of the dense latency predicted by the CPU lookup table, the chosen policy then fitted to the
budget by measurement); the agent's warm-up starts from the same baseline policies (uniform,
sensitivity-picked, Torch-Pruning's global ratio); every row BN-recalibrated, finetuned ``--epochs``
(2) with the row's seed, tested on the final-test half. The settings, the baselines, the latency
table and its calibration are those of ``reports/search_hard.json`` (restored from its
``cache_files``), and its uniform and Optuna rows are read from it, not rerun.

Each seed's search checkpoints every 25 episodes and each finished row (search + finetune) is cached
as JSON (``benchmarks.harness.Cache``) under ``--cache``: a rerun resumes. The report,
``reports/agent.{md,json}``, is written after every row (PARTIAL while rows are missing): per task the
agent's test accuracy per seed beside uniform and Optuna, its best validation reward against the
uniform policy's, its search time, the share of its actions at a bound and its learning curve (best
and mean reward per window of episodes); the goals: the agent's mean >= uniform's, within one standard
error of Optuna's, every search within 15 minutes, its best validation reward >= uniform's in every seed.

    nice -n 10 python benchmarks/agent.py                       # both tasks, 3 seeds: 6 searches + 6 finetunes
    nice -n 10 python benchmarks/agent.py --tasks macs03        # one task; lat05 wants the machine alone
    python benchmarks/agent.py --report-only                    # the report from the cache

A smoke run (it starts and resumes; not a result): ``python benchmarks/agent.py --cache /tmp/agent-smoke
--out /tmp/agent-smoke --tasks macs03 --seeds 0 --episodes 3 --warmup 1 --epochs 0.01``, twice.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amc.io import atomic_write_text  # noqa: E402
from amc.search.agent import AgentConfig, run_agent  # noqa: E402
from benchmarks.harness import MODELS, Cache, parser, write_report  # noqa: E402

TASKS = ("macs03", "lat05")
COMPARED = ("uniform", "optuna")  # read from reports/search_hard.json
SEARCH_LIMIT_S = 900  # each search within 15 minutes on the 2-core CPU
RESTORED = ("latency_lut_cpu.csv", "lat05/calibration.json", "macs03/baselines.json", "lat05/baselines.json")


def agent_config(args: argparse.Namespace, seed: int) -> AgentConfig:
    return AgentConfig(episodes=args.episodes, warmup_episodes=min(args.warmup, args.episodes - 1), seed=seed,
                       gradient_steps=args.gradient_steps, checkpoint_every=25)


def _bench(args: argparse.Namespace, hard: dict[str, Any]):
    """search_hard's ``Bench`` (evaluators, baselines, finetuned rows) on its settings, its cache under ours,
    seeded with the committed report's baselines, latency table and calibration."""
    from benchmarks.search_hard import Bench

    folder = Path(args.cache) / "protocol"
    for rel in RESTORED:
        text = (hard.get("cache_files") or {}).get(rel)
        if text is not None and not (folder / rel).exists():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / rel, text)
    settings = dict(hard["settings"], epochs=args.epochs, data=args.data, checkpoint=args.checkpoint)
    ns = argparse.Namespace(**settings, cache=str(folder), tasks=list(args.tasks), pause_pids=[])
    return Bench(ns)


def measure(bench, args: argparse.Namespace, task: str, seed: int) -> dict[str, Any]:
    """One seed of one task: the agent's search (resumable), then search_hard's finetuned row."""
    from benchmarks.search_hard import BASELINES
    from benchmarks.search_hard import TASKS as HARD_TASKS

    base = bench.baselines(task)
    ev = bench.evaluator(task)
    config = agent_config(args, seed)
    run_dir = Path(args.cache) / "runs" / f"{task}-s{seed}"
    t = time.perf_counter()
    res = run_agent(ev, config, run_dir, seed_policies=[base[k]["policy"] for k in BASELINES[HARD_TASKS[task][0]]])
    search_s = time.perf_counter() - t
    if res.resumed_from:  # the earlier runs' seconds: the log's wall clock goes on across a resume
        search_s += float(res.trials["wall"].iloc[res.resumed_from - 1])
    diag = res.extra["diagnostics"]
    row = bench.row(task, "amc", seed, res.best_policy, search_s)
    return {"task": task, "seed": seed, "test_accuracy": row["test_accuracy"], "search_s": search_s,
            "search_resumed_from": res.resumed_from, "val_reward": None if res.best_result is None
            else res.best_result.reward, "uniform_val_reward": base["uniform"]["val_reward"],
            "finetune_s": row["finetune_s"], "policy": row["policy"],
            **{k: row[k] for k in ("macs", "latency_measured", "latency_predicted") if k in row},
            "at_bound": diag["at_bound"], "ratio_at_bound": diag["ratio_at_bound"], "curve": diag["curve"],
            "best_episode": diag["best_episode"], "best_in_warmup": diag["best_in_warmup"],
            "best_after_warmup": diag["best_after_warmup"], "actor": diag["actor"], "agent": asdict(config)}


def _stats(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"mean": None, "std": None, "se": None}
    sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    return {"mean": statistics.fmean(xs), "std": sd, "se": sd / math.sqrt(len(xs))}


def collect(args: argparse.Namespace, hard: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    cache = Cache(args.cache)
    out: dict[str, Any] = {"settings": {"search_hard": hard.get("settings"), "episodes": args.episodes,
                                        "warmup": args.warmup, "gradient_steps": args.gradient_steps,
                                        "sigma_min": agent_config(args, 0).sigma_min,
                                        "exploit_every": agent_config(args, 0).exploit_every,
                                        "epochs": args.epochs, "seeds": args.seeds}, "tasks": {}}
    partial = False
    for task in args.tasks:
        rows = cache.rows(f"{task}__s{s}" for s in args.seeds)
        partial |= len(rows) < len(args.seeds)
        amc = sorted(rows.values(), key=lambda r: r["seed"])
        methods = hard["tasks"][task]["methods"]
        compared = {m: {"test_accuracy": methods[m]["test_accuracy"],
                        **_stats([float(v) for v in methods[m]["test_accuracy"].values()])} for m in COMPARED}
        stats = _stats([r["test_accuracy"] for r in amc])
        goals: dict[str, Any] = {}
        if amc and not partial:
            opt = compared["optuna"]
            goals = {"mean_at_least_uniform": stats["mean"] >= compared["uniform"]["mean"],
                     "within_one_se_of_optuna": stats["mean"] >= opt["mean"] - (opt["se"] or 0.0),
                     "searches_within_15_min": all(r["search_s"] <= SEARCH_LIMIT_S for r in amc),
                     "best_val_reward_at_least_uniform": all(r["val_reward"] >= r["uniform_val_reward"] - 1e-12
                                                             for r in amc)}
        out["tasks"][task] = {"amc": {**stats, "rows": amc}, **compared, "goals": goals}
    return out, partial


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = ["# The AMC agent on search_hard's channel tasks", "",
             f"ResNet-20, the protocol of `reports/search_hard.md` (its settings, baselines and latency table); "
             f"the agent: {s['episodes']} episodes, {s['warmup']} warm-up, {s['gradient_steps']} gradient step(s) "
             f"per transition, exploration width floor {s.get('sigma_min')}, every {s.get('exploit_every')}th "
             f"learning episode a perturbation of the best so far; every row finetuned {s['epochs']} epochs. "
             f"Uniform and Optuna rows: `reports/search_hard.json` (not rerun).", ""]
    for task, t in report["tasks"].items():
        lines += [f"## {task}", "", "| method | " + " | ".join(f"seed {x}" for x in s["seeds"]) + " | mean | SE |",
                  "| --- |" + " --- |" * (len(s["seeds"]) + 2)]
        for m in ("uniform", "optuna"):
            acc = t[m]["test_accuracy"]
            lines.append(f"| {m} | " + " | ".join(_pct(acc.get(str(x))) for x in s["seeds"])
                         + f" | {_pct(t[m]['mean'])} | {_pct(t[m]['se'])} |")
        by_seed = {r["seed"]: r for r in t["amc"]["rows"]}
        cells = [_pct(by_seed[x]["test_accuracy"]) if x in by_seed else "-" for x in s["seeds"]]
        lines.append("| amc | " + " | ".join(cells) + f" | {_pct(t['amc']['mean'])} | {_pct(t['amc']['se'])} |")
        lines += ["", "| seed | search s | best val reward | uniform's | actions at a bound | ratios at a bound | "
                      "best episode | learning curve (best / mean per window) |", "| --- |" + " --- |" * 7]
        for r in t["amc"]["rows"]:
            curve = ", ".join(f"{_pct(w['best'])}/{_pct(w['mean'])}" for w in r["curve"])
            lines.append(f"| {r['seed']} | {r['search_s']:.0f} | {_pct(r['val_reward'])} | "
                         f"{_pct(r['uniform_val_reward'])} | {_pct(r['at_bound']['all'])} | "
                         f"{_pct(r['ratio_at_bound']['all'])} | {r['best_episode']} | {curve} |")
        if t["goals"]:
            lines += ["", "Goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in t["goals"].items())]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__, cache="runs/agent", device="cpu")
    ap.add_argument("--checkpoint", default=str(MODELS / "resnet20_dense.pt"))
    ap.add_argument("--hard", default=str(ROOT / "reports" / "search_hard.json"),
                    help="search_hard's report: settings, baselines, latency table, uniform and Optuna rows")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--episodes", type=int, default=300,
                    help="the agent's episodes (AMC: 800; 300 fit the 15-minute search goal on the shared 2-core CPU)")
    ap.add_argument("--warmup", type=int, default=50, help="the agent's random warm-up episodes (AMC: 100 of 800)")
    ap.add_argument("--gradient-steps", type=int, default=1, help="gradient steps per stored transition")
    ap.add_argument("--epochs", type=float, default=2.0, help="finetune epochs of every row (search_hard's 2)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.seeds = [int(x) for x in args.seeds.split(",") if x]
    if bad := [t for t in args.tasks if t not in TASKS]:
        raise SystemExit(f"unknown task {bad[0]!r}; known: {', '.join(TASKS)}")
    hard = json.loads(Path(args.hard).read_text())
    if not args.report_only:
        torch.set_num_threads(args.threads)
        cache = Cache(args.cache)
        bench = _bench(args, hard)
        for seed in args.seeds:
            for task in args.tasks:
                row = cache.row(f"{task}__s{seed}", lambda t=task, s=seed: measure(bench, args, t, s))
                print(f"[{task} s{seed}] amc: test {row['test_accuracy']:.4f}, best val reward "
                      f"{row['val_reward']:.4f} (uniform {row['uniform_val_reward']:.4f}), "
                      f"search {row['search_s']:.0f} s", flush=True)
                report, partial = collect(args, hard)
                write_report(args.out, "agent", report, markdown(report), partial=partial)
    report, partial = collect(args, hard)
    write_report(args.out, "agent", report, markdown(report), partial=partial)


if __name__ == "__main__":
    main()
