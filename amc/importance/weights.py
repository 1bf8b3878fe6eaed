"""Per-weight importance: magnitude, Optimal Brain Damage and SynFlow, and masks from scores.

* ``obd`` — Optimal Brain Damage (LeCun et al., 1990): the loss increase of removing weight i is
  about ``1/2 * H_ii * w_i^2``; ``H_ii`` is estimated by the diagonal empirical Fisher, the mean
  over a few batches' images of the squared per-image gradient of the cross-entropy (BN in eval
  mode). With a constant Fisher it orders weights exactly as magnitude does.
* ``synflow`` — Iterative Synaptic Flow Pruning (Tanaka et al., 2020), data-free: every parameter
  and buffer is replaced by its absolute value, the network is run in double precision on an
  all-ones input, ``R`` = the sum of its outputs, and weight i scores ``|theta_i * dR/dtheta_i|``.
  Scores are recomputed over ``rounds`` rounds on the masked network while the kept fraction
  falls exponentially (``density ** (k / rounds)`` at round k), which avoids layer collapse.

Each criterion is a :class:`amc.importance.registry.WeightCriterion` registered in
:data:`WEIGHT_CRITERIA` (``magnitude``, ``obd``, ``synflow``); :func:`weight_scores` looks it up there.

Masks follow :mod:`amc.pruners.finegrained`: ``{layer: bool tensor}`` (True = kept), one global
threshold across the layers, an exact count (:func:`magnitude_mask`: stable sort, lower flat index
first among ties; the fine pruner uses the same function).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from amc.errors import PolicyError
from amc.importance.registry import WEIGHT_CRITERIA, Scores, WeightCriterion
from amc.layers import DEFAULT_INPUT_SHAPE, layer_weight, prunable_names, weights_to_remove
from amc.policy import Policy
from amc.train import Masks, apply_masks, model_device

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def _param_names(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """layer name -> the parameter name of its weight."""
    ids = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for n in names:
        w = layer_weight(model, n)
        if id(w) not in ids:
            raise PolicyError(f"{n}: its weight is not a parameter of the model")
        out[n] = ids[id(w)]
    return out


def fisher_all(model: nn.Module, loader: Batches, batches: int = 4, chunk: int = 32) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of EVERY parameter (name -> mean squared per-image gradient)."""
    from torch.func import functional_call, grad, vmap

    was = model.training
    model.eval()
    dev = model_device(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    loss_fn = nn.CrossEntropyLoss()

    def loss_of(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x.unsqueeze(0),)).float(), y.unsqueeze(0))

    per_image = vmap(grad(loss_of), in_dims=(None, 0, 0))
    acc = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in params.items()}
    seen = 0
    try:
        for i, (x, y) in enumerate(loader):
            if i >= batches:
                break
            x, y = x.to(dev), y.to(dev)
            for s in range(0, len(y), chunk):
                g = per_image(params, x[s:s + chunk], y[s:s + chunk])
                for k in acc:
                    acc[k] += g[k].float().pow(2).sum(0)
                seen += len(y[s:s + chunk])
    finally:
        model.train(was)
    if seen == 0:
        raise PolicyError("the Fisher estimate needs at least one batch of images")
    return {k: v / seen for k, v in acc.items()}


def fisher_diagonal(model: nn.Module, loader: Batches, batches: int = 4, names: list[str] | None = None,
                    chunk: int = 32) -> Scores:
    """:func:`fisher_all` for the weight of each layer in ``names`` (default: all prunable layers)."""
    names = names if names is not None else prunable_names(model)
    pnames = _param_names(model, names)
    fisher = fisher_all(model, loader, batches, chunk)
    return {n: fisher[pnames[n]] for n in names}


def obd_scores(model: nn.Module, loader: Batches | None = None, batches: int = 4, names: list[str] | None = None,
               fisher: Mapping[str, torch.Tensor] | None = None) -> Scores:
    """Optimal Brain Damage saliency ``1/2 * F_ii * w_i^2`` per weight (``fisher`` given, or
    estimated by :func:`fisher_diagonal` on ``loader``)."""
    names = names if names is not None else prunable_names(model)
    if fisher is None:
        if loader is None:
            raise PolicyError("the obd criterion needs data: pass a loader (a few batches of images)")
        fisher = fisher_diagonal(model, loader, batches, names)
    return {n: 0.5 * fisher[n].float() * layer_weight(model, n).detach().float().pow(2) for n in names}


