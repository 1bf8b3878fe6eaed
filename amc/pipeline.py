"""One-button compression: profile -> sensitivity -> search -> recipe -> finetune -> export -> report.

Lifecycle: ``CompressConfig(...)`` (``amc.options``) -> ``compress_model(dense, splits, config, run_dir,
...)`` (a module object; ``compress(checkpoint, arch, splits, config, run_dir)`` builds it from a
checkpoint) -> ``CompressResult`` (the compressed model, the recipe, paths, metrics, timings). The
public entry point, which also takes model references, data paths and torch datasets, is
``amc.compress`` (``amc/api.py``).

``compress_model`` runs the stages in order, each a function of the ``Job`` (options, data, run
folder, dense model) and what the stages before it returned: ``profile`` -> ``Profile``, (the
evaluator, ``build_evaluator``: the budget is checked there, before any work) ->
``sensitivity`` -> ``Sensitivity`` -> ``search`` -> ``Choice`` -> ``make_job_recipe`` -> ``Recipe``
-> ``finetune`` -> ``Finetuned`` -> ``export`` -> ``Measured`` -> ``report``. Everything lands in
``run_dir``: ``recipe.yaml``, the model files (``model.sparse.safetensors`` or ``pruned/`` and
``model.onnx``), ``report.md`` with its plots, ``trials.csv`` (every search episode or trial),
``sensitivity.csv`` and ``summary.json``. A size budget prunes weights (fine-grained); MACs,
parameter and latency budgets prune channels, so the model really gets faster.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from amc.data import DataSource
from amc.errors import AmcError, BudgetError
from amc.evaluator import Evaluator
from amc.io import atomic_write_text
from amc.latency import Paired, Target, paired
from amc.latency_check import LatencyCheck, aim_search, fit_to_budget, fitted
from amc.layers import count_macs, count_params
from amc.metrics import size_fraction
from amc.models import load_model, resolve_arch
from amc.options import PIPELINE_METHODS, CompressConfig
from amc.policy import Policy
from amc.recipe import DataInfo, Metrics, Recipe, save_recipe
from amc.search.base import final_choice
from amc.search.registry import SearchSpec, make_searcher
from amc.task import AnyTask, Task, as_task
from amc.train import evaluate

if TYPE_CHECKING:
    from amc.budget import Budget
    from amc.evaluator import Result
    from amc.recipe import FinetuneSpec

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


def latency_target(config: CompressConfig, input_shape: tuple[int, ...]) -> Target:
    """Where a compression's latencies are taken and predicted: the CPU, the options' runtime, threads, batch
    and memory layout, on inputs of ``input_shape`` (one example's shape, with its batch of 1)."""
    return Target(runtime=config.latency_runtime, threads=config.latency_threads, batch=config.latency_batch,
                  input_shape=tuple(input_shape[1:]), layout=config.latency_layout)


def compress(checkpoint: str | Path, arch: str | None, splits: DataSource, config: CompressConfig,
             run_dir: str | Path, progress: Progress | None = None, data: DataInfo | None = None) -> CompressResult:
    """Run the whole pipeline on the model ``arch`` (a reference; guessed from the file name when
    None) loaded from ``checkpoint``; see the module doc. ``data`` describes the splits for the recipe."""
    dense = load_model((arch := resolve_arch(arch, checkpoint)), checkpoint)
    return compress_model(dense, splits, config, run_dir, progress=progress, ref=arch, checkpoint=checkpoint,
                          data=data)


def _user_train(train: Train, model: nn.Module, epochs: float, masks) -> None:
    """The user's finetune, with pruned weights held at zero (re-applied before every forward)."""
    from amc.train import hold_masks

    with hold_masks(model, masks):
        train(model, epochs)


def build_evaluator(dense: nn.Module, splits: DataSource | AnyTask, config: CompressConfig,
                    input_shape: tuple[int, ...] = (1, 3, 32, 32), *, latency_table: str | Path | None = None,
                    bounds: Mapping[str, tuple[float, float]] | None = None,
                    score_fn: Callable[[nn.Module], float] | None = None,
                    say: Callable[[str], None] | None = None) -> Evaluator:
    """The evaluator of a compression or a search, in one place: its config (``CompressConfig.eval_config``), and
    for a latency budget its latency table (``latency_table``: the CSV it reads and extends) on
    ``latency_target``, calibrated on the dense model and two thinner copies, since what the table's layers
    leave out counts too. The budget is checked here (``BudgetError`` when it cannot be met), before any search."""
    budget = config.parsed_budget
    lut = None
    if budget.kind == "latency":
        if latency_table is None:
            raise BudgetError("a latency budget needs a latency table (the per-layer latency lookup table CSV)")
        from amc.latency import CALIBRATION_RATIOS, LatencyTable

        target = latency_target(config, input_shape)
        lut = LatencyTable(latency_table, target=target)
        dense_ms = lut.calibrate(dense, thin=CALIBRATION_RATIOS)
        if say is not None:
            say(f"latency: dense {dense_ms:.2f} ms on {target.describe()}; the estimate: " + (
                lut.fit.describe() if lut.fit is not None else f"the table's summed layers times "
                f"{lut.scale:.3f} plus {lut.overhead_ms:.2f} ms outside the table's layers"))
    return Evaluator(dense, splits, budget, config.eval_config(bounds), input_shape=input_shape, latency_table=lut,
                     score_fn=score_fn)


def compress_model(dense: nn.Module, splits: DataSource | AnyTask, config: CompressConfig,
                   run_dir: str | os.PathLike, *,
                   progress: Progress | None = None, ref: str | None = None,
                   checkpoint: str | os.PathLike | None = None,
                   input_shape: tuple[int, ...] | None = None, score: Score | None = None,
                   train: Train | None = None, data: DataInfo | None = None) -> CompressResult:
    """The whole pipeline on a dense module object (not modified; see the module doc): its stages in order.

    ``ref``: the model reference the recipe records (default: the module's class name);
    ``checkpoint``: the weights file it came from, if any (its hash goes into the recipe);
    ``input_shape``: one example input's shape (default: from the data, else (1, 3, 32, 32));
    ``score(model) -> float`` (higher is better) replaces held-out accuracy as the search's score and
    is reported beside test accuracy; ``train(model, epochs)`` replaces the built-in finetune (the
    final one; pruned weights are held at zero during it). ``splits`` may be an ``amc.Task`` instead of
    a ``DataSource``: its evaluate is then the score, its test the final figure, its finetune the final
    finetune, and the model is traced on its example inputs (``amc.task``).
    """
    task = as_task(splits)
    if isinstance(task, Task):
        if config.resolved_granularity != "channel":
            raise AmcError(f"budget {config.budget}: fine-grained pruning (size budgets) scores the classification "
                           "task only; give a task a macs=, params= or latency= budget")
        if train is not None and task.finetune is None:
            task = dataclasses.replace(task, finetune=train)
        train = None
    config = config.for_device(task.device)  # the options left to the device (calibration, evaluation, grid)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    shape = tuple(input_shape) if input_shape is not None else (
        task.shape or () if isinstance(task, Task) else (1, *getattr(splits, "input_shape", (3, 32, 32))))
    job = Job(config, task, run, progress or (lambda msg: None), ref or type(dense).__name__, shape, dense,
              copy.deepcopy(dense).to(task.device).eval(), score, checkpoint, data)
    t_all = time.perf_counter()
    prof = profile(job)
    # the budget is checked here (BudgetError when it cannot be met), before any search
    evaluator = build_evaluator(job.dense, task, config, shape, latency_table=run / "latency_lut.csv",
                                score_fn=score, say=job.say)
    sens = sensitivity(job, evaluator)
    chosen = search(job, evaluator, sens)
    recipe = make_job_recipe(job, evaluator, chosen.policy, prof.num_classes)
    tuned = finetune(job, recipe, prof, train)
    measured = export(job, tuned, prof, chosen)
    recipe = recipe.with_metrics(**{k: v for k, v in measured.metrics.items() if k in RECIPE_METRICS})
    recipe_path = save_recipe(recipe, run / "recipe.yaml")
    job.times["total"] = time.perf_counter() - t_all
    report_path = report(job, recipe, prof, sens, chosen, tuned, measured)
    return CompressResult(run, recipe_path, report_path, measured.metrics, job.times, measured.files,
                          model=tuned.model, recipe=recipe)


