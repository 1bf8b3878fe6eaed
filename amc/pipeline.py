"""One-button compression: profile -> sensitivity -> search -> recipe -> finetune -> export -> report.

Lifecycle: ``CompressConfig(...)`` -> ``compress_model(dense, splits, config, run_dir, ...)`` (a
module object; ``compress(checkpoint, arch, splits, config, run_dir)`` builds it from a checkpoint) ->
``CompressResult`` (the compressed model, the recipe, paths, metrics, timings). The public entry
point, which also takes model references, data paths and torch datasets, is ``amc.compress``
(``amc/api.py``). Everything lands in ``run_dir``: ``recipe.yaml``,
the model files (``model.sparse.safetensors`` or ``pruned/`` and ``model.onnx``), ``report.md``
with its plots, ``trials.csv`` (every search episode or trial), ``sensitivity.csv`` and
``summary.json``. A size budget prunes weights (fine-grained); MACs, parameter and latency budgets
prune channels, so the model really gets faster.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from amc.data import DataSource
from amc.errors import AmcError
from amc.io import atomic_write_text
from amc.latency_check import check_latency, fit_measured, paired_fraction
from amc.layers import count_macs, count_params
from amc.metrics import size_fraction
from amc.models import load_model, resolve_arch
from amc.options import CompressConfig
from amc.recipe import DataInfo, Metrics, Recipe
from amc.search.registry import SearchSpec, make_searcher
from amc.train import evaluate

RECIPE_METRICS = {f.name for f in fields(Metrics)}  # what a recipe's metrics section holds
Progress = Callable[[str], None]
Score = Callable[[nn.Module], float]  # the user's evaluate(model) -> float, higher is better
Train = Callable[[nn.Module, float], object]  # the user's finetune(model, epochs)


@dataclass
class CompressResult:
    run_dir: Path
    recipe_path: Path
    report_path: Path
    metrics: dict
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    model: nn.Module | None = None  # the compressed model (CPU, eval mode)
    recipe: Recipe | None = None


def _cpu_latency(model: nn.Module, runs: int, input_shape: tuple[int, ...] = (3, 32, 32)) -> float:
    from amc.latency import measure

    return measure(model, "cpu", batch=1, threads=1, warmup=max(3, runs // 5), runs=runs,
                   input_shape=input_shape)  # times a CPU copy


def compress(checkpoint: str | Path, arch: str | None, splits: DataSource, config: CompressConfig,
             run_dir: str | Path, progress: Progress | None = None, data: DataInfo | None = None) -> CompressResult:
    """Run the whole pipeline on the model ``arch`` (a reference; guessed from the file name when
    None) loaded from ``checkpoint``; see the module doc. ``data`` describes the splits for the recipe."""
    arch = resolve_arch(arch, checkpoint)
    dense = load_model(arch, checkpoint)
    return compress_model(dense, splits, config, run_dir, progress=progress, ref=arch, checkpoint=checkpoint,
                          data=data)


def _user_train(train: Train, model: nn.Module, epochs: float, masks) -> None:
    """The user's finetune, with pruned weights held at zero (re-applied before every forward)."""
    from amc.train import hold_masks

    with hold_masks(model, masks):
        train(model, epochs)