def _synflow_once(work: nn.Module, names: list[str], x: torch.Tensor) -> Scores:
    for p in work.parameters():
        p.grad = None
    r = work(x).sum()
    r.backward()
    out = {}
    for n in names:
        w = layer_weight(work, n)
        g = w.grad if w.grad is not None else torch.zeros_like(w)
        out[n] = (w.detach() * g).abs()
    return out


def _linearised(model: nn.Module) -> nn.Module:
    work = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in list(work.parameters()) + [b for b in work.buffers() if b.is_floating_point()]:
            t.abs_()
    for p in work.parameters():
        p.requires_grad_(True)
    return work


def synflow_scores(model: nn.Module, names: list[str] | None = None,
                   input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE, masks: Masks | None = None) -> Scores:
    """One round of SynFlow scores (double precision; no data): ``|theta * dR/dtheta|`` with
    ``R = sum(f_|theta|(1))`` (``input_shape`` with the batch dimension, 1).
    ``masks`` zero weights first (a later round of the iteration)."""
    names = names if names is not None else prunable_names(model)
    work = _linearised(model)
    if masks:
        with torch.no_grad():
            for n, m in masks.items():
                layer_weight(work, n).mul_(m.to(torch.float64))
    x = torch.ones(tuple(input_shape), dtype=torch.float64, device=model_device(work))
    return {n: s.float() for n, s in _synflow_once(work, names, x).items()}


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the ``round(sparsity * numel)`` smallest-|w| entries: an exact count, and among
    equal |w| the lower flat index goes first (a stable sort; ``torch.topk`` picks among ties
    differently on CPU and CUDA, and the fp16-stored checkpoints hold many ties), so the same
    weights give the same mask on any device: recipes rebuild bit for bit."""
    n = weight.numel()
    k = round(sparsity * n)
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        order = torch.sort(weight.detach().abs().flatten().float(), stable=True).indices
        mask[order[:k]] = False
    return mask.view_as(weight)


def masks_from_scores(model: nn.Module, scores: Mapping[str, torch.Tensor], size: float | None = None,
                      sparsity: float | None = None) -> Masks:
    """One global threshold on ``scores``: remove the lowest so that the model is ``size`` of its
    dense size (BN and biases stay) or its scored layers lose ``sparsity`` of their weights."""
    names = list(scores)
    if (size is None) == (sparsity is None):
        raise PolicyError("give exactly one of size and sparsity")
    total = sum(layer_weight(model, n).numel() for n in names)
    if size is not None:
        k = weights_to_remove(model, size, names)
    else:
        assert sparsity is not None
        if not 0.0 <= sparsity < 1.0:
            raise PolicyError(f"sparsity {sparsity} is outside [0, 1)")
        k = round(sparsity * total)
    flat = torch.cat([scores[n].detach().flatten().float().cpu() for n in names])
    keep = magnitude_mask(flat, k / flat.numel())
    out, off = {}, 0
    for n in names:
        w = layer_weight(model, n)
        out[n] = keep[off:off + w.numel()].view_as(w).to(w.device)
        off += w.numel()
    return out


def synflow_masks(model: nn.Module, size: float, names: list[str] | None = None, rounds: int = 100,
                  input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> Masks:
    """Iterative SynFlow to ``size`` of the dense size: ``rounds`` rounds, the kept share of the
    scored weights falling exponentially to its target; the model is not changed."""
    names = names if names is not None else prunable_names(model)
    if rounds < 1:
        raise PolicyError(f"rounds must be >= 1, got {rounds}")
    total = sum(layer_weight(model, n).numel() for n in names)
    density = 1.0 - weights_to_remove(model, size, names) / total
    work = _linearised(model)
    x = torch.ones(tuple(input_shape), dtype=torch.float64, device=model_device(work))
    originals = {n: layer_weight(work, n).detach().clone() for n in names}
    masks: Masks = {n: torch.ones_like(originals[n], dtype=torch.bool) for n in names}
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for n in names:
                layer_weight(work, n).copy_(originals[n] * masks[n])
        sc = _synflow_once(work, names, x)
        # an already-removed weight stays removed: it scores below every kept one
        sc = {n: torch.where(masks[n], sc[n], torch.full_like(sc[n], -1.0)) for n in names}
        masks = masks_from_scores(work, sc, sparsity=1.0 - density ** (k / rounds))
    return {n: m.to(layer_weight(model, n).device) for n, m in masks.items()}


class Magnitude(WeightCriterion):
    """|w|: the weights' magnitude (data-free)."""

    def __call__(self, model: nn.Module, names: list[str], loader: Batches | None, batches: int) -> Scores:
        return {n: layer_weight(model, n).detach().abs().float() for n in names}