# -- the stages, in order ------------------------------------------------------------------------------
@dataclass
class Job:
    """What every stage reads: the options, the data, the run folder and the dense model."""

    config: CompressConfig
    task: AnyTask  # what the model is scored, calibrated and finetuned on (a DataSource: classification)
    run: Path
    say: Progress
    arch: str  # the model reference the recipe records
    shape: tuple[int, ...]  # one example input's shape (() for a task's several inputs)
    source: nn.Module  # the user's dense module (not modified: the recipe is applied to it)
    dense: nn.Module  # a copy on the data's device, eval mode
    score: Score | None
    checkpoint: str | os.PathLike | None
    data: DataInfo | None
    times: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def user_task(self) -> Task | None:
        """The user's task (None for classification)."""
        return self.task if isinstance(self.task, Task) else None

    @property
    def example(self) -> Any:
        """The example inputs the model is traced and measured on."""
        return self.task.inputs(self.task.device)

    @property
    def splits(self) -> DataSource:
        """The classification task's data (its loaders)."""
        return self.task.source  # type: ignore[union-attr]

    @property
    def budget(self) -> Budget:
        return self.config.parsed_budget

    @property
    def granularity(self) -> str:
        return self.config.resolved_granularity

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.times[stage] = time.perf_counter() - t