def compress_model(dense: nn.Module, splits: DataSource, config: CompressConfig, run_dir: str | os.PathLike, *,
                   progress: Progress | None = None, ref: str | None = None,
                   checkpoint: str | os.PathLike | None = None,
                   input_shape: tuple[int, ...] | None = None, score: Score | None = None,
                   train: Train | None = None, data: DataInfo | None = None) -> CompressResult:
    """The whole pipeline on a dense module object (not modified; see the module doc).

    ``ref``: the model reference the recipe records (default: the module's class name);
    ``checkpoint``: the weights file it came from, if any (its hash goes into the recipe);
    ``input_shape``: one example input's shape (default: from the data, else (1, 3, 32, 32));
    ``score(model) -> float`` (higher is better) replaces held-out accuracy as the search's score and
    is reported beside test accuracy; ``train(model, epochs)`` replaces the built-in finetune (the
    final one; pruned weights are held at zero during it).
    """
    from amc.evaluator import build_evaluator
    from amc.export.files import export_compressed
    from amc.recipe import FinetuneSpec, SearchInfo, apply_to_model, make_recipe, save_recipe
    from amc.report import run_report
    from amc.sensitivity import auto_policy, finegrained_scan
    from amc.train import finetune

    say = progress or (lambda msg: None)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    budget = config.parsed_budget
    gran = config.resolved_granularity
    device = splits.device
    shape = tuple(input_shape) if input_shape is not None else (1, *getattr(splits, "input_shape", (3, 32, 32)))
    arch = ref or type(dense).__name__
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    # -- profile ---------------------------------------------------------------------------------
    t = time.perf_counter()
    source = dense
    dense = copy.deepcopy(dense).to(device).eval()
    test = splits.loader("test", 512, limit=config.test_limit)
    dense_acc = evaluate(dense, test)
    dense_score = float(score(dense)) if score is not None else None
    dense_macs, dense_params = count_macs(dense, shape)[0], count_params(dense)
    num_classes = int(dense(torch.zeros(shape, device=device)).shape[-1])
    times["profile"] = time.perf_counter() - t
    say(f"profile: {arch}, {dense_params:,} params, {dense_macs / 1e6:.2f} M MACs, test accuracy {dense_acc:.2%}"
        + (f", score {dense_score:.4g}" if dense_score is not None else ""))

    # -- evaluator (the budget is checked here, before any search) ------------------------------
    evaluator = build_evaluator(dense, splits, config, shape, latency_table=run / "latency_lut.csv", score_fn=score,
                                say=say)

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
    else:  # the uniform and the sensitivity-picked policies are the search's first trials
        wanted = SearchSpec(config.episodes, config.seed,
                          start={"uniform": evaluator.uniform_policy(), "sensitivity": sens_policy},
                          options={"warmup": config.warmup, "study": config.study or f"compress-{arch}",
                                   "storage": config.storage})
        folder = {"amc": run / "agent"}.get(config.method, run)  # the agent's checkpoints; Optuna's study.db
        found = make_searcher(config.method, evaluator, wanted, folder).run(
            progress=lambda p: say(f"trial {p.done}/{p.total}"))
        policy, trials = found.best_policy, found.trials
    if policy is None:
        raise AmcError("the search found no feasible policy; raise the budget or the episodes")
    candidates = {"search best": policy, "sensitivity": sens_policy, "uniform": evaluator.uniform_policy()}
    scored = {k: evaluator.evaluate(p) for k, p in candidates.items()}
    if config.method != "sensitivity" and scored["sensitivity"].feasible and \
            scored["sensitivity"].reward > scored["search best"].reward:
        say("the sensitivity-picked policy scored above the search's best: keeping it")
        policy = sens_policy
    fit = None
    if budget.kind == "latency" and config.latency_fit_rounds > 0:  # met by measurement, not only the table
        runs = config.latency_runs
        fit = fit_measured(policy, evaluator.projector, lambda p: evaluator.build(p)[0],
                           lambda m: paired_fraction(m, dense, rounds=5, runs=runs, input_shape=shape[1:]).fraction,
                           rounds=config.latency_fit_rounds, fill=True)
        say(f"latency fit: the table predicted {fit.steps[0]['predicted']:.2%}, measured {fit.steps[0]['measured']:.2%}"
            + (f"; tightened in {len(fit.steps) - 1} round(s) to {fit.measured:.2%} measured"
               if len(fit.steps) > 1 else "") + ("" if fit.within else " (still over the budget)"))
        policy = fit.policy
    if len(trials):
        atomic_write_text(run / "trials.csv", trials.to_csv(index=False))
    times["search"] = time.perf_counter() - t
    say(f"search ({config.method}): {len(trials)} episodes in {times['search']:.1f} s")

    # -- recipe, rebuild, finetune -------------------------------------------------------------------
    t = time.perf_counter()
    spec = FinetuneSpec(epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                        distill=config.distill)
    info = SearchInfo(config.method, config.episodes if config.method != "sensitivity" else 0, config.seed)
    common = dict(budget=budget, finetune=spec, search=info, model=source, num_classes=num_classes,
                  input_shape=shape, data=data)
    if gran == "channel":
        plan = evaluator.plan(evaluator.check(policy))
        recipe = make_recipe(arch, checkpoint, dict(policy), "channel", config.criterion, kept=plan,
                             round_to=config.round_to, **common)  # type: ignore[arg-type]
    else:  # obd / synflow masks are stored with the recipe (they are not rebuilt from |w|)
        from amc.importance.weights import fine_criterion

        crit = fine_criterion(config.criterion)
        stored = evaluator.fine_masks(evaluator.check(policy)) if crit != "magnitude" else None
        recipe = make_recipe(arch, checkpoint, dict(policy), "fine", crit, masks=stored,
                             **common)  # type: ignore[arg-type]
    model, masks = apply_to_model(recipe, source)
    model = model.to(device)
    masks = {k: v.to(device) for k, v in masks.items()}
    before = {"accuracy": evaluate(model, test)}
    if spec.epochs > 0:
        torch.manual_seed(spec.seed)
        if train is not None:
            _user_train(train, model, spec.epochs, masks)
        else:
            teacher = dense if spec.distill > 0 else None
            finetune(model, splits.loader("train", config.batch_size, seed=config.seed), spec.config(),
                     masks=masks or None, teacher=teacher)
    model.eval()
    times["finetune"] = time.perf_counter() - t
    acc = evaluate(model, test)
    final_score = float(score(model)) if score is not None else None
    if not math.isfinite(acc) or (final_score is not None and not math.isfinite(final_score)):
        raise AmcError("the finetuned model produced non-finite outputs")
    say(f"finetune: {before['accuracy']:.2%} -> {acc:.2%} in {times['finetune']:.1f} s")

    # -- measure, export ----------------------------------------------------------------------------
    t = time.perf_counter()
    macs = count_macs(model, shape)[0]
    dense_ms = _cpu_latency(dense, config.latency_runs, shape[1:])
    ms = _cpu_latency(model, config.latency_runs, shape[1:])
    times["measure"] = time.perf_counter() - t
    t = time.perf_counter()
    exported = export_compressed(model.cpu(), arch, run, gran, dtype=config.export_dtype, onnx=config.onnx,
                                 input_shape=shape, num_classes=num_classes, program=True)
    for problem in ("onnx_skipped", "program_skipped"):
        if problem in exported:
            say(f"export: {exported[problem]}")
    where = {"pruned": "pruned_dir", "sparse": "sparse_path", "onnx": "onnx_path",
             "program": "program_path"}  # export_compressed's keys
    files = {Path(str(exported[loc])).name: int(exported[f"{kind}_bytes"])
             for kind, loc in where.items() if loc in exported}
    times["export"] = time.perf_counter() - t
    metrics = dict(dense_accuracy=dense_acc, accuracy_before_finetune=before["accuracy"], accuracy=acc,
                   dense_score=dense_score, score=final_score, params_fraction=count_params(model) / dense_params,
                   latency_fraction=ms / dense_ms,
                   size_fraction=size_fraction(model, dense_params * 32), params=count_params(model), macs=macs,
                   macs_fraction=macs / dense_macs, latency_ms=ms, latency_speedup=dense_ms / ms,
                   latency_device="cpu 1 thread bs1 (PyTorch eager)",
                   file_bytes=int(next(iter(files.values()))) if files else None)
    if fit is not None:
        # the rounds that made the chosen policy meet the budget by measurement (each round's figures in the log)
        metrics.update(latency_fit_measured=fit.measured, latency_fit_predicted=fit.predicted,
                       latency_fit_within=fit.within, latency_fit_rounds=len(fit.steps),
                       latency_fit_first_measured=fit.steps[0]["measured"],
                       latency_fit_first_predicted=fit.steps[0]["predicted"])
    if budget.kind == "latency":  # the budget checked against the measurement, not only the table's prediction
        check = check_latency(model, dense, budget, measure=lambda m: ms, dense_ms=dense_ms)
        metrics["latency_within_budget"] = check.within
        if not check.within:
            say(f"warning: measured CPU latency {check.measured:.2%} of dense exceeds the budget {budget.fraction:.2%}")
    recipe = recipe.with_metrics(**{k: v for k, v in metrics.items() if k in RECIPE_METRICS})
    recipe_path = save_recipe(recipe, run / "recipe.yaml")

    # -- report ----------------------------------------------------------------------------------------
    t = time.perf_counter()
    cost_kind = budget.kind
    results = pd.DataFrame([{"method": f"{k} (held-out, before finetune)", "budget": r.cost(cost_kind),
                             "accuracy": r.accuracy} for k, r in scored.items()]
                           + [{"method": "chosen, test after finetune", "budget": metrics[f"{cost_kind}_fraction"],
                               "accuracy": acc}])  # measured on the finetuned model, for every budget kind
    times["total"] = time.perf_counter() - t_all
    rep = run_report(run, recipe, dense=dense.cpu(), compressed=model.cpu(), trials=trials if len(trials) else None,
                     sensitivity=curves, results=results, timings=times, files=files,
                     baseline_policies={"sensitivity": sens_policy, "uniform": candidates["uniform"]},
                     title=f"amc compress: {arch}, {config.budget}, {config.method}")
    times["report"] = time.perf_counter() - t
    summary = {"checkpoint": str(checkpoint) if checkpoint is not None else None, "arch": arch,
               "input_shape": list(shape), "num_classes": num_classes, "config": config.flat(), "granularity": gran,
               "metrics": metrics, "files": files, "wall_time_s": times,
               "candidates_heldout": {k: r.row() for k, r in scored.items()},
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2, default=str))
    return CompressResult(run, recipe_path, rep.path, metrics, times, files, model=model, recipe=recipe)
