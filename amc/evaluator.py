"""The one evaluator both searchers call: policy -> ``Result`` (held-out accuracy, costs, reward).

Lifecycle: ``Evaluator(dense_model, splits, budget, EvalConfig(...))`` once (copies the model once,
caches its state dict, the weight-magnitude orders or channel importances, and the calibration and
held-out batches on the model's device, and checks the budget can be met) -> ``evaluate(policy)``
per episode -> ``build(policy)`` for the few policies that are kept.

Per episode nothing is rebuilt: the dense weights are copied back into ONE working copy
(``Tensor.copy_`` from the cached state dict), the policy is emulated by masks on it (zeroed
weights for fine-grained pruning; zeroed coupled channels for channel pruning, whose outputs equal
the physically pruned model's), BatchNorm statistics are re-estimated on ``calib_images`` train
images (or the model is first finetuned ``recovery_steps`` steps, every policy on the same
batches, so that rewards differ by the policy alone), and accuracy is measured on the
held-out split. The costs are re-measured on the masked model (non-zero weights, or kept channels
read from the zero pattern), so ``feasible`` is checked, not assumed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from amc.budget import Bounds, Budget, ChannelCost, CostModel, FineCost, Policy, Projector, make_bounds
from amc.cpuconv import training_layout
from amc.data import DataSource
from amc.errors import BudgetError, PolicyError, TrainingDiverged
from amc.importance.weights import fine_criterion, weight_scores
from amc.layers import count_macs, count_params, layer_table, layer_weight
from amc.sensitivity import LOSS_TIE_WEIGHT
from amc.train import FinetuneConfig, Masks, apply_masks, finetune, model_device, recalibrate_bn

GRANULARITIES = ("fine", "channel")
RECOVERIES = ("bn", "finetune")
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
    recovery: str = "bn"  # "bn" (BatchNorm recalibration) or "finetune" (then recalibration)
    recovery_steps: int = 20  # SGD steps when recovery == "finetune"
    recovery_lr: float = 0.01  # the finetune learning rate of FinetuneConfig
    recovery_seed: int = 0  # every policy recovers on the same batches (common random numbers)
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

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise PolicyError(f"unknown granularity {self.granularity!r}; known: {', '.join(GRANULARITIES)}")
        if self.reward not in REWARDS:
            raise PolicyError(f"unknown reward {self.reward!r}; known: {', '.join(REWARDS)}")
        if self.recovery not in RECOVERIES:
            raise PolicyError(f"unknown recovery {self.recovery!r}; known: {', '.join(RECOVERIES)}")
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


def _channel():
    """``amc.pruners.channel``, imported only when channel pruning is asked for (and kept off instance
    attributes: environments get deep-copied by the env checkers, modules cannot be)."""
    from amc.pruners import channel

    return channel


def _batches(splits: DataSource, split: str, limit: int | None,
             batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = splits.loader(split, batch_size=batch_size, limit=limit, shuffle=False, augment=False)
    return [(x, y) for x, y in loader]


class Evaluator:
    """Scores pruning policies on one persistent working copy of ``dense_model`` (see module doc)."""

    def __init__(self, dense_model: nn.Module, splits: DataSource, budget: Budget,
                 config: EvalConfig = EvalConfig(), input_shape: tuple[int, ...] = (1, 3, 32, 32),
                 latency_table: object | None = None, score_fn: Callable[[nn.Module], float] | None = None) -> None:
        self.config, self.budget, self.splits = config, budget, splits
        self.score_fn = score_fn  # the user's evaluate(model) -> float replaces held-out accuracy when given
        self.input_shape = input_shape
        self.device = model_device(dense_model)
        self.latency_table = latency_table  # amc.latency.LatencyTable: predicted latency (channel pruning)
        self.dense = dense_model.eval()
        self.work = copy.deepcopy(dense_model).eval()  # the one working copy (made once)
        # the training layout before ``_live`` is taken: finetune recovery converts its model to it, which
        # would otherwise give the working copy new tensors that ``_live`` no longer shares
        training_layout(self.work)
        self._state = {k: v.detach().clone() for k, v in self.work.state_dict().items()}
        self._live = self.work.state_dict()  # tensors sharing storage with the working copy
        self.table = layer_table(self.dense, input_shape)
        self.total_params = count_params(self.dense)
        self.total_macs = count_macs(self.dense, input_shape)[0]
        self._calib = _batches(splits, "train", config.calib_images, config.batch_size)
        self._eval = _batches(splits, "heldout", config.eval_images, config.batch_size)
        if not self._eval:
            raise BudgetError("the held-out split is empty: the evaluator needs images to score policies")
        self._n_eval = sum(len(y) for _, y in self._eval)
        if config.granularity == "fine":
            self._setup_fine()
        else:
            self._setup_channel()
        self.bounds: Bounds = make_bounds(self.names, config.lower, config.upper, config.bounds)
        self.projector = Projector(self.cost_model, budget, self.bounds)  # BudgetError when impossible
        self.calls = 0
        self.timing: dict[str, float] = {}  # phases of the last evaluation (profile only)
        self.timings: list[dict[str, float]] = []  # of every evaluation (profile only)

    # -- setup per granularity -------------------------------------------------------------------
    def _setup_fine(self) -> None:
        table = [t for t in self.table if t.name not in self.config.skip]
        self.names = [t.name for t in table]
        # layer -> rank of each weight in increasing score (|w| for magnitude; stable sort: ties by index),
        # cached; a ratio r keeps the weights whose rank >= round(r * numel): magnitude_mask's exact count.
        # obd scores on the first 4 calibration batches of the dense weights, synflow data-free (one round)
        crit = fine_criterion(self.config.criterion)
        scores = weight_scores(self.dense, crit, self.names, self._calib[:4] if crit == "obd" else None, batches=4)
        self._rank: dict[str, torch.Tensor] = {}
        for t in table:
            w = scores[t.name]
            order = torch.argsort(w.flatten().float(), stable=True)
            rank = torch.empty(order.numel(), dtype=torch.int32, device=order.device)
            rank[order] = torch.arange(order.numel(), dtype=torch.int32, device=order.device)
            self._rank[t.name] = rank.view_as(w)
        if self.budget.kind == "latency":
            raise BudgetError("a latency budget needs channel pruning (sparse weights run at dense speed)")
        kind = self.budget.kind
        self.cost_model: CostModel = FineCost.from_table(self.dense, table, kind, self.input_shape)
        self._fine_cost = {k: FineCost.from_table(self.dense, table, k, self.input_shape) for k in ("size", "macs")}

    def _setup_channel(self) -> None:
        from amc.pruners import channel  # the channel-pruning core (coupled groups, criteria, masks)

        self._example = torch.zeros(self.input_shape, device=self.device)
        # coupled groups traced ONCE; one searched ratio per group, keyed by its root layer
        self._ctable = channel.channel_table(self.dense, self._example)
        self.names = [r for r in self._ctable.roots if r not in self.config.skip]
        if not self.names:
            raise PolicyError("the model has no layer whose output channels can be pruned")
        calib = self._calib[:4] if channel.needs_data(self.config.criterion) else None  # 4 batches
        self._scores = channel.channel_scores(self.dense, self.config.criterion, self._ctable, calib)  # cached
        table, round_to = self._ctable, self.config.round_to
        if self.budget.kind == "latency":
            if self.latency_table is None:
                raise BudgetError("a latency budget needs a latency lookup table (amc.latency.LatencyTable)")
            ms = self.latency_table.counts_cost(table)  # type: ignore[attr-defined]
            self._latency_ms = ms
            totals = {"latency": float(ms({}))}
            self.cost_model = ChannelCost("latency", self.names, lambda p: {
                "latency": ms(channel.policy_counts(table, p, round_to))}, totals)
            return
        totals = {"macs": float(self._ctable.dense_macs), "params": float(self._ctable.dense_params)}
        self.cost_model = ChannelCost(self.budget.kind, self.names,
                                      lambda p: channel.policy_cost(table, p, round_to), totals)

    def plan(self, policy: Mapping[str, float]):
        """The ``amc.pruners.channel.ChannelPlan`` (kept channels per group) that ``policy`` gives, with the
        evaluator's cached importance scores: what a recipe records for a kept channel policy."""
        ch = _channel()
        counts = ch.policy_counts(self._ctable, policy, self.config.round_to)
        return ch.plan_from_counts(self.dense, counts, self.config.criterion, scores=self._scores,
                                   table=self._ctable, round_to=self.config.round_to)

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

    @torch.no_grad()
    def fine_masks(self, policy: Mapping[str, float]) -> Masks:
        masks = {}
        for n in self.names:
            rank = self._rank[n]
            masks[n] = rank >= round(policy.get(n, 0.0) * rank.numel())  # magnitude_mask's count
        return masks

    @torch.no_grad()
    def _apply(self, model: nn.Module, policy: Mapping[str, float]) -> Masks | None:
        if self.config.granularity == "fine":
            masks = self.fine_masks(policy)
            apply_masks(model, masks)
            return masks
        plan = self.plan(policy)
        _channel().apply_channel_masks(model, plan, self._ctable)
        if self.config.recovery == "finetune":  # weight masks only matter while training
            return _channel().channel_masks(model, plan, self._ctable)
        return None

    @torch.no_grad()
    def _score(self, model: nn.Module) -> tuple[float, float, bool]:
        """Held-out accuracy, mean cross-entropy and whether every logit was finite (one host sync)."""
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        loss = torch.zeros((), dtype=torch.float32, device=self.device)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else \
            torch.autocast("cpu", enabled=False)
        with ctx:
            for x, y in self._eval:
                out = model(x)
                correct += (out.argmax(1) == y).sum()
                loss += F.cross_entropy(out.float(), y, reduction="sum")
                finite &= torch.isfinite(out).all()
        c, lsum, ok = torch.stack([correct.float(), loss, finite.float()]).tolist()
        return c / self._n_eval, lsum / self._n_eval, bool(ok)

    def _user_score(self, model: nn.Module) -> tuple[float, float, bool]:
        """The user's score (loss 0: the tie-breaking rewards see the score alone)."""
        model.eval()
        value = float(self.score_fn(model))  # type: ignore[misc]
        return value, 0.0, math.isfinite(value)

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, float]:
        """Costs of the (masked) model as fractions of dense: non-zero params, and MACs from the
        non-zero weights (fine) or from the kept input/output channels (channel). One host sync."""
        counts = [torch.stack([p.count_nonzero() for p in model.parameters()]).sum()]
        for t in self.table if self.config.granularity == "channel" else []:
            nz = layer_weight(model, t.name).detach().ne(0)
            counts.append(nz.flatten(1).any(1).sum())  # output channels with a non-zero weight
            counts.append(nz.any(0).reshape(nz.shape[1], -1).any(1).sum())  # input channels (per group)
        if self.config.granularity == "fine":
            counts += [layer_weight(model, n).count_nonzero() for n in self.names]
        vals = torch.stack(counts).tolist()
        nnz = vals[0]
        out = {"size": nnz / self.total_params, "params": nnz / self.total_params}
        if self.config.granularity == "fine":
            fc = self._fine_cost["macs"]
            macs = fc.fixed + sum(v * w for v, w in zip(vals[1:], fc.per_weight, strict=True))
            out["macs"] = macs / fc.total
        else:
            macs = float(self.total_macs - sum(t.macs for t in self.table))
            for i, t in enumerate(self.table):
                keep_out, keep_in = vals[1 + 2 * i], vals[2 + 2 * i]
                if t.groups == 1:
                    macs += t.macs * keep_out / t.out_channels * keep_in / t.in_channels
                else:  # depthwise: MACs follow the channels alone
                    macs += t.macs * keep_out / t.out_channels
            out["macs"] = macs / self.total_macs
        out["macs_abs"] = out["macs"] * self.total_macs
        return out

    def evaluate(self, policy: Mapping[str, float]) -> Result:
        """Score ``policy`` (ratios per searched layer; missing layers stay dense). Never raises on a
        diverged model: returns ``feasible=False`` with a reason."""
        t0 = time.perf_counter()
        policy = self.check(policy)
        self.calls += 1
        self._restore()
        masks = self._apply(self.work, policy)
        t_apply = self._tick()
        reason = ""
        try:
            if self.config.recovery == "finetune" and self.config.recovery_steps > 0:
                loader = self.splits.loader("train", batch_size=min(self.config.batch_size, 128),
                                            seed=self.config.recovery_seed)
                cfg = FinetuneConfig(epochs=1.0, lr=self.config.recovery_lr, schedule="constant",
                                     max_steps=self.config.recovery_steps)
                finetune(self.work, loader, cfg, masks=masks)
                if self.config.granularity == "channel":
                    self._apply(self.work, policy)  # zero removed channels' BN shifts again
            recalibrate_bn(self.work, self._calib)
            t_recover = self._tick()
            acc, loss, finite = self._score(self.work) if self.score_fn is None else self._user_score(self.work)
        except TrainingDiverged as e:  # a result, never a crash
            acc, loss, finite, reason = float("nan"), float("nan"), False, str(e)
        t_score = time.perf_counter()
        costs = self.measure(self.work)
        costs["loss"] = loss  # held-out mean cross-entropy, for rewards that use it
        latency = None
        if self.latency_table is not None and self.config.granularity == "channel":
            ms = self.latency_table.counts_cost(self._ctable)  # type: ignore[attr-defined]
            counts = _channel().policy_counts(self._ctable, policy, self.config.round_to)
            latency = costs["latency"] = ms(counts) / ms({})  # predicted from the lookup table
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

    def _tick(self) -> float:
        """Wall clock; with ``profile`` the device is synchronised first so phases time correctly."""
        if self.config.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- policies for the kept candidates and the baselines ---------------------------------------
    def build(self, policy: Mapping[str, float]) -> tuple[nn.Module, Masks | None]:
        """A fresh copy of the dense model with ``policy`` applied: the physically smaller model for
        channel pruning (masks None), the masked model and its masks for fine-grained pruning."""
        policy = self.check(policy)
        model = copy.deepcopy(self.dense)
        if self.config.granularity == "fine":
            masks = self.fine_masks(policy)
            apply_masks(model, masks)
            return model, masks
        plan = self.plan(policy)
        return _channel().prune_channels(model, plan, self._example), None

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
        if self.config.granularity == "fine" and self.budget.kind == "size":
            from amc.sensitivity import pick_policy

            params = {n: layer_weight(self.work, n).numel() for n in self.names}
            try:
                pol = pick_policy(curves, params, self.total_params, self.budget.fraction)
            except BudgetError:
                pol = None
            if pol is not None:
                clipped = {n: min(max(pol.get(n, 0.0), self.bounds[n][0]), self.bounds[n][1]) for n in self.names}
                return self.projector.project(clipped)
        return self.projector.from_sensitivity(curves)
