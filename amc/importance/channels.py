"""Channel criteria that need data: Optimal Brain Damage and APoZ, in the form of
:data:`amc.pruners.channel.CRITERIA` (``fn(model, group) -> per-channel scores``, higher = keep).

Each carries a ``prepare(model, loader, batches)`` that :func:`amc.pruners.channel.channel_scores`
runs on a deep copy of the model before scoring (so the caller's model is untouched):

* ``obd`` — ``1/2 * F_ii * w_i^2`` summed over each channel's slice of every coupled parameter
  (filters, the next layers' input slices, BN scale and shift), mean over the group's items, with
  ``F`` the diagonal empirical Fisher (mean squared per-image gradients, :func:`fisher_all`).
* ``apoz`` — Average Percentage of Zeros (Hu et al., 2016): the share of a channel's activations
  that a ReLU would zero (output <= 0) at the group's BatchNorms (or its producing layers where
  there is none) over a few batches; importance = 1 - APoZ, so a channel that is always zero
  scores 0, the lowest possible.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from amc.errors import PolicyError
from amc.importance.slices import group_score
from amc.importance.weights import fisher_all
from amc.train import model_device

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
_BN = nn.modules.batchnorm._BatchNorm


def prepare_obd(model: nn.Module, loader: Batches, batches: int = 4) -> None:
    """Store ``1/2 * F * w`` in every parameter's ``.grad``: the channel scorer's ``|w * grad|``
    then sums ``1/2 * F * w^2`` over each slice (the same code path as the Taylor criterion)."""
    fisher = fisher_all(model, loader, batches)
    for k, p in model.named_parameters():
        p.grad = (0.5 * fisher[k].to(p.dtype) * p.detach()).to(p.device)


def score_obd(model: nn.Module, group) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Optimal Brain Damage over every coupled slice (run :func:`prepare_obd` first)."""
    s = group_score(model, group, ("out", "dw", "in", "bn", "other"), 1.0, use_grad=True)
    if s is None:
        raise PolicyError("the obd criterion needs data: pass a loader")
    return s


def prepare_apoz(model: nn.Module, loader: Batches, batches: int = 4) -> None:
    """Record, on each BatchNorm and conv/linear module, the share of its output activations per
    channel that are <= 0 (what a following ReLU zeroes), over ``batches`` batches, BN in eval mode."""
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (_BN, nn.Conv2d, nn.Linear))]
    zeros: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def f(_m: nn.Module, _a: tuple, out: torch.Tensor) -> None:
            if not isinstance(out, torch.Tensor) or out.ndim < 2:
                return
            o = out.detach()
            z = (o <= 0).float()
            dims = [d for d in range(o.ndim) if d != 1]
            zeros[name] = zeros.get(name, 0) + z.sum(dims).double().cpu()  # type: ignore[assignment]
            counts[name] = counts.get(name, 0) + o.numel() // o.shape[1]
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in mods]
    was = model.training
    model.eval()
    dev = model_device(model)
    try:
        with torch.no_grad():
            for i, (x, _y) in enumerate(loader):
                if i >= batches:
                    break
                model(x.to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if not counts:
        raise PolicyError("the apoz criterion needs at least one batch of images")
    for n, m in mods:
        if n in counts:
            m._amc_apoz = zeros[n] / counts[n]  # type: ignore[assignment]


def score_apoz(model: nn.Module, group) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """1 - APoZ per root channel, mean over the group's BatchNorms (its producing layers where
    it has none); run :func:`prepare_apoz` first."""
    for roles in (("bn",), ("out", "dw")):
        total = torch.zeros(group.channels, dtype=torch.float64)
        count = torch.zeros(group.channels, dtype=torch.float64)
        for item in group.items:
            if item.role not in roles:
                continue
            a = getattr(model.get_submodule(item.module), "_amc_apoz", None)
            if a is None:
                continue
            r = torch.tensor(item.root_idxs, dtype=torch.long)
            total.index_add_(0, r, a[torch.tensor(item.idxs, dtype=torch.long)])
            count.index_add_(0, r, torch.ones(len(item.idxs), dtype=torch.float64))
        if bool((count > 0).any()):
            return 1.0 - total / count.clamp(min=1)
    raise PolicyError("the apoz criterion needs data: pass a loader")


score_obd.prepare = prepare_obd  # type: ignore[attr-defined]
score_apoz.prepare = prepare_apoz  # type: ignore[attr-defined]

CHANNEL_CRITERIA = {"obd": score_obd, "apoz": score_apoz}
