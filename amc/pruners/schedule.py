"""Iterative fine-grained pruning: raise sparsity over several steps with finetuning in between.

Lifecycle: ``IterativeSchedule(kind, steps, initial, epochs_per_step)`` -> ``sparsity_at(t, ...)`` gives
each step's target -> ``iterative_prune(model, final_policy, schedule, loader, finetune_cfg)`` prunes
to step 1's targets, finetunes with the masks held, prunes further, ... and ends exactly at
``final_policy`` after ``steps`` steps.

Schedules (``t`` = 1 .. ``n`` steps, ``s_i`` initial and ``s_f`` final sparsity of one layer):
- ``"agp"``: polynomial decay of Zhu & Gupta 2017, ``s_t = s_f + (s_i - s_f) * (1 - t/n)**3``:
  large steps while many redundant weights remain, small ones near the end.
- ``"linear"``: the same with exponent 1 (equal increments).
- ``"constant"``: ``s_t = s_f`` at every step: one-shot pruning, then ``n`` finetune rounds with
  the masks re-estimated (never reviving a pruned weight) after each.

A pruned weight never comes back: each step's mask is a subset of the previous one's, because
already-pruned weights are scored below every surviving one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from amc.errors import PolicyError
from amc.layers import layer_weight
from amc.pruners.finegrained import validate_policy
from amc.train import FinetuneConfig, Masks, apply_masks, evaluate, finetune

SCHEDULES = ("constant", "linear", "agp")
_EXPONENT = {"linear": 1, "agp": 3}  # AGP's cubic decay (Zhu & Gupta 2017, eq. 1)


@dataclass(frozen=True)
class IterativeSchedule:
    """How to reach the final policy: ``steps`` prune+finetune rounds of ``epochs_per_step`` epochs."""

    kind: str = "agp"
    steps: int = 5  # prune/finetune rounds (5: the AGP paper's ~5-10 pruning steps at CIFAR scale)
    initial: float = 0.0  # sparsity the schedule starts from (capped at each layer's final sparsity)
    epochs_per_step: float = 1.0  # finetune epochs after each pruning step

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise PolicyError(f"unknown iterative schedule {self.kind!r}; known: {', '.join(SCHEDULES)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PolicyError(f"iterative schedule needs steps >= 1, got {self.steps!r}")
        if not 0.0 <= self.initial < 1.0:
            raise PolicyError(f"iterative schedule initial sparsity {self.initial} is outside [0, 1)")
        if not self.epochs_per_step >= 0:
            raise PolicyError(f"epochs_per_step must be >= 0, got {self.epochs_per_step}")


def sparsity_at(t: int, steps: int, initial: float, final: float, kind: str = "agp") -> float:
    """Target sparsity after pruning step ``t`` (1 .. ``steps``); ``t == steps`` gives ``final``."""
    if kind not in SCHEDULES:
        raise PolicyError(f"unknown iterative schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    if not 0 <= t <= steps:
        raise PolicyError(f"step {t} outside 0 .. {steps}")
    initial = min(initial, final)
    if t == 0:
        return initial
    if kind == "constant":
        return final
    return final + (initial - final) * (1.0 - t / steps) ** _EXPONENT[kind]


def schedule_policies(final_policy: Mapping[str, float], schedule: IterativeSchedule) -> list[dict[str, float]]:
    """The per-layer targets of every step, ``[step 1, ..., step n]``; the last equals ``final_policy``."""
    return [{name: sparsity_at(t, schedule.steps, schedule.initial, float(s), schedule.kind)
             for name, s in final_policy.items()} for t in range(1, schedule.steps + 1)]


@torch.no_grad()
def monotone_mask(weight: torch.Tensor, sparsity: float, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Prune the ``round(sparsity * numel)`` smallest |w| (ties by lower index), never reviving an entry
    that ``previous`` (True = kept) already pruned."""
    n = weight.numel()
    k = round(sparsity * n)
    score = weight.detach().abs().flatten().float()
    if previous is not None:
        prev = previous.flatten().to(score.device, torch.bool)
        k = max(k, int((~prev).sum()))
        score = torch.where(prev, score, torch.full_like(score, -1.0))  # |w| >= 0, so pruned sort first
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        order = torch.sort(score, stable=True).indices  # stable: equal scores keep index order
        mask[order[:k].to(weight.device)] = False
    return mask.view_as(weight)


