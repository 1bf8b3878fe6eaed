"""The lottery ticket procedure (Frankle & Carbin, 2019; rewinding: Frankle et al., 2020).

Round r of ``rounds``: train the (masked) network, remove by one global magnitude threshold the
smallest weights so that ``1 - (1 - s) ** (r / rounds)`` of the pruned layers' weights are gone
(``s``: the final sparsity that brings the model to ``size``), then rewind the surviving weights
to their values at ``rewind_steps`` steps into the FIRST round's training (all other parameters
and buffers too). The result is the ticket: the rewound weights under the final mask, untrained
after the rewind. The control (:func:`random_reinit`) keeps the mask but draws fresh weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from amc.errors import PolicyError
from amc.layers import layer_weight, prunable_names
from amc.pruners.finegrained import global_sparsity_for_size, magnitude_mask
from amc.train import FinetuneConfig, Masks, apply_masks, finetune

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LotteryResult:
    ticket: nn.Module  # rewound weights under the final mask
    masks: Masks
    rewind_state: dict[str, torch.Tensor]  # the full state at the rewind point
    rewind_step: int
    sparsities: list[float] = field(default_factory=list)  # of the pruned layers after each round
    losses: list[float] = field(default_factory=list)  # the last training loss of each round


def _global_masks(model: nn.Module, names: list[str], sparsity: float) -> Masks:
    weights = [layer_weight(model, n).detach() for n in names]
    keep = magnitude_mask(torch.cat([w.abs().flatten().float().cpu() for w in weights]), sparsity)
    out, off = {}, 0
    for n, w in zip(names, weights, strict=True):
        out[n] = keep[off:off + w.numel()].view_as(w).to(w.device)
        off += w.numel()
    return out


def lottery(model: nn.Module, loader: Batches, size: float, rounds: int = 3, rewind_steps: int = 10,
            cfg: FinetuneConfig | None = None, names: list[str] | None = None,
            on_round: Callable[[int, float, float], None] | None = None) -> LotteryResult:
    """Iterative magnitude pruning to ``size`` of the dense size over ``rounds`` rounds of ``cfg``
    training each (default: one epoch), rewinding to the state after ``rewind_steps`` steps (0 = the initial weights;
    otherwise the first 10-step progress point at or after it). ``model`` is not changed."""
    if rounds < 1:
        raise PolicyError(f"rounds must be >= 1, got {rounds}")
    if rewind_steps < 0:
        raise PolicyError(f"rewind_steps must be >= 0, got {rewind_steps}")
    cfg = cfg if cfg is not None else FinetuneConfig(epochs=1.0)
    names = names if names is not None else prunable_names(model)
    final = global_sparsity_for_size(model, size, names)
    if not 0.0 <= final < 1.0:
        raise PolicyError(f"size {size} cannot be reached by pruning these layers (sparsity {final:.4f})")
    work = copy.deepcopy(model)
    rewind: dict[str, torch.Tensor] | None = None
    rewind_at = 0
    if rewind_steps == 0:
        rewind = {k: v.detach().clone() for k, v in work.state_dict().items()}

    def capture(step: int, _total: int, _loss: float) -> None:
        nonlocal rewind, rewind_at
        if rewind is None and step >= rewind_steps:
            rewind = {k: v.detach().clone() for k, v in work.state_dict().items()}
            rewind_at = step

    masks: Masks | None = None
    result = LotteryResult(work, {}, {}, 0)
    for r in range(1, rounds + 1):
        stats = finetune(work, loader, cfg, masks=masks, on_step=capture if rewind is None else None)
        if rewind is None:  # training shorter than the rewind point: rewind to its end
            capture(rewind_steps, 0, 0.0)
            rewind_at = int(stats["steps"])
        s = 1.0 - (1.0 - final) ** (r / rounds)
        masks = _global_masks(work, names, s)
        assert rewind is not None
        work.load_state_dict(rewind)
        apply_masks(work, masks)
        result.sparsities.append(s)
        result.losses.append(float(stats["last_loss"]))
        if on_round is not None:
            on_round(r, s, float(stats["last_loss"]))
    assert masks is not None and rewind is not None
    result.ticket, result.masks, result.rewind_state, result.rewind_step = work.eval(), masks, rewind, rewind_at
    return result


@torch.no_grad()
def reinitialise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh weights in place: every module's own ``reset_parameters`` (PyTorch's default
    initialisation for its shapes), BatchNorm statistics reset, drawn from ``seed``."""
    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return model


def random_reinit(ticket: nn.Module, masks: Masks, seed: int = 0) -> nn.Module:
    """The lottery control: the ticket's mask on freshly initialised weights (a copy)."""
    out = reinitialise(copy.deepcopy(ticket), seed)
    apply_masks(out, masks)
    return out
