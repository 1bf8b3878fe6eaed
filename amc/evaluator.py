"""The one evaluator both searchers call: policy -> ``Result`` (held-out accuracy, costs, reward).

Lifecycle: ``Evaluator(dense_model, task, budget, EvalConfig(...))`` once (copies the model once,
caches its state dict, the weight-magnitude orders or channel importances, and the task's calibration
batches and scorer on the model's device, and checks the budget can be met) -> ``evaluate(policy)``
per episode -> ``build(policy)`` for the few policies that are kept. ``task`` is an ``amc.Task`` (any
model: traced on its example inputs, scored by its evaluate) or a ``DataSource`` (the built-in
``amc.task.ClassificationTask``: held-out accuracy and cross-entropy in one host sync).

Per episode nothing is rebuilt: the dense weights are copied back into ONE working copy
(``Tensor.copy_`` from the cached state dict), the policy is emulated by masks on it (zeroed
weights for fine-grained pruning; zeroed coupled channels for channel pruning, whose outputs equal
the physically pruned model's), BatchNorm statistics are re-estimated on ``calib_images`` train
images (or the model is first finetuned ``recovery_steps`` steps, every policy on the same
batches, so that rewards differ by the policy alone), and accuracy is measured on the
held-out split. The costs are re-measured on the masked model (non-zero weights, or kept channels
read from the zero pattern), so ``feasible`` is checked, not assumed.

With ``score_on="physical"`` (by default for channel pruning with BN recovery on the CPU) a channel
policy is instead scored on a copy with its channels removed (``build``: the cached groups and
scores, torch-pruning's removal): the same outputs as the masked copy at a fraction of its cost, and
its costs read from its shapes.

What differs by granularity (the masks, the cost model, how costs are read back, ``build``, the
sensitivity picker) is one ``amc.granularity`` strategy, chosen once in ``__init__``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from amc.budget import Bounds, Budget, CostModel, Policy, Projector, make_bounds
from amc.cpuconv import training_layout
from amc.data import DataSource
from amc.errors import PolicyError, TrainingDiverged
from amc.granularity import STRATEGIES, Strategy
from amc.importance.weights import fine_criterion
from amc.layers import count_macs, count_params, layer_table
from amc.registry import Registry
from amc.sensitivity import LOSS_TIE_WEIGHT
from amc.task import AnyTask, ClassificationTask, Task, as_task
from amc.train import FinetuneConfig, Masks, finetune, model_device

GRANULARITIES = tuple(STRATEGIES)  # "fine", "channel"
RECOVERIES: Registry[str] = Registry("recovery", PolicyError)  # what runs after pruning, before scoring
RECOVERIES.register("bn", "bn", help="BatchNorm recalibration on the calibration images")
RECOVERIES.register("finetune", "finetune", help="recovery_steps SGD steps, then BN recalibration")
RECOVERIES.register("reconstruct", "reconstruct", help="(channel) AMC's least-squares refit of the layers that lost "
                                                       "input channels, then BN recalibration")
SCORE_ON = ("auto", "masked", "physical")  # which model a channel policy is scored on (see EvalConfig.score_on)
CALIB_IMAGES = 5120  # 10 batches of 512: BN statistics settle well below this (about 40 ms on an H100)
FEASIBLE_TOL = 1e-6  # relative slack for float round-off when re-measured costs meet the budget exactly
PENALTY = 2.0  # acc_penalty: accuracy lost per unit of relative budget overshoot (a 5% overshoot costs 0.1)


def reward_acc(accuracy: float, costs: Mapping[str, float], budget: Budget) -> float:
    """AMC's accuracy-guaranteed reward (R_err = -error, shifted by 1): the budget is enforced by the
    projection, so the reward is the held-out accuracy."""
    return accuracy


def reward_error_log_flops(accuracy: float, costs: Mapping[str, float], budget: Budget) -> float:
    """AMC's R_FLOPs = -error x log(FLOPs): trades accuracy against compute (absolute MACs)."""
    return -(1.0 - accuracy) * math.log(max(costs["macs_abs"], 1.0))


