"""Fine-grained (per-weight) pruning: magnitude per layer, global magnitude, policies, N:M patterns.

A policy is ``{dotted layer name: sparsity in [0, 1)}``. Pruning returns masks
``{name: bool tensor shaped like the weight}`` (True = kept) so finetuning can hold pruned
weights at zero (``amc.train.finetune(..., masks=masks)``) and a recipe can re-apply them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from amc.errors import PolicyError
from amc.importance.weights import magnitude_mask
from amc.layers import global_sparsity_for_size as global_sparsity_for_size  # the fine pruner's name too
from amc.layers import layer_weight, prunable_names, weights_to_remove
from amc.policy import Policy, check_policy
from amc.train import Masks, apply_masks


def validate_policy(model: nn.Module, policy: Mapping[str, float], upper: float = 1.0,
                    inclusive_upper: bool = False) -> Policy:
    """Check names against the model's prunable layers and ratios against [0, upper) (``check_policy``)."""
    return check_policy(policy, sorted(prunable_names(model)), upper, inclusive_upper)


@torch.no_grad()
def prune_layer(model: nn.Module, name: str, sparsity: float) -> torch.Tensor:
    """Magnitude-prune one layer in place; returns its mask."""
    w = layer_weight(model, name)
    mask = magnitude_mask(w, sparsity)
    w.mul_(mask)
    return mask


@torch.no_grad()
def apply_policy(model: nn.Module, policy: Mapping[str, float]) -> Masks:
    """Magnitude-prune every layer named in ``policy`` to its own sparsity, in one call."""
    policy = validate_policy(model, policy)
    return {name: prune_layer(model, name, s) for name, s in policy.items()}


@torch.no_grad()
def global_prune(model: nn.Module, sparsity: float, names: list[str] | None = None) -> Masks:
    """One magnitude threshold across ``names`` (default: all prunable layers) so that exactly
    ``round(sparsity * total)`` of their weights are removed; layers end at different sparsities."""
    names = names if names is not None else prunable_names(model)
    validate_policy(model, dict.fromkeys(names, sparsity))
    weights = [layer_weight(model, n) for n in names]
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights])
    keep = magnitude_mask(flat, sparsity)
    masks, off = {}, 0
    for n, w in zip(names, weights, strict=True):
        masks[n] = keep[off : off + w.numel()].view_as(w).to(w.device)
        off += w.numel()
    apply_masks(model, masks)
    return masks


def _policy_from_scores(model: nn.Module, names: list[str], scores: list[torch.Tensor], k: int) -> Policy:
    """Per-layer sparsities that remove the ``k`` lowest ``scores`` across ``names`` (each layer's
    scores rise with |w|, so per-layer magnitude pruning at these sparsities removes the same weights)."""
    flat = torch.cat([sc.flatten() for sc in scores])
    removed = ~magnitude_mask(flat, k / flat.numel())
    out, off = {}, 0
    for n in names:
        numel = layer_weight(model, n).numel()
        out[n] = int(removed[off: off + numel].sum()) / numel
        off += numel
    return out


@torch.no_grad()
def global_policy(model: nn.Module, size: float, names: list[str] | None = None) -> Policy:
    """Per-layer sparsities of one global magnitude threshold that brings the model to ``size`` of
    its dense size (what ``global_prune`` does, as a policy; the model is not changed)."""
    names = names if names is not None else prunable_names(model)
    k = weights_to_remove(model, size, names)
    return _policy_from_scores(model, names, [layer_weight(model, n).detach().abs().float() for n in names], k)


@torch.no_grad()
def lamp_policy(model: nn.Module, size: float, names: list[str] | None = None) -> Policy:
    """Per-layer sparsities of LAMP (layer-adaptive magnitude pruning, Lee et al., ICLR 2021): each
    weight scores w^2 over the sum of the squares of the weights of its layer at least as large;
    one global threshold on those scores. A layer's largest weight scores 1, so no layer empties,
    and layers with many small weights go further than under a plain global threshold."""
    names = names if names is not None else prunable_names(model)
    k = weights_to_remove(model, size, names)
    scores = []
    for n in names:
        w2 = layer_weight(model, n).detach().float().flatten().pow(2)
        order = torch.sort(w2, stable=True).indices
        s = w2[order]
        tail = s.flip(0).cumsum(0).flip(0)  # sum of the squares from each weight up
        sc = torch.empty_like(w2)
        sc[order] = s / tail.clamp_min(torch.finfo(torch.float32).tiny)
        # ties in |w| share a score that rises with the sort position: monotone in |w| within the layer
        scores.append(sc)
    return _policy_from_scores(model, names, scores, k)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M mask along the input dimension: in each group of ``m`` consecutive input channels (at a
    fixed output channel and kernel position) keep the ``n`` largest |w|, ties by lower index."""
    if not 0 < n <= m:
        raise PolicyError(f"N:M needs 0 < N <= M, got {n}:{m}")
    if weight.ndim == 4:
        w = weight.detach().abs().permute(0, 2, 3, 1)  # O, kh, kw, I: input channels last
    elif weight.ndim == 2:
        w = weight.detach().abs()
    else:
        raise PolicyError(f"N:M pruning takes conv or linear weights, got shape {tuple(weight.shape)}")
    if w.shape[-1] % m:
        raise PolicyError(f"input dimension {w.shape[-1]} is not a multiple of {m}")
    groups = w.reshape(-1, m).float()
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    keep = keep.view(w.shape)
    return keep.permute(0, 3, 1, 2).contiguous() if weight.ndim == 4 else keep


@torch.no_grad()
def nm_prune(model: nn.Module, n: int = 2, m: int = 4, names: list[str] | None = None) -> tuple[Masks, list[str]]:
    """Apply N:M masks to each layer whose input dimension divides by ``m``; returns the masks and
    the names skipped (with a reason left to the caller: typically the 3-channel first conv)."""
    names = names if names is not None else prunable_names(model)
    masks, skipped = {}, []
    for name in names:
        mod = model.get_submodule(name)
        w = layer_weight(model, name)
        in_dim = w.shape[1]
        if in_dim % m or (isinstance(mod, nn.Conv2d) and mod.groups > 1):
            skipped.append(name)
            continue
        masks[name] = nm_mask(w, n, m)
    apply_masks(model, masks)
    return masks, skipped
