"""Interop with ``torch.nn.utils.prune``: masks in its ``weight_orig`` / ``weight_mask`` form.

* :func:`import_masks` — a model pruned by ``prune.global_unstructured`` / ``l1_unstructured`` /
  ``custom_from_mask`` (live, with its forward pre-hooks) or the state dict saved from one
  (:func:`load_pruned_state`, keys ``<layer>.weight_orig`` and ``<layer>.weight_mask``) becomes a
  plain model plus the project's masks ``{layer: bool tensor}`` (True = kept).
* :func:`recipe_from_masks` — those masks as a fine-grained recipe on the dense checkpoint they
  came from (per-layer ratios; refused unless rebuilding by magnitude gives the same masks bit for
  bit, which holds for any magnitude pruning, global or per layer, of the same weights).
* :func:`apply_masks_as_torch_prune` / :func:`recipe_as_torch_prune` — the reverse: project masks
  or a recipe applied as ``torch.nn.utils.prune`` masks (``prune.custom_from_mask``), so scripts
  that expect ``weight_orig`` / ``weight_mask`` keep working.

The round trip is exact: the imported masks equal the exported ones and ``weight_orig * mask``
equals the masked weight.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from amc.errors import CheckpointError, PolicyError
from amc.layers import layer_weight, prunable_names
from amc.recipe import Recipe, RecipeError, apply_to_model, make_recipe, mask_sha256
from amc.train import Masks


def _pruned_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "weight_orig") and hasattr(m, "weight_mask")]


def import_masks(model: nn.Module) -> tuple[nn.Module, Masks]:
    """A copy of a ``torch.nn.utils.prune``-pruned ``model`` with the pruning made permanent
    (``prune.remove``: weight = weight_orig * weight_mask) and its masks, keyed by layer name."""
    pruned = _pruned_modules(model)
    # the masked weight is a non-leaf tensor deepcopy refuses; the pre-hook recomputes it anyway
    held = {name: mod.__dict__.pop("weight") for name, mod in pruned if "weight" in mod.__dict__}
    try:
        work = copy.deepcopy(model)
    finally:
        for name, mod in pruned:
            if name in held:
                mod.weight = held[name]
    masks: Masks = {}
    for name, mod in _pruned_modules(work):
        masks[name] = mod.weight_mask.detach().bool().clone()  # type: ignore[union-attr,operator]
        prune.remove(mod, "weight")
    if not masks:
        raise PolicyError("the model has no torch.nn.utils.prune masks (no module has weight_orig / weight_mask)")
    return work, masks


def load_pruned_state(model: nn.Module, state: Mapping[str, torch.Tensor] | str | os.PathLike) -> Masks:
    """Load into the plain ``model`` (in place) a state dict saved from a pruned one (a mapping, or
    a file read with ``weights_only=True``); returns the masks. Weights become weight_orig * mask."""
    if not isinstance(state, Mapping):
        try:
            state = torch.load(state, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(f"cannot read {state}: {type(e).__name__}: {first}") from None
        if not isinstance(state, Mapping):
            raise CheckpointError("the file does not hold a state dict")
    plain: dict[str, torch.Tensor] = {}
    masks: Masks = {}
    for k, v in state.items():
        if k.endswith(".weight_orig"):
            layer = k[: -len(".weight_orig")]
            mk = f"{layer}.weight_mask"
            if mk not in state:
                raise CheckpointError(f"{k} has no matching {mk}")
            mask = state[mk].bool()
            if mask.shape != v.shape:
                raise CheckpointError(f"{mk} is shaped {tuple(mask.shape)}, its weight {tuple(v.shape)}")
            plain[f"{layer}.weight"] = v * mask.to(v.dtype)
            masks[layer] = mask.clone()
        elif k.endswith(".weight_mask"):
            continue
        else:
            plain[k] = v
    try:
        model.load_state_dict(plain)
    except RuntimeError as e:
        raise CheckpointError(f"the state dict does not fit the model: {str(e).splitlines()[0]}") from None
    return masks


def apply_masks_as_torch_prune(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with each mask attached by ``prune.custom_from_mask`` (weight_orig holds
    the model's current weights, weight_mask the mask)."""
    work = copy.deepcopy(model)
    for name, mask in masks.items():
        w = layer_weight(work, name)
        if mask.shape != w.shape:
            raise PolicyError(f"{name}: mask shaped {tuple(mask.shape)}, weight {tuple(w.shape)}")
        prune.custom_from_mask(work.get_submodule(name), "weight", mask.to(device=w.device, dtype=w.dtype))
    return work


def recipe_as_torch_prune(recipe: Recipe, dense: nn.Module, force: bool = False) -> nn.Module:
    """A fine / nm recipe applied to the dense ``dense`` model as ``torch.nn.utils.prune`` masks."""
    if recipe.granularity == "channel":
        raise RecipeError("a channel recipe removes channels; torch.nn.utils.prune masks only fine / nm recipes")
    _, masks = apply_to_model(recipe, dense, force)
    return apply_masks_as_torch_prune(copy.deepcopy(dense).cpu().float().eval(), masks)


def recipe_from_masks(arch: str, checkpoint: str | os.PathLike | None, masks: Mapping[str, torch.Tensor],
                      model: nn.Module | None = None) -> Recipe:
    """A fine-grained recipe whose rebuilt masks are exactly ``masks`` on the dense weights
    (``model`` if given, else ``arch`` loaded from ``checkpoint``)."""
    names = set(prunable_names(model)) if model is not None else None
    policy = {}
    for name, m in masks.items():
        if names is not None and name not in names:
            raise PolicyError(f"{name} is not a prunable layer of the model")
        policy[name] = 1.0 - float(m.float().mean())
    recipe = make_recipe(arch, checkpoint, policy, "fine", model=model)
    bad = [la.name for la in recipe.layers if la.mask_sha256 != mask_sha256(masks[la.name].bool())]
    if bad:
        raise RecipeError(f"the masks of {len(bad)} layers (e.g. {bad[0]}) are not the magnitude masks of the "
                          "dense weights: a recipe could not rebuild them (was the model finetuned after "
                          "pruning, or pruned by another criterion?)")
    return recipe