def reward_acc_penalty(accuracy: float, costs: Mapping[str, float], budget: Budget) -> float:
    """Accuracy minus ``PENALTY`` x the relative overshoot of the budget (for searches without the
    projection)."""
    over = max(0.0, costs[budget.kind] / budget.fraction - 1.0)
    return accuracy - PENALTY * over


def reward_acc_loss(accuracy: float, costs: Mapping[str, float], budget: Budget) -> float:
    """Held-out accuracy minus ``LOSS_TIE_WEIGHT`` x the held-out mean cross-entropy (``costs["loss"]``):
    AMC's accuracy reward with a tie-breaker. Checkpoints trained on the whole train set score near
    100% on any held-out part of it, so mild policies tie on accuracy alone; the loss still orders
    them, and at this weight (a loss rise of 0.1 counts as 0.1 points) it cannot overrule a real
    accuracy difference. The same weight as the sensitivity picker's."""
    return accuracy - LOSS_TIE_WEIGHT * costs["loss"]


REWARDS: dict[str, Callable[[float, Mapping[str, float], Budget], float]] = {
    "acc": reward_acc,
    "acc_loss": reward_acc_loss,
    "error_log_flops": reward_error_log_flops,
    "acc_penalty": reward_acc_penalty,
}


@dataclass(frozen=True)
class EvalConfig:
    granularity: str = "fine"  # "fine" (per-weight magnitude) or "channel"
    reward: str = "acc"  # a key of REWARDS
    # "bn" (BatchNorm recalibration), "finetune" (recovery_steps SGD steps, then recalibration) or, for channel
    # pruning, "reconstruct" (AMC's least-squares refit of every layer that lost input channels to the dense
    # layer's kept outputs, amc.pruners.reconstruct, on reconstruct_images of the calibration images; then
    # recalibration): a reward closer to what a finetune recovers at tight budgets, still without training
    recovery: str = "bn"
    recovery_steps: int = 20  # SGD steps when recovery == "finetune"
    recovery_lr: float = 0.01  # the finetune learning rate of FinetuneConfig
    recovery_seed: int = 0  # every policy recovers on the same batches (common random numbers)
    reconstruct_images: int = 256  # "reconstruct": calibration images whose sampled positions are refitted
    reconstruct_positions: int = 16  # "reconstruct": sampled output positions per image (more for wide layers)
    calib_images: int = CALIB_IMAGES  # train images (no augmentation) for BN recalibration
    eval_images: int | None = None  # held-out images scored per episode (None: all)
    batch_size: int = 512  # large batches: the reward is throughput-bound on a GPU
    criterion: str = "l2"  # channel: a key of amc.pruners.channel.CRITERIA; fine: magnitude (l1/l2), obd, synflow
    round_to: int = 8  # channel counts rounded to a multiple of this
    lower: float = 0.0  # default per-layer ratio bounds
    upper: float = 0.9
    bounds: Mapping[str, tuple[float, float]] | None = None  # per-layer overrides
    skip: tuple[str, ...] = field(default_factory=tuple)  # layers never pruned (e.g. the classifier)
    profile: bool = False  # time the phases of each evaluation into Evaluator.timing (syncs the GPU)
    # "masked": the dense working copy with the removed channels zeroed (runs at dense cost); "physical": a
    # copy with them removed (Evaluator.build; same outputs, fewer MACs: on ResNet-20 on the CPU a reward
    # cost 2.3 s against 5.5 s masked, reports/reward_cost.md); "auto": physical for channel pruning with BN
    # recovery on the CPU, masked otherwise (on a GPU the masked copy runs fast and a new shape per policy does not)
    score_on: str = "auto"

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise PolicyError(f"unknown granularity {self.granularity!r}; known: {', '.join(GRANULARITIES)}")
        if self.reward not in REWARDS:
            raise PolicyError(f"unknown reward {self.reward!r}; known: {', '.join(REWARDS)}")
        RECOVERIES.check(self.recovery)
        if self.score_on not in SCORE_ON:
            raise PolicyError(f"unknown score_on {self.score_on!r}; known: {', '.join(SCORE_ON)}")
        if self.recovery == "reconstruct" and (self.granularity != "channel" or self.score_on == "masked"):
            raise PolicyError("recovery='reconstruct' refits a physically pruned model: it needs channel pruning "
                              "and score_on 'auto' or 'physical'")
        if self.recovery == "reconstruct" and self.reconstruct_images < 1:
            raise PolicyError("reconstruct_images must be >= 1")
        if self.score_on == "physical" and self.granularity != "channel":
            raise PolicyError("score_on='physical' needs channel pruning (fine-grained pruning removes no channel)")
        if self.calib_images < 1 or self.batch_size < 1 or self.recovery_steps < 0:
            raise PolicyError("calib_images and batch_size must be >= 1, recovery_steps >= 0")
        if self.granularity == "fine":
            fine_criterion(self.criterion)  # one clear error for a criterion that does not rank weights