@dataclass
class Profile:
    test: Any  # the test loader of the final numbers (classification)
    accuracy: float | None  # test accuracy (classification)
    score: float | None  # the user's evaluate (validation)
    macs: int
    params: int
    num_classes: int  # 0 for a task other than classification
    test_score: float | None = None  # a task's test(model)


def profile(job: Job) -> Profile:
    """The dense model's test accuracy (and user score), MACs, parameters and classes; for a user task its
    evaluate (one clear error when not finite) and test figures."""
    task = job.user_task
    if task is not None:
        with job.timed("profile"):
            valid, test_score = task.validation(job.dense), task.test_figure(job.dense)
            macs, params = count_macs(job.dense, job.shape, job.example)[0], count_params(job.dense)
        job.say(f"profile: {job.arch}, {params:,} params, {macs / 1e6:.2f} M MACs, {task.name} {task.metric} "
                f"{valid:.4g} (validation)" + (f", {test_score:.4g} (test)" if test_score is not None else ""))
        return Profile(None, None, valid, macs, params, 0, test_score)
    with job.timed("profile"):
        test = job.splits.loader("test", 512, limit=job.config.test_limit)
        acc = evaluate(job.dense, test)
        dense_score = float(job.score(job.dense)) if job.score is not None else None
        macs, params = count_macs(job.dense, job.shape)[0], count_params(job.dense)
        num_classes = int(job.dense(torch.zeros(job.shape, device=job.task.device)).shape[-1])
    job.say(f"profile: {job.arch}, {params:,} params, {macs / 1e6:.2f} M MACs, test accuracy {acc:.2%}"
            + (f", score {dense_score:.4g}" if dense_score is not None else ""))
    return Profile(test, acc, dense_score, macs, params, num_classes)


@dataclass
class Sensitivity:
    curves: pd.DataFrame  # accuracy per layer and ratio (sensitivity.csv)
    policy: Policy  # the sensitivity-picked policy, projected onto the budget