@dataclass
class IterativeResult:
    masks: Masks
    history: list[dict] = field(default_factory=list)  # per step: step, sparsity (global), accuracy, seconds


def iterative_prune(
    model: nn.Module,
    final_policy: Mapping[str, float],
    schedule: IterativeSchedule | str = "agp",
    steps: int | None = None,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    finetune_cfg: FinetuneConfig | None = None,
    eval_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    on_step: Callable[[dict], None] | None = None,
    teacher: nn.Module | None = None,
) -> IterativeResult:
    """Prune ``model`` in place to ``final_policy`` over the schedule's steps, finetuning between them.

    ``schedule`` is an ``IterativeSchedule`` or a kind name (``steps`` then sets its step count).
    ``finetune_cfg`` is used for every step, its ``epochs`` replaced by ``schedule.epochs_per_step``
    (no finetuning when ``loader`` is None or that is 0). ``eval_loader`` adds an accuracy to each
    step's history row; ``on_step(row)`` reports each row as it is made. ``teacher`` distils into
    every step's finetune when ``finetune_cfg.distill_weight > 0`` (see ``amc.train.finetune``).
    """
    if isinstance(schedule, str):
        schedule = IterativeSchedule(kind=schedule, steps=steps if steps is not None else 5)
    elif steps is not None and steps != schedule.steps:
        raise PolicyError(f"steps={steps} disagrees with the schedule's {schedule.steps}")
    policy = validate_policy(model, final_policy)
    cfg = finetune_cfg if finetune_cfg is not None else FinetuneConfig()
    step_cfg = replace(cfg, epochs=schedule.epochs_per_step)
    masks: Masks = {}
    result = IterativeResult(masks)
    for t, targets in enumerate(schedule_policies(policy, schedule), start=1):
        t0 = time.perf_counter()
        for name, s in targets.items():
            w = layer_weight(model, name)
            assert isinstance(w, torch.Tensor)
            masks[name] = monotone_mask(w, s, masks.get(name))
        apply_masks(model, masks)
        trained = loader is not None and schedule.epochs_per_step > 0
        if trained:
            finetune(model, loader, step_cfg, masks=masks, teacher=teacher)  # type: ignore[arg-type]
        zeros = sum(int((~m).sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        row = {"step": t, "target": dict(targets), "sparsity": zeros / max(total, 1),
               "finetuned": trained, "seconds": time.perf_counter() - t0}
        if eval_loader is not None:
            row["accuracy"] = evaluate(model, eval_loader)
        result.history.append(row)
        if on_step is not None:
            on_step(row)
    return result


def recover_pruned(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    cfg: FinetuneConfig,
    masks: Masks | None = None,
    *,
    seed: int = 0,
    teacher: nn.Module | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    iterative: IterativeSchedule | None = None,
    policy: Mapping[str, float] | None = None,
    dense_state: Mapping[str, torch.Tensor] | None = None,
) -> Masks:
    """A recipe's recovery of a pruned ``model``, seeded with ``seed``: ``cfg.epochs`` of finetuning
    with ``masks`` held; or, with ``iterative`` (an ``IterativeSchedule``), the
    dense weights ``dense_state`` pruned again step by step to ``policy`` (finetuning between steps),
    then ``cfg.epochs`` more. ``teacher``: the dense model, distilled when ``cfg.distill_weight > 0``.
    Returns the masks the model now holds."""
    torch.manual_seed(seed)
    masks = dict(masks or {})
    if iterative is not None:
        if dense_state is None or policy is None:
            raise ValueError("an iterative recovery starts from the dense weights towards a policy: "
                             "give dense_state and policy")
        model.load_state_dict(dense_state)
        masks = iterative_prune(model, policy, iterative, loader=loader, finetune_cfg=cfg, teacher=teacher).masks
    if cfg.epochs > 0:
        finetune(model, loader, cfg, masks=masks or None, on_step=on_step, teacher=teacher)
    return masks