class OBDWeights(WeightCriterion):
    """Optimal Brain Damage, 1/2 * F_ii * w_i^2 with a diagonal empirical Fisher (needs data)."""

    needs_data = True
    needs_grad = True

    def __call__(self, model: nn.Module, names: list[str], loader: Batches | None, batches: int) -> Scores:
        return obd_scores(model, loader, batches, names)


class SynFlow(WeightCriterion):
    """One round of SynFlow's |theta * dR/dtheta| (data-free; ``prune_by_criterion`` iterates)."""

    needs_grad = True

    def __call__(self, model: nn.Module, names: list[str], loader: Batches | None, batches: int) -> Scores:
        return synflow_scores(model, names)


WEIGHT_CRITERIA.register("magnitude", Magnitude(), help="|w|: the weights' magnitude")
WEIGHT_CRITERIA.register("obd", OBDWeights(), help="Optimal Brain Damage with a diagonal Fisher (needs data)")
WEIGHT_CRITERIA.register("synflow", SynFlow(), help="SynFlow, data-free, iterated over rounds")


# the channel criteria's names that mean magnitude for one weight (its L1 and L2 norms are |w|): the
# searchers' configs default to the channel criterion ``l2``, which a fine-grained search reads as this
FINE_ALIASES = {"l1": "magnitude", "l2": "magnitude"}


def fine_criterion(criterion: str) -> str:
    """The :data:`WEIGHT_CRITERIA` name a fine-grained search uses for ``criterion`` (``l1``/``l2``:
    magnitude); one clear ``PolicyError`` for any other name."""
    name = FINE_ALIASES.get(criterion, criterion)
    if name not in WEIGHT_CRITERIA:
        raise PolicyError(f"criterion {criterion!r} does not rank single weights; fine-grained pruning knows "
                          f"{', '.join(WEIGHT_CRITERIA)} (l1 and l2 mean magnitude)")
    return name


def needs_data(criterion: str) -> bool:
    """Whether a weight criterion's scores need images (obd); magnitude and synflow do not."""
    return bool(WEIGHT_CRITERIA[fine_criterion(criterion)].needs_data)


def weight_scores(model: nn.Module, criterion: str, names: list[str] | None = None,
                  loader: Batches | None = None, batches: int = 4) -> Scores:
    """Per-weight scores of a :data:`WEIGHT_CRITERIA` entry (higher = more important)."""
    crit = WEIGHT_CRITERIA.get_or_raise(criterion)  # PolicyError "unknown weight criterion ..."
    names = names if names is not None else prunable_names(model)
    with torch.enable_grad():  # obd and synflow differentiate, also when called under no_grad
        return crit(model, names, loader, batches)


@torch.no_grad()
def prune_by_criterion(model: nn.Module, size: float, criterion: str = "magnitude", names: list[str] | None = None,
                       loader: Batches | None = None, batches: int = 4, rounds: int = 100,
                       input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> tuple[Masks, Policy]:
    """Fine-grained pruning to ``size`` of the dense size with one global threshold on the
    criterion's scores (SynFlow: iterated over ``rounds``). Prunes ``model`` in place; returns the
    masks and the per-layer sparsities they amount to."""
    names = names if names is not None else prunable_names(model)
    if criterion == "synflow":
        with torch.enable_grad():
            masks = synflow_masks(model, size, names, rounds, input_shape)
    else:
        with torch.enable_grad():
            scores = weight_scores(model, criterion, names, loader, batches)
        masks = masks_from_scores(model, scores, size=size)
    apply_masks(model, masks)
    policy = {n: 1.0 - float(m.float().mean()) for n, m in masks.items()}
    return masks, policy