def sensitivity(job: Job, evaluator: Evaluator) -> Sensitivity:
    """Per-layer scans and the policy picked from them; writes sensitivity.csv (and candidates.csv for a
    size budget: the curve-picked policies, global magnitude and LAMP, checked jointly)."""
    from amc.progress import sensitivity_points
    from amc.sensitivity import auto_policy, finegrained_scan

    config, policy = job.config, None
    with job.timed("sensitivity"):
        if job.granularity == "fine":
            splits = job.splits
            curves = finegrained_scan(job.dense, splits.loader("heldout", 512, limit=config.eval_images),
                                      evaluator.names, config.sparsities)
            if job.budget.kind == "size":
                calib = splits.loader("train", 512, limit=config.calib_images, shuffle=False, augment=False)
                policy, table = auto_policy(job.dense, curves, job.budget.fraction,
                                            splits.loader("heldout", 512, limit=config.eval_images), calib=calib,
                                            names=evaluator.names)
                atomic_write_text(job.run / "candidates.csv", table.to_csv(index=False))
                policy = evaluator.projector.project(policy)
        else:
            ratios = config.sensitivity_ratios
            curves = evaluator.sensitivity(ratios, on_point=sensitivity_points(job.say, len(evaluator.names),
                                                                               len(ratios)))
        if policy is None:
            policy = evaluator.sensitivity_policy(curves)
        atomic_write_text(job.run / "sensitivity.csv", curves.to_csv(index=False))
    job.say(f"sensitivity: {len(curves)} points in {job.times['sensitivity']:.1f} s")
    return Sensitivity(curves, policy)


@dataclass
class Choice:
    policy: Policy  # the policy the recipe records
    trials: pd.DataFrame  # every search episode or trial (trials.csv; empty without a search)
    candidates: dict[str, Policy]  # search best, sensitivity, uniform
    scored: dict[str, Result]  # the candidates on the held-out split, before finetuning
    fit: Any = None  # amc.latency.fit.fit_measured's result for a latency budget
    aim: tuple[float, list[dict[str, float]]] | None = None  # latency: the table's fraction searched, its fit


def search(job: Job, evaluator: Evaluator, sens: Sensitivity) -> Choice:
    """The search (the uniform and the sensitivity-picked policies are its first trials), the best of it
    and the baselines, and for a latency budget the fit of that policy to a measurement; writes trials.csv."""
    config = job.config
    lat_fit = job.budget.kind == "latency" and config.latency_fit_rounds > 0  # met by measurement, not the table
    each_fit = lat_fit and config.latency_fit_candidates  # and each final candidate before the choice
    with job.timed("search"):
        trials, ranked, aim = pd.DataFrame(), [], None
        policy: Policy | None
        if config.method in PIPELINE_METHODS:  # "sensitivity": no search
            policy = sens.policy
        else:
            if job.budget.kind == "latency" and config.latency_search_rounds > 0:  # the table corrected by measurement
                aim = aim_search(evaluator, job.budget, _paired_fraction(job), config.latency_search_rounds, job.say,
                                 config.latency_confirm)
                sens = Sensitivity(sens.curves, evaluator.sensitivity_policy(sens.curves))
            wanted = SearchSpec(config.episodes, config.seed,
                                start={"uniform": evaluator.uniform_policy(), "sensitivity": sens.policy},
                                options={"warmup": config.warmup, "study": config.study or f"compress-{job.arch}",
                                         "storage": config.storage, "sigma_min": config.sigma_min,
                                         "exploit_every": config.exploit_every})
            folder = {"amc": job.run / "agent"}.get(config.method, job.run)  # the agent's checkpoints; study.db
            found = make_searcher(config.method, evaluator, wanted, folder).run(progress=lambda p: job.say(p.message()))
            policy, trials = found.best_policy, found.trials
            each = fitted(evaluator, job.budget, _paired_fraction(job), config.latency_fit_rounds,
                          config.latency_confirm) if each_fit else None
            if (ranked := final_choice(evaluator, trials, config.rerank, steps=config.rerank_steps,
                                       first=len(wanted.start), adjust=each)) and ranked[0].feasible:
                policy = ranked[0].policy  # the best of the top few and the starting policies on more data
                job.say(f"re-rank of the search's top {config.rerank} and its starting policies: kept its "
                        f"#{ranked[0].rank} of {len(ranked)}")
        if policy is None:
            raise AmcError("the search found no feasible policy; raise the budget or the episodes")
        candidates = {"search best": policy, "sensitivity": sens.policy, "uniform": evaluator.uniform_policy()}
        scored = {k: evaluator.evaluate(p) for k, p in candidates.items()}
        if config.method not in PIPELINE_METHODS and not ranked and scored["sensitivity"].feasible and \
                scored["sensitivity"].reward > scored["search best"].reward:
            job.say("the sensitivity-picked policy scored above the search's best: keeping it")
            policy = sens.policy
        fit = None
        if lat_fit:
            fit = fit_to_budget(evaluator, job.budget, policy, _paired_fraction(job), config.latency_fit_rounds,
                                job.say, config.latency_confirm)  # the user's budget by paired measurement
            policy = fit.policy
        if len(trials):
            atomic_write_text(job.run / "trials.csv", trials.to_csv(index=False))
    job.say(f"search ({config.method}): {len(trials)} episodes in {job.times['search']:.1f} s")
    return Choice(policy, trials, candidates, scored, fit, aim)