@dataclass(frozen=True)
class Result:
    """One scored policy. Cost fields are fractions of the dense model (re-measured)."""

    policy: dict[str, float]
    accuracy: float  # held-out top-1 in [0, 1] (nan when the model produced NaN/Inf)
    size: float  # non-zero parameters x 32 bits over dense
    macs: float  # MACs over dense (fine-grained: MACs of the non-zero weights)
    params: float  # parameters over dense (fine-grained: non-zero ones)
    latency: float | None  # predicted latency fraction, when a lookup table is given
    reward: float
    feasible: bool  # measured cost <= budget and the outputs were finite
    reason: str  # why not feasible ("" when feasible)
    seconds: float

    def cost(self, kind: str) -> float:
        value = getattr(self, kind)
        return float("nan") if value is None else float(value)

    def row(self) -> dict[str, float | str | bool | None]:
        out: dict[str, float | str | bool | None] = {
            "reward": self.reward, "accuracy": self.accuracy, "size": self.size, "macs": self.macs,
            "params": self.params, "latency": self.latency, "feasible": self.feasible,
            "reason": self.reason, "seconds": self.seconds}
        out.update({f"r:{k}": v for k, v in self.policy.items()})
        return out


def resolve_score_on(config: EvalConfig, device: torch.device) -> str:
    """``config.score_on`` with "auto" decided: "physical" for channel pruning with BN recovery on the CPU
    (the smaller model is cheaper to recalibrate and score than the masked dense one, and scores the
    same), "masked" otherwise: fine-grained pruning has no smaller model; on a GPU the dense masked copy
    is throughput-bound and every new pruned shape costs kernel selection; a finetune recovery keeps the
    masked copy, whose recovery the searches so far were measured with."""
    if config.score_on != "auto":
        return config.score_on
    if config.recovery == "reconstruct":  # it refits the smaller model's weights (any device)
        return "physical"
    physical = config.granularity == "channel" and config.recovery == "bn" and device.type == "cpu"
    return "physical" if physical else "masked"


