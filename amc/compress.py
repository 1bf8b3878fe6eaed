"""One-button compression: profile -> sensitivity -> search -> recipe -> finetune -> export -> report.

Lifecycle: ``CompressConfig(...)`` -> ``compress(checkpoint, arch, splits, config, run_dir)`` ->
``CompressResult`` (paths, metrics, timings). Everything lands in ``run_dir``: ``recipe.yaml``,
the model files (``model.sparse.safetensors`` or ``pruned/`` and ``model.onnx``), ``report.md``
with its plots, ``trials.csv`` (every search episode or trial), ``sensitivity.csv`` and
``summary.json``. A size budget prunes weights (fine-grained); MACs, parameter and latency budgets
prune channels, so the model really gets faster.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from amc.budget import Budget
from amc.data import Splits
from amc.errors import AmcError
from amc.io import atomic_write_text
from amc.layers import count_macs, count_params
from amc.metrics import size_fraction
from amc.models import load_model, resolve_arch
from amc.train import evaluate

METHODS = ("amc", "optuna", "sensitivity")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CompressConfig:
    budget: str = "macs=0.5"  # KIND=FRACTION: size, macs, params or latency
    method: str = "optuna"  # amc | optuna | sensitivity (no search: the sensitivity-picked policy)
    granularity: str | None = None  # None: fine for a size budget, channel otherwise
    episodes: int = 100  # AMC episodes or Optuna trials
    warmup: int | None = None  # AMC random warm-up episodes (None: a third of the episodes)
    seed: int = 0
    finetune_epochs: float = 5.0  # the benchmark protocol's finetune
    lr: float = 0.01
    distill: float = 0.0  # knowledge-distillation weight of the finetune, the dense model as teacher (0: labels only)
    batch_size: int = 256
    calib_images: int = 5120  # BN recalibration images per reward (the DESIGN's 5,120)
    eval_images: int | None = None  # held-out images per reward (None: the whole held-out split)
    upper: float = 0.9  # highest per-layer ratio the searchers may propose
    criterion: str = "l2"  # channel importance
    round_to: int = 8  # channel multiple
    sensitivity_ratios: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)  # channel scan
    sparsities: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98)  # fine scan
    test_limit: int | None = None  # test images for the final numbers (None: all 10,000)
    latency_runs: int = 50  # timed CPU runs per latency measurement (median)
    export_dtype: str = "fp32"
    onnx: bool = True
    storage: str | None = None  # Optuna storage URL (default sqlite in the run folder)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AmcError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        Budget.parse(self.budget)  # a malformed budget fails here, before any work
        if not (self.finetune_epochs >= 0 and self.lr > 0 and 0 <= self.distill <= 1):
            raise AmcError(f"finetune needs epochs >= 0, lr > 0 and a distill weight in [0, 1]; got "
                           f"epochs {self.finetune_epochs}, lr {self.lr}, distill {self.distill}")

    @property
    def parsed_budget(self) -> Budget:
        return Budget.parse(self.budget)

    @property
    def resolved_granularity(self) -> str:
        if self.granularity is not None:
            return self.granularity
        return "fine" if self.parsed_budget.kind == "size" else "channel"


@dataclass
class CompressResult:
    run_dir: Path
    recipe_path: Path
    report_path: Path
    metrics: dict
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)


def _cpu_latency(model: nn.Module, runs: int) -> float:
    from amc.latency import measure

    return measure(model, "cpu", batch=1, threads=1, warmup=max(3, runs // 5), runs=runs)  # times a CPU copy


def compress(checkpoint: str | Path, arch: str | None, splits: Splits, config: CompressConfig,
             run_dir: str | Path, progress: Progress | None = None) -> CompressResult:
    """Run the whole pipeline; see the module doc."""
    from amc.evaluator import EvalConfig, Evaluator
    from amc.export import export_compressed
    from amc.recipe import FinetuneSpec, SearchInfo, apply_recipe, make_recipe, save_recipe
    from amc.report import run_report
    from amc.sensitivity import auto_policy, finegrained_scan

    say = progress or (lambda msg: None)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    budget = config.parsed_budget
    gran = config.resolved_granularity
    device = splits.train_x.device
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    # -- profile ---------------------------------------------------------------------------------
    t = time.perf_counter()
    arch = resolve_arch(arch, checkpoint)
    dense = load_model(arch, checkpoint).to(device)
    test = splits.loader("test", 512, limit=config.test_limit)
    dense_acc = evaluate(dense, test)
    dense_macs, dense_params = count_macs(dense)[0], count_params(dense)
    times["profile"] = time.perf_counter() - t
    say(f"profile: {arch}, {dense_params:,} params, {dense_macs / 1e6:.2f} M MACs, test accuracy {dense_acc:.2%}")

    # -- evaluator (the budget is checked here, before any search) ------------------------------
    lut = None
    if budget.kind == "latency":
        from amc.latency import LatencyTable

        lut = LatencyTable(run / "latency_lut.csv", "cpu", threads=1)
    ecfg = EvalConfig(granularity=gran, calib_images=config.calib_images, eval_images=config.eval_images,
                      upper=config.upper, criterion=config.criterion, round_to=config.round_to)
    evaluator = Evaluator(dense, splits, budget, ecfg, latency_table=lut)

    # -- sensitivity ------------------------------------------------------------------------------
    t = time.perf_counter()
    if gran == "fine":
        curves = finegrained_scan(dense, splits.loader("heldout", 512, limit=config.eval_images), evaluator.names,
                                  config.sparsities)
        sens_policy = None
        if budget.kind == "size":  # the curve-picked policies, global magnitude and LAMP, checked jointly
            calib = splits.loader("train", 512, limit=config.calib_images, shuffle=False, augment=False)
            sens_policy, table = auto_policy(dense, curves, budget.fraction,
                                             splits.loader("heldout", 512, limit=config.eval_images), calib=calib,
                                             names=evaluator.names)
            atomic_write_text(run / "candidates.csv", table.to_csv(index=False))
            sens_policy = evaluator.projector.project(sens_policy)
    else:
        curves = evaluator.sensitivity(config.sensitivity_ratios)
        sens_policy = None
    if sens_policy is None:
        sens_policy = evaluator.sensitivity_policy(curves)
    atomic_write_text(run / "sensitivity.csv", curves.to_csv(index=False))
    times["sensitivity"] = time.perf_counter() - t
    say(f"sensitivity: {len(curves)} points in {times['sensitivity']:.1f} s")

    # -- search -------------------------------------------------------------------------------------
    t = time.perf_counter()
    trials = pd.DataFrame()
    policy: dict[str, float] | None
    if config.method == "sensitivity":
        policy = sens_policy
    elif config.method == "optuna":
        from search.optuna_search import OptunaConfig, OptunaSearcher

        ocfg = OptunaConfig(study=f"compress-{arch}", storage=config.storage, seed=config.seed,
                            n_trials=config.episodes)
        searcher = OptunaSearcher(evaluator, ocfg, run_dir=run, sensitivity_policy=sens_policy)
        found = searcher.run(on_trial=lambda tr, n: say(f"trial {n}/{config.episodes}"))
        policy, trials = found.best_policy, found.trials
    else:
        from amc.agent import AgentConfig, run_agent

        warm = config.warmup if config.warmup is not None else max(1, config.episodes // 3)
        acfg = AgentConfig(episodes=config.episodes, warmup_episodes=min(warm, config.episodes), seed=config.seed)
        agent = run_agent(evaluator, acfg, run / "agent", on_episode=lambda row, best: say(
            f"episode {int(row.get('episode', 0)) + 1}/{config.episodes}"),
            seed_policies=[evaluator.uniform_policy(), sens_policy])  # the first warm-up episodes
        policy, trials = agent.best_policy, agent.episodes
    if policy is None:
        raise AmcError("the search found no feasible policy; raise the budget or the episodes")
    candidates = {"search best": policy, "sensitivity": sens_policy, "uniform": evaluator.uniform_policy()}
    scored = {k: evaluator.evaluate(p) for k, p in candidates.items()}
    if config.method != "sensitivity" and scored["sensitivity"].feasible and \
            scored["sensitivity"].reward > scored["search best"].reward:
        say("the sensitivity-picked policy scored above the search's best: keeping it")
        policy = sens_policy
    if len(trials):
        atomic_write_text(run / "trials.csv", trials.to_csv(index=False))
    times["search"] = time.perf_counter() - t
    say(f"search ({config.method}): {len(trials)} episodes in {times['search']:.1f} s")

    # -- recipe, rebuild, finetune -------------------------------------------------------------------
    t = time.perf_counter()
    spec = FinetuneSpec(epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                        distill=config.distill)
    info = SearchInfo(config.method, config.episodes if config.method != "sensitivity" else 0, config.seed)
    if gran == "channel":
        plan = evaluator.plan(evaluator.check(policy))
        recipe = make_recipe(arch, checkpoint, dict(policy), "channel", config.criterion, kept=plan,
                             round_to=config.round_to, budget=budget, finetune=spec, search=info)
    else:
        recipe = make_recipe(arch, checkpoint, dict(policy), "fine", budget=budget, finetune=spec, search=info)
    before: dict[str, float] = {}

    def on_rebuilt(model: nn.Module, masks) -> None:
        before["accuracy"] = evaluate(model, test)

    model, _ = apply_recipe(recipe, checkpoint, loader=splits.loader("train", config.batch_size,
                                                                           seed=config.seed),
                                device=device, on_rebuilt=on_rebuilt)
    times["finetune"] = time.perf_counter() - t
    acc = evaluate(model, test)
    if not math.isfinite(acc):
        raise AmcError("the finetuned model produced non-finite outputs")
    say(f"finetune: {before['accuracy']:.2%} -> {acc:.2%} in {times['finetune']:.1f} s")

    # -- measure, export ----------------------------------------------------------------------------
    t = time.perf_counter()
    macs = count_macs(model)[0]
    dense_ms = _cpu_latency(dense, config.latency_runs)
    ms = _cpu_latency(model, config.latency_runs)
    times["measure"] = time.perf_counter() - t
    t = time.perf_counter()
    exported = export_compressed(model.cpu(), arch, run, gran, dtype=config.export_dtype, onnx=config.onnx)
    where = {"pruned": "pruned_dir", "sparse": "sparse_path", "onnx": "onnx_path"}  # export_compressed's keys
    files = {Path(str(exported[loc])).name: int(exported[f"{kind}_bytes"])
             for kind, loc in where.items() if loc in exported}
    times["export"] = time.perf_counter() - t
    metrics = dict(dense_accuracy=dense_acc, accuracy_before_finetune=before["accuracy"], accuracy=acc,
                   size_fraction=size_fraction(model, dense_params * 32), params=count_params(model), macs=macs,
                   macs_fraction=macs / dense_macs, latency_ms=ms, latency_speedup=dense_ms / ms,
                   latency_device="cpu 1 thread bs1 (PyTorch eager)",
                   file_bytes=int(next(iter(files.values()))) if files else None)
    recipe = recipe.with_metrics(**metrics)
    recipe_path = save_recipe(recipe, run / "recipe.yaml")

    # -- report ----------------------------------------------------------------------------------------
    t = time.perf_counter()
    cost_kind = budget.kind
    results = pd.DataFrame([{"method": f"{k} (held-out, before finetune)", "budget": r.cost(cost_kind),
                             "accuracy": r.accuracy} for k, r in scored.items()]
                           + [{"method": "chosen, test after finetune", "budget": metrics.get(f"{cost_kind}_fraction",
                               scored["search best"].cost(cost_kind)), "accuracy": acc}])
    times["total"] = time.perf_counter() - t_all
    rep = run_report(run, recipe, dense=dense.cpu(), compressed=model.cpu(), trials=trials if len(trials) else None,
                     sensitivity=curves, results=results, timings=times, files=files,
                     baseline_policies={"sensitivity": sens_policy, "uniform": candidates["uniform"]},
                     title=f"amc compress: {arch}, {config.budget}, {config.method}")
    times["report"] = time.perf_counter() - t
    summary = {"checkpoint": str(checkpoint), "arch": arch, "config": asdict(config), "granularity": gran,
               "metrics": metrics, "files": files, "wall_time_s": times,
               "candidates_heldout": {k: r.row() for k, r in scored.items()},
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2, default=str))
    return CompressResult(run, recipe_path, rep.path, metrics, times, files)