def _paired_fraction(job: Job):
    """model -> its paired latency over the dense model's on the job's latency target."""
    runs, target = job.config.latency_runs, latency_target(job.config, job.shape)
    return lambda m: paired(m, job.dense, target, rounds=5, runs=runs).fraction



def make_job_recipe(job: Job, evaluator: Evaluator, policy: Policy, num_classes: int) -> Recipe:
    """The recipe of ``policy``: the kept channels per group (channel), or the criterion and, for obd /
    synflow, the masks themselves (fine: they are not rebuilt from |w|)."""
    with job.timed("recipe"):
        return _recipe(job, evaluator, policy, num_classes)


def _recipe(job: Job, evaluator: Evaluator, policy: Policy, num_classes: int) -> Recipe:
    from amc.recipe import SearchInfo, make_recipe

    config = job.config
    spec = _finetune_spec(config)
    info = SearchInfo(config.method, config.episodes if config.method not in PIPELINE_METHODS else 0, config.seed)
    common: dict[str, Any] = dict(budget=job.budget, finetune=spec, search=info, model=job.source,
                                  num_classes=num_classes, input_shape=job.shape, data=job.data)
    if job.granularity == "channel":
        plan = evaluator.plan(evaluator.check(policy))
        return make_recipe(job.arch, job.checkpoint, dict(policy), "channel", config.criterion, kept=plan,
                           round_to=config.round_to, **common)
    from amc.importance.weights import fine_criterion

    crit = fine_criterion(config.criterion)
    stored = evaluator.fine_masks(evaluator.check(policy)) if crit != "magnitude" else None
    return make_recipe(job.arch, job.checkpoint, dict(policy), "fine", crit, masks=stored, **common)


@dataclass
class Finetuned:
    model: nn.Module  # the compressed, finetuned model (eval mode)
    accuracy_before: float | None  # test accuracy of the rebuilt model, before finetuning (classification)
    accuracy: float | None
    score: float | None
    score_before: float | None = None  # a task's evaluate before finetuning
    test_score: float | None = None  # a task's test(model)


def finetune(job: Job, recipe: Recipe, prof: Profile, train: Train | None) -> Finetuned:
    """The recipe applied to the user's dense model, then the final finetune (the built-in one, the dense
    model as teacher when distilling, or the user's ``train``), pruned weights held at zero."""
    from amc.recipe import apply_to_model
    from amc.train import finetune as builtin_finetune

    config, device = job.config, job.task.device
    task = job.user_task
    if task is not None:
        return _finetune_task(job, task, recipe)
    with job.timed("finetune"):
        model, masks = apply_to_model(recipe, job.source)
        model = model.to(device)
        masks = {k: v.to(device) for k, v in masks.items()}
        before = evaluate(model, prof.test)
        if config.finetune_epochs > 0:
            torch.manual_seed(config.seed)
            if train is not None:
                _user_train(train, model, config.finetune_epochs, masks)
            else:
                teacher = job.dense if config.distill > 0 else None
                builtin_finetune(model, job.splits.loader("train", config.batch_size, seed=config.seed),
                                 _finetune_spec(config).config(), masks=masks or None, teacher=teacher,
                                 progress=job.say)
        model.eval()
    acc = evaluate(model, prof.test)
    final_score = float(job.score(model)) if job.score is not None else None
    if not math.isfinite(acc) or (final_score is not None and not math.isfinite(final_score)):
        raise AmcError("the finetuned model produced non-finite outputs")
    job.say(f"finetune: {before:.2%} -> {acc:.2%} in {job.times['finetune']:.1f} s")
    return Finetuned(model, before, acc, final_score)


