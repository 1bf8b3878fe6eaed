"""The channel criteria: every ``--criterion`` of channel pruning, registered in :data:`CHANNEL_CRITERIA`.

Each is a :class:`amc.importance.registry.ChannelCriterion`: called on ``(model, group)``, it returns
one score per root channel of the coupled group (higher = keep), built from each coupled slice with
:func:`amc.importance.slices.group_score` (a mean over the group's items of the chosen roles):

* ``l1``, ``l2`` — the L1 / L2 norm of each channel's own filters (the producing layers).
* ``l2_next`` — the seed lab's variant: L2 of each channel's slice in the next layers' inputs.
* ``bn`` — network slimming: ``|gamma|`` of the group's BatchNorms.
* ``group_l2`` — every coupled weight slice (Torch-Pruning's ``GroupMagnitudeImportance(p=2)``).
* ``taylor`` — first-order Taylor, ``sum |w * dL/dw|`` over every coupled slice (``needs_grad``:
  the pruner sums cross-entropy gradients into ``.grad`` first).
* ``obd`` — Optimal Brain Damage, ``1/2 * F_ii * w_i^2`` summed over each channel's slice of every
  coupled parameter, with ``F`` the diagonal empirical Fisher (mean squared per-image gradients,
  :func:`amc.importance.weights.fisher_all`); ``prepare`` stores ``1/2 * F * w`` in ``.grad`` so
  the Taylor code path sums it.
* ``apoz`` — Average Percentage of Zeros (Hu et al., 2016): the share of a channel's activations
  that a ReLU would zero (output <= 0) at the group's BatchNorms (or its producing layers where
  there is none) over a few batches; importance = 1 - APoZ, so a channel that is always zero
  scores 0, the lowest possible.

The data criteria (``taylor``, ``obd``, ``apoz``) are prepared and scored on the pruner's deep copy
of the model (see the lifecycle in :mod:`amc.importance.registry`), so the caller's model is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from amc.errors import PolicyError
from amc.importance.registry import CHANNEL_CRITERIA, Batch, ChannelCriterion
from amc.importance.slices import ChannelGroup, group_score
from amc.importance.weights import fisher_all
from amc.train import model_device

_BN = nn.modules.batchnorm._BatchNorm
_ALL_ROLES = ("out", "dw", "in", "bn", "other")


class FilterNorm(ChannelCriterion):
    """Lp norm of each channel's own filters, mean over the group's producing layers."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        s = group_score(model, group, ("out", "dw"), self.p)
        assert s is not None  # every group has a producing layer
        return s


class NextInputNorm(ChannelCriterion):
    """L2 of each channel's slice in the NEXT layers' inputs (mean over them); filter L2 where none."""

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        s = group_score(model, group, ("in", "dw"), 2.0)
        return s if s is not None else FilterNorm(2.0)(model, group)


class BNScale(ChannelCriterion):
    """Network slimming: |gamma| of the group's BatchNorms (mean); filter L1 where there is none."""

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        s = group_score(model, group, ("bn",), 1.0)
        return s if s is not None else FilterNorm(1.0)(model, group)


class GroupNorm(ChannelCriterion):
    """Every coupled weight slice (filters, input slices, BN scales), mean over the group: Torch-Pruning's
    GroupMagnitudeImportance(p=2, normalizer=None), except that a coupled depthwise conv's filters count
    here (torch-pruning 1.6 skips them: their pruning function is not ``prune_conv_out_channels``)."""

    def __init__(self, p: float = 2.0) -> None:
        self.p = p

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        s = group_score(model, group, _ALL_ROLES, self.p)
        assert s is not None
        return s


class Taylor(ChannelCriterion):
    """First-order Taylor: sum of |w * dL/dw| over every coupled slice (the pruner fills ``.grad``)."""

    needs_data = True
    needs_grad = True
    missing = "the taylor criterion needs gradients: pass a loader to plan_channels"  # no .grad to read

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        s = group_score(model, group, _ALL_ROLES, 1.0, use_grad=True)
        if s is None:
            raise PolicyError(self.missing)
        return s


class OBD(Taylor):
    """Optimal Brain Damage over every coupled slice: 1/2 * F_ii * w_i^2 with a diagonal Fisher
    (``prepare`` stores it where Taylor's sum reads gradients)."""

    needs_grad = False  # its own Fisher pass in prepare, not the pruner's gradients
    missing = "the obd criterion needs data: pass a loader"

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        """Store ``1/2 * F * w`` in every parameter's ``.grad``: ``|w * grad|`` then sums
        ``1/2 * F * w^2`` over each slice (the same code path as the Taylor criterion)."""
        fisher = fisher_all(model, batches, len(batches))
        for k, p in model.named_parameters():
            p.grad = (0.5 * fisher[k].to(p.dtype) * p.detach()).to(p.device)


class APoZ(ChannelCriterion):
    """1 - APoZ (average percentage of zeros after a ReLU) per channel, at the group's BatchNorms."""

    needs_data = True

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        """Record, on each BatchNorm and conv/linear module, the share of its output activations per
        channel that are <= 0 (what a following ReLU zeroes), over ``batches``, BN in eval mode."""
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
                for x, _y in batches:
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

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        """1 - APoZ per root channel, mean over the group's BatchNorms (its producing layers where
        it has none); ``prepare`` first."""
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


CHANNEL_CRITERIA.register("l1", FilterNorm(1.0), help="L1 norm of each channel's own filters")
CHANNEL_CRITERIA.register("l2", FilterNorm(2.0), help="L2 norm of each channel's own filters")
CHANNEL_CRITERIA.register("l2_next", NextInputNorm(), help="L2 of each channel's slice in the next layers' inputs")
CHANNEL_CRITERIA.register("bn", BNScale(), help="network slimming: |gamma| of the group's BatchNorms")
CHANNEL_CRITERIA.register("taylor", Taylor(), help="first-order Taylor |w * dL/dw| over every coupled slice "
                          "(needs data)")
CHANNEL_CRITERIA.register("group_l2", GroupNorm(2.0), help="L2 of every coupled weight slice of the group")
CHANNEL_CRITERIA.register("obd", OBD(), help="Optimal Brain Damage with a diagonal Fisher (needs data)")
CHANNEL_CRITERIA.register("apoz", APoZ(), help="1 - average percentage of zeros after a ReLU (needs data)")