def _batches(splits: DataSource, split: str, limit: int | None,
             batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = splits.loader(split, batch_size=batch_size, limit=limit, shuffle=False, augment=False)
    return [(x, y) for x, y in loader]


class Evaluator:
    """Scores pruning policies on one persistent working copy of ``dense_model`` (see module doc)."""

    def __init__(self, dense_model: nn.Module, splits: DataSource | AnyTask, budget: Budget,
                 config: EvalConfig = EvalConfig(), input_shape: tuple[int, ...] = (1, 3, 32, 32),
                 latency_table: object | None = None, score_fn: Callable[[nn.Module], float] | None = None) -> None:
        self.config, self.budget, self.splits = config, budget, splits
        self.task: AnyTask = as_task(splits)  # a DataSource is the classification task over it
        self.score_fn = score_fn  # the user's evaluate(model) -> float replaces held-out accuracy when given
        self.device = model_device(dense_model)
        example = None
        if isinstance(self.task, Task):  # the user's task: traced on its example inputs
            example = self.task.inputs(self.device)
            input_shape = self.task.shape or input_shape
            _check_task(self.task, config)
        self.input_shape, self.example = input_shape, example
        self.latency_table = latency_table  # amc.latency.LatencyTable: predicted latency (channel pruning)
        self.dense = dense_model.eval()
        self.work = copy.deepcopy(dense_model).eval()  # the one working copy (made once)
        # the training layout before ``_live`` is taken: finetune recovery converts its model to it, which
        # would otherwise give the working copy new tensors that ``_live`` no longer shares
        training_layout(self.work)
        self._state = {k: v.detach().clone() for k, v in self.work.state_dict().items()}
        self._live = self.work.state_dict()  # tensors sharing storage with the working copy
        self.table = layer_table(self.dense, input_shape, example)
        self.total_params = count_params(self.dense)
        self.total_macs = count_macs(self.dense, input_shape, example)[0]
        # calibration batches: (images, labels) for classification, model inputs for a user task
        self._calib = self.task.calibration_batches(config.calib_images, config.batch_size, self.device)
        self._scorer = self.task.scorer(config.eval_images, config.batch_size)
        self._eval = getattr(self._scorer, "batches", [])  # classification: the held-out batches
        self._n_eval = getattr(self._scorer, "count", 0)
        calib = self._calib if self.task.classification else ()  # criteria that need data want labels
        # what differs by granularity, chosen once: the pruner, its cost model, the costs read back
        self.strategy: Strategy = STRATEGIES[config.granularity](
            self.dense, self.work, self.table, budget, input_shape=input_shape, total_params=self.total_params,
            total_macs=self.total_macs, skip=config.skip, criterion=config.criterion, round_to=config.round_to,
            calib=calib, latency_table=latency_table, device=self.device, example_inputs=example)
        self.physical = resolve_score_on(config, self.device) == "physical"  # score a physically pruned copy
        self.names: list[str] = self.strategy.names
        self.cost_model: CostModel = self.strategy.cost_model
        self.bounds: Bounds = make_bounds(self.names, config.lower, config.upper, config.bounds)
        self.projector = Projector(self.cost_model, budget, self.bounds)  # BudgetError when impossible
        self._dense_out: dict[tuple[str, int], torch.Tensor] = {}  # "reconstruct": dense layer outputs, kept
        self.calls = 0
        self.timing: dict[str, float] = {}  # phases of the last evaluation (profile only)
        self.timings: list[dict[str, float]] = []  # of every evaluation (profile only)

    def retarget(self, fraction: float) -> None:
        """Aim at ``fraction`` of the dense cost on the cost model from now on (a latency table's estimate
        corrected by measurement: ``amc.latency.fit.search_target``): the projector, the starting policies
        and the feasibility of every later result follow it; ``BudgetError`` when the bounds cannot reach it."""
        self.projector = self.projector.under(Budget(self.budget.kind, float(fraction)))
        self.budget = self.projector.budget

    @property
    def scored_images(self) -> int:
        """How many held-out images each classification reward scores (0 for a user's task)."""
        return self._n_eval

    @property
    def _ctable(self):
        """The coupled channel groups (``amc.pruners.channel.ChannelTable``; channel pruning only)."""
        return self.strategy.table  # type: ignore[attr-defined]

    def plan(self, policy: Mapping[str, float]):
        """The ``amc.pruners.channel.ChannelPlan`` (kept channels per group) that ``policy`` gives, with the
        evaluator's cached importance scores: what a recipe records for a kept channel policy."""
        return self.strategy.plan(policy)

    # -- per episode -----------------------------------------------------------------------------
    @torch.no_grad()
    def _restore(self) -> None:
        for k, t in self._live.items():
            t.copy_(self._state[k])

    def check(self, policy: Mapping[str, float]) -> Policy:
        unknown = [k for k in policy if k not in self.bounds]
        if unknown:
            raise PolicyError(f"policy names layers that are not searched: {', '.join(unknown[:5])}")
        out = {}
        for n in self.names:
            r = float(policy.get(n, 0.0))
            if not 0.0 <= r < 1.0:
                raise PolicyError(f"ratio of {n} is {r}, outside [0, 1)")
            out[n] = r
        return out

    def fine_masks(self, policy: Mapping[str, float]) -> Masks:
        """The weight masks of ``policy`` (fine-grained pruning only)."""
        return self.strategy.fine_masks(policy)

    def _score(self, model: nn.Module) -> tuple[float, float, bool]:
        """The task's score (classification: held-out accuracy), loss and whether every output was finite."""
        return self._scorer(model)

    def _user_score(self, model: nn.Module) -> tuple[float, float, bool]:
        """The user's score (loss 0: the tie-breaking rewards see the score alone)."""
        model.eval()
        value = float(self.score_fn(model))  # type: ignore[misc]
        return value, 0.0, math.isfinite(value)

    def measure(self, model: nn.Module) -> dict[str, float]:
        """Costs of the (masked) model as fractions of dense: non-zero params, and MACs from the
        non-zero weights (fine) or from the kept input/output channels (channel). One host sync."""
        return self.strategy.measure(model)

    def evaluate(self, policy: Mapping[str, float]) -> Result:
        """Score ``policy`` (ratios per searched layer; missing layers stay dense). Never raises on a
        diverged model: returns ``feasible=False`` with a reason."""
        t0 = time.perf_counter()
        policy = self.check(policy)
        self.calls += 1
        finetuning = self.config.recovery == "finetune" and self.config.recovery_steps > 0
        if self.physical:  # a fresh copy with the channels removed: nothing to mask, nothing to restore
            model, masks = self.strategy.build(self.dense, policy)
        else:  # the one working copy, dense weights copied back, the policy emulated by masks
            self._restore()
            model = self.work
            masks = self.strategy.apply(model, policy, training=self.config.recovery == "finetune")
        t_apply = self._tick()
        reason = ""
        try:
            if self.config.recovery == "reconstruct":
                self._reconstruct(model, policy)
            if finetuning:
                self._recover(model, masks)
                if not self.physical:
                    self.strategy.reapply(model, policy)
            self.task.recalibrate(model, self._calib)
            t_recover = self._tick()
            acc, loss, finite = self._score(model) if self.score_fn is None else self._user_score(model)
        except TrainingDiverged as e:  # a result, never a crash
            acc, loss, finite, reason = float("nan"), float("nan"), False, str(e)
        t_score = time.perf_counter()
        costs = self.measure(model)  # masked: kept channels read from the zero pattern; physical: from the shapes
        costs["loss"] = loss  # held-out mean cross-entropy, for rewards that use it
        latency = self.strategy.latency(policy)  # predicted from the lookup table (channel pruning)
        if latency is not None:
            costs["latency"] = latency
        if not finite:
            acc, reason = float("nan"), reason or "non-finite outputs (NaN/Inf)"
        value = costs[self.budget.kind] if self.budget.kind in costs else float("nan")
        feasible = finite and value <= self.budget.fraction * (1 + FEASIBLE_TOL)
        if finite and not feasible:
            reason = f"measured {self.budget.kind} {value:.4f} > budget {self.budget.fraction:.4f}"
        reward = REWARDS[self.config.reward](acc, costs, self.budget) if finite else float("nan")
        if not math.isfinite(reward):
            feasible, reason = False, reason or "non-finite reward"
        t1 = time.perf_counter()
        if self.config.profile:
            self.timing = {"apply": t_apply - t0, "recover": t_recover - t_apply, "score": t_score - t_recover,
                           "measure": t1 - t_score, "total": t1 - t0}
            self.timings.append(self.timing)
        return Result(dict(policy), acc, costs["size"], costs["macs"], costs["params"], latency, reward,
                      feasible, reason, t1 - t0)

    def _recover(self, model: nn.Module, masks: Masks | None) -> None:
        """The "finetune" recovery: ``recovery_steps`` SGD steps, every policy on the same batches (train
        images for classification, the task's loss on its calibration batches otherwise)."""
        cfg = self.config
        if isinstance(self.task, ClassificationTask):
            loader = self.task.source.loader("train", batch_size=min(cfg.batch_size, 128), seed=cfg.recovery_seed)
            finetune(model, loader, FinetuneConfig(epochs=1.0, lr=cfg.recovery_lr, schedule="constant",
                                                   max_steps=cfg.recovery_steps), masks=masks)
        else:
            self.task.recover(model, self._calib, cfg.recovery_steps, cfg.recovery_lr, masks, seed=cfg.recovery_seed)

    def _reconstruct(self, model: nn.Module, policy: Policy) -> None:
        """AMC's recovery: refit, in place, the physically pruned ``model``'s layers that lost input channels
        to the dense model's kept outputs, on the calibration images (no training, no labels)."""
        from amc.pruners.reconstruct import reconstruct

        calib: Any = self._calib if self.task.classification else [(x, None) for x in self._calib]
        reconstruct(self.dense, model, self.plan(policy), calib, images=self.config.reconstruct_images,
                    positions=self.config.reconstruct_positions, table=self._ctable, dense_outputs=self._dense_out)

    def _tick(self) -> float:
        """Wall clock; with ``profile`` the device is synchronised first so phases time correctly."""
        if self.config.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- policies for the kept candidates and the baselines ---------------------------------------
    def build(self, policy: Mapping[str, float]) -> tuple[nn.Module, Masks | None]:
        """A fresh copy of the dense model with ``policy`` applied: the physically smaller model for
        channel pruning (masks None), the masked model and its masks for fine-grained pruning."""
        return self.strategy.build(self.dense, self.check(policy))

    def architecture_key(self, policy: Mapping[str, float]) -> tuple:
        """What ``policy`` builds, hashable (``Strategy.architecture``): the kept channels per group for channel
        pruning (ratios that round to the same channel counts build the same model), the ratios otherwise."""
        return self.strategy.architecture(self.check(policy))

    def uniform_policy(self) -> Policy:
        return self.projector.uniform()

    def sensitivity(self, ratios: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
                    on_point: Callable[[str, float, float], None] | None = None) -> pd.DataFrame:
        """Accuracy with one layer at a time pruned to each ratio (others dense), scored the
        evaluator's way; columns layer, ratio, accuracy (a ratio-0 row per layer)."""
        from amc.sensitivity import scan_each

        def at(name: str, r: float) -> dict[str, float]:
            lo, hi = self.bounds[name]
            r = min(max(r, lo), hi)
            return {"ratio": r, "accuracy": self.evaluate({name: r}).accuracy}

        return scan_each(self.names, ratios, at, {"accuracy": self.evaluate({}).accuracy}, on_point)

    def sensitivity_policy(self, curves: pd.DataFrame | None = None) -> Policy:
        """The sensitivity-picked policy: for fine-grained pruning under a size budget the lab's
        picker (``amc.sensitivity.pick_policy``: least summed accuracy drop on the curves' convex
        hulls); otherwise, or when that picker cannot reach the budget from the scanned ratios,
        one accuracy-drop threshold for all layers (``Projector.from_sensitivity``). Projected."""
        curves = curves if curves is not None else self.sensitivity()
        return self.strategy.sensitivity_policy(curves, self.projector, self.bounds, self.budget)


def _check_task(task: Task, config: EvalConfig) -> None:
    """One clear error for what a user task cannot do under ``config``."""
    from amc.importance import CHANNEL_CRITERIA

    if config.granularity == "channel" and getattr(CHANNEL_CRITERIA.get(config.criterion), "needs_data", False):
        raise PolicyError(f"criterion {config.criterion!r} scores channels on labelled image batches; with a task "
                          f"use a data-free criterion (l1, l2...)")
    if config.granularity == "fine" and task.shape is None:
        raise PolicyError("fine-grained pruning needs one input tensor; this task's example inputs are several")
    if config.recovery == "finetune" and config.recovery_steps > 0 and (task.loss is None or task.calibration is None):
        raise PolicyError("recovery 'finetune' with a task needs the task's loss(model, batch) and calibration")
    if config.recovery == "reconstruct" and (task.calibration is None or task.shape is None):
        raise PolicyError("recovery 'reconstruct' with a task needs calibration batches of one input tensor")