def _finetune_task(job: Job, task: Task, recipe: Recipe) -> Finetuned:
    """``finetune`` for a user task: its finetune (pruned weights held at zero), scored by its evaluate
    (one clear error when the finetuned model's score is not finite) and its test."""
    config = job.config
    with job.timed("finetune"):
        model, masks = task.apply_recipe(recipe, job.source)
        model = model.to(task.device).eval()
        masks = {k: v.to(task.device) for k, v in masks.items()}
        # BatchNorm re-estimated on the task's calibration inputs, as the search scored the policy
        task.recalibrate(model, task.calibration_batches(config.calib_images, device=task.device))
        before = task.score(model)
        torch.manual_seed(config.seed)
        tuned = task.final_finetune(model, config.finetune_epochs, masks or None)
        model.eval()
    after = task.validation(model, "the compressed model after its finetune")
    test = task.test_figure(model)
    job.say(f"finetune: {task.metric} {before:.4g} -> {after:.4g} (validation) in {job.times['finetune']:.1f} s"
            + ("" if tuned else " (the task has no finetune: not finetuned)"))
    return Finetuned(model, None, None, after, before, test)


def _finetune_spec(config: CompressConfig) -> FinetuneSpec:
    """The final finetune as the recipe records it (and as it runs)."""
    from amc.recipe import FinetuneSpec

    return FinetuneSpec(epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                        distill=config.distill)


@dataclass
class Measured:
    metrics: dict[str, Any]  # what CompressResult.metrics, summary.json and the recipe hold
    files: dict[str, int]  # exported file name -> bytes
    paired: Paired | None = None  # the paired latency measurement of the compressed model against the dense one


def export(job: Job, tuned: Finetuned, prof: Profile, chosen: Choice) -> Measured:
    """The compressed model's costs and CPU latency against the dense model's, and its files (safetensors,
    ONNX, torch.export program); a latency budget is checked against the measurement."""
    from amc.export.files import export_files

    config, model, task = job.config, tuned.model, job.user_task
    one_tensor = task is None or task.shape is not None  # the latency target and torch.export take one tensor
    with job.timed("measure"):
        macs = count_macs(model, job.shape, job.example)[0]
        # the only speedup reported: dense and compressed timed in alternating rounds, in this process
        speed = paired(model, job.dense, latency_target(config, job.shape), rounds=config.latency_rounds,
                       runs=config.latency_runs) if one_tensor else None
    job.say(f"latency (paired): {speed.line()}" if speed is not None else
            "latency: not measured (the latency target takes one input tensor; this task's inputs are several)")
    with job.timed("export"):
        exported = export_files(model.cpu(), job.arch, job.run, job.granularity, dtype=config.export_dtype,
                                onnx=config.onnx, input_shape=job.shape, num_classes=prof.num_classes,
                                one_tensor=one_tensor, task=task, layout=config.latency_layout)
        for problem in ("onnx_skipped", "program_skipped"):
            if problem in exported:
                job.say(f"export: {exported[problem]}")
        where = {"pruned": "pruned_dir", "sparse": "sparse_path", "onnx": "onnx_path",
                 "program": "program_path"}  # export_compressed's keys
        files = {Path(str(exported[loc])).name: int(exported[f"{kind}_bytes"])
                 for kind, loc in where.items() if loc in exported}
    metrics = dict(dense_accuracy=prof.accuracy, accuracy_before_finetune=tuned.accuracy_before,
                   accuracy=tuned.accuracy, dense_score=prof.score, score=tuned.score,
                   params_fraction=count_params(model) / prof.params,
                   size_fraction=size_fraction(model, prof.params * 32), params=count_params(model), macs=macs,
                   macs_fraction=macs / prof.macs, **(speed.metrics() if speed is not None else {}),
                   file_bytes=int(next(iter(files.values()))) if files else None)
    if task is not None:  # the user's figures: evaluate (validation) and test, named as the task names them
        metrics.update(task=task.name, metric=task.metric, score_before_finetune=tuned.score_before,
                       dense_test_score=prof.test_score, test_score=tuned.test_score,
                       onnx_skipped=exported.get("onnx_skipped"), program_skipped=exported.get("program_skipped"))
    fit = chosen.fit
    if fit is not None:
        # the rounds that made the chosen policy meet the budget by measurement (each round's figures in the log)
        metrics.update(latency_fit_measured=fit.measured, latency_fit_predicted=fit.predicted,
                       latency_fit_within=fit.within, latency_fit_rounds=len(fit.steps),
                       latency_fit_first_measured=fit.steps[0]["measured"],
                       latency_fit_first_predicted=fit.steps[0]["predicted"])
    if chosen.aim is not None:  # the table's fraction the search aimed at, corrected by measurement
        metrics.update(latency_search_target=chosen.aim[0], latency_search_measured=chosen.aim[1][-1]["measured"],
                       latency_search_predicted=chosen.aim[1][-1]["predicted"])
    if job.budget.kind == "latency" and speed is not None:  # checked against the measurement, not the table
        check = LatencyCheck(job.budget.fraction, speed.fraction, None, speed.model_ms, speed.dense_ms)
        metrics["latency_within_budget"] = check.within
        if not check.within:
            job.say(f"warning: measured CPU latency {check.measured:.2%} of dense exceeds the budget "
                    f"{job.budget.fraction:.2%}")
    return Measured(metrics, files, speed)


def report(job: Job, recipe: Recipe, prof: Profile, sens: Sensitivity, chosen: Choice, tuned: Finetuned,
           measured: Measured) -> Path:
    """report.md with its plots, and summary.json (the options, the metrics, the candidates' held-out
    scores, the timings); returns the report's path."""
    from amc.report import run_report

    config, kind, task = job.config, job.budget.kind, job.user_task
    with job.timed("report"):
        results = None  # classification: the report makes its rows from the scored candidates and the metrics
        if task is not None:  # a task: its score in the accuracy column, shown as the task names it
            final = [{"method": f"chosen, {name} after finetune", "budget": measured.metrics[f"{kind}_fraction"],
                      "accuracy": value} for name, value in (("validation", tuned.score), ("test", tuned.test_score))
                     if value is not None]
            results = pd.DataFrame([{"method": f"{k} (validation, before finetune)", "budget": r.cost(kind),
                                     "accuracy": r.accuracy} for k, r in chosen.scored.items()] + final)
        trials = chosen.trials if len(chosen.trials) else None
        scored_by = f"; score: {task.name} {task.metric}" if task is not None else ""
        rep = run_report(job.run, recipe, dense=job.dense.cpu(), compressed=tuned.model.cpu(), trials=trials,
                         sensitivity=sens.curves, results=results, timings=job.times, files=measured.files,
                         baseline_policies={"sensitivity": sens.policy, "uniform": chosen.candidates["uniform"]},
                         title=f"amc compress: {job.arch}, {config.budget}, {config.method}{scored_by}",
                         metrics=measured.metrics, scored=chosen.scored if task is None else None, config=config,
                         device=job.task.device.type, metric=task.metric if task is not None else None)
        if task is not None:
            section = task.report_section((prof.score, tuned.score_before, tuned.score),
                                          (prof.test_score, tuned.test_score),
                                          [measured.metrics.get(k) for k in ("onnx_skipped", "program_skipped")])
            atomic_write_text(rep.path, rep.path.read_text() + section)
    device = job.task.device
    summary = {"checkpoint": str(job.checkpoint) if job.checkpoint is not None else None, "arch": job.arch,
               "input_shape": list(job.shape), "num_classes": prof.num_classes, "config": config.flat(),
               "granularity": job.granularity, "metrics": measured.metrics, "files": measured.files,
               "wall_time_s": job.times, "candidates_heldout": {k: r.row() for k, r in chosen.scored.items()},
               "latency_target": latency_target(config, job.shape).row() if job.shape else None,
               "latency_ratios": list(measured.paired.ratios) if measured.paired is not None else None,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    atomic_write_text(job.run / "summary.json", json.dumps(summary, indent=2, default=str))
    return rep.path
