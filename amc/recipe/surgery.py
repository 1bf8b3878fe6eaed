"""Recipes on models: record a compression from a dense model, and re-apply it bit for bit.

Lifecycle: ``make_recipe(arch, checkpoint, policy, ...)`` (records the mask hashes or kept channels
by rebuilding once; ``model=`` a module object instead of rebuilding ``arch``) -> (saved and loaded
by ``amc.recipe.files``) -> ``validate_recipe(recipe, model)`` (the schema's rules, then the layers
against the model) -> ``apply_to_model(recipe, dense)`` -> ``(model, masks)``, or
``apply_recipe(recipe, checkpoint, loader=...)``, which loads the dense checkpoint first and, with
data, runs the recipe's recovery (``amc.pruners.schedule.recover_pruned``).

How each granularity rebuilds deterministically (same result on any device, from fp32 weights):
- ``fine``, criterion ``magnitude``: per layer, zero the ``round(ratio * numel)`` smallest |w|, ties
  broken by lower flat index (a stable sort, unlike ``torch.topk`` whose choice among equal values
  differs between CPU and CUDA; the fp16-stored shared checkpoints have many equal magnitudes).
  ``mask_sha256`` (of the shape and the packed mask bits) lets ``apply`` verify the rebuild.
- ``fine``, criterion ``obd`` or ``synflow``: the masks stored with the recipe (``amc.recipe.files``).
- ``nm``: in every group of M consecutive input channels keep the N largest |w|, ties by index.
- ``channel``: ``kept`` lists each root layer's kept output channels; ``amc.pruners.channel.prune_channels``
  slices the dense tensors, so weights are copies of the dense ones.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amc.budget import Budget
from amc.errors import CheckpointError, PolicyError
from amc.layers import layer_weight, prunable_names
from amc.models import build_model, file_sha256, load_model
from amc.pruners.finegrained import magnitude_mask, nm_mask
from amc.pruners.schedule import recover_pruned
from amc.recipe.schema import (
    DataInfo,
    FinetuneSpec,
    LayerRecipe,
    Metrics,
    ModelRef,
    Recipe,
    RecipeError,
    SearchInfo,
    check_recipe,
)
from amc.train import Masks, apply_masks

# ----------------------------------------------------------------------------- deterministic masks


def mask_sha256(mask: torch.Tensor) -> str:
    """sha256 of a mask's shape and its packed bits (True = kept), flattened in C order."""
    bits = np.packbits(mask.detach().flatten().to("cpu", torch.bool).numpy())
    h = hashlib.sha256(repr(tuple(mask.shape)).encode())
    h.update(bits.tobytes())
    return h.hexdigest()


# the stable (ties by lower index) masks of amc.pruners.finegrained, under the names recipes use
stable_magnitude_mask = magnitude_mask
stable_nm_mask = nm_mask


@torch.no_grad()
def rebuild_masks(model: nn.Module, recipe: Recipe) -> Masks:
    """Compute (not apply) the fine / nm masks the recipe describes on ``model``'s current weights
    (a recipe with stored masks: copies of those, on the weights' devices)."""
    masks: Masks = {}
    for layer in recipe.layers:
        w = layer_weight(model, layer.name)
        if recipe.masks is not None:
            m = recipe.masks[layer.name]
            if tuple(m.shape) != tuple(w.shape):
                raise RecipeError(f"the recipe's stored mask of {layer.name} has shape {tuple(m.shape)}, "
                                  f"its weight {tuple(w.shape)}")
            masks[layer.name] = m.to(device=w.device, dtype=torch.bool, copy=True)
        elif recipe.granularity == "fine":
            masks[layer.name] = stable_magnitude_mask(w, layer.ratio)
        elif recipe.granularity == "nm":
            assert recipe.nm is not None
            masks[layer.name] = stable_nm_mask(w, *recipe.nm)
        else:
            raise RecipeError(f"granularity {recipe.granularity!r} has no weight masks")
    return masks


# ----------------------------------------------------------------------------- building a recipe


def make_recipe(
    arch: str,
    checkpoint: str | os.PathLike | None,
    policy: Mapping[str, float] | None = None,
    granularity: str = "fine",
    criterion: str = "magnitude",
    *,
    kept: Mapping[str, Iterable[int]] | None = None,
    nm: tuple[int, int] | None = None,
    round_to: int | None = None,
    budget: Budget | None = None,
    finetune: FinetuneSpec | None = None,
    search: SearchInfo | None = None,
    metrics: Metrics | None = None,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    model: nn.Module | None = None,
    data: DataInfo | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> Recipe:
    """A validated recipe for ``policy`` on the dense ``checkpoint``.

    fine: ``policy`` = {layer: sparsity}; the masks are rebuilt once here and their hashes stored.
    nm: ``policy`` names the layers (ratios are 1 - N/M); ``nm`` = (N, M), default (2, 4).
    channel: ``kept`` = {root layer: kept output channels} (e.g. an ``amc.pruners.channel.ChannelPlan``);
    ``policy`` gives the ratios asked for (default: the share actually removed).
    With ``model`` (the dense module object, left untouched), nothing is rebuilt from ``arch``, and
    ``checkpoint`` may be None (the recipe then records no checkpoint hash).
    fine with a criterion other than magnitude (obd, synflow): ``masks`` = {layer: bool tensor} that
    criterion chose (e.g. ``Evaluator.fine_masks(policy)`` or ``prune_by_criterion``'s), stored with
    the recipe; ``policy`` may then be None (the ratios are the masks' shares of zeros).
    """
    sha = file_sha256(checkpoint) if checkpoint is not None else None
    ref = ModelRef(arch, sha, num_classes, tuple(input_shape))
    if granularity == "nm":
        nm = tuple(nm) if nm is not None else (2, 4)  # type: ignore[assignment]
    layers: list[LayerRecipe] = []
    if granularity == "channel":
        if kept is None:
            raise PolicyError("a channel recipe needs the kept channel indices (kept=plan)")
        if hasattr(kept, "keep"):  # an amc.pruners.channel.ChannelPlan
            round_to = round_to if round_to is not None else getattr(kept, "round_to", None)
            kept = kept.keep
        shapes = model if model is not None else build_model(arch, num_classes)
        for name, idx in kept.items():
            idx_t = tuple(sorted(int(i) for i in idx))
            out = _out_channels(shapes, name)
            ratio = float(policy[name]) if policy is not None and name in policy else 1 - len(idx_t) / out
            layers.append(LayerRecipe(name, ratio, None, idx_t))
    else:
        if masks is not None:
            masks = {n: m.detach().to("cpu", torch.bool).contiguous() for n, m in masks.items()}
            if policy is None:
                policy = {n: 1.0 - int(m.sum()) / m.numel() for n, m in masks.items()}
            elif set(policy) != set(masks):
                raise PolicyError("the masks and the policy name different layers")
            for n, m in masks.items():
                if round(float(policy[n]) * m.numel()) != m.numel() - int(m.sum()):
                    raise PolicyError(f"the mask of {n} zeroes {m.numel() - int(m.sum())} of {m.numel()} weights, "
                                      f"not the policy's ratio {policy[n]}")
        if policy is None:
            raise PolicyError(f"a {granularity} recipe needs a policy {{layer: ratio}}")
        if granularity == "nm":
            assert nm is not None
            policy = dict.fromkeys(policy, 1 - nm[0] / nm[1])
        layers = [LayerRecipe(name, float(r)) for name, r in policy.items()]
    recipe = Recipe(ref, granularity, criterion, tuple(layers), nm=nm, round_to=round_to, budget=budget,
                    finetune=finetune or FinetuneSpec(), search=search, metrics=metrics or Metrics(), data=data,
                    masks=masks)
    dense = copy.deepcopy(model).cpu().float() if model is not None else load_model(arch, checkpoint, num_classes)
    validate_recipe(recipe, dense)
    if granularity != "channel":
        masks = rebuild_masks(dense, recipe)
        recipe = replace(recipe, layers=tuple(replace(layer, mask_sha256=mask_sha256(masks[layer.name]))
                                              for layer in recipe.layers))
    return recipe


def _out_channels(model: nn.Module, name: str) -> int:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise PolicyError(f"layer {name!r} is not in model {type(model).__name__}") from None
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features
    raise PolicyError(f"layer {name!r} is a {type(mod).__name__}, not a Conv2d or Linear")


# ----------------------------------------------------------------------------- checking the model matches


def validate_recipe(recipe: Recipe, model: nn.Module | None = None) -> None:
    """Raise one clear error for the first problem: the schema's rules (``check_recipe``), then
    layers the model lacks, kept channels out of its range, nm groups its inputs do not divide.
    Without ``model``, the recipe's architecture is built (unless it was made from a module object)."""
    check_recipe(recipe)
    if model is None:
        if recipe.model.checkpoint_sha256 is None:  # made from a module object: its class may need arguments,
            return  # so the layer checks wait for the model it is applied to (Recipe.apply)
        model = build_model(recipe.model.arch, recipe.model.num_classes)
    names = set(prunable_names(model))
    for layer in recipe.layers:
        if layer.name not in names:
            raise PolicyError(f"recipe names layer {layer.name!r}, which is not a prunable layer of "
                              f"{recipe.model.arch} (e.g. {', '.join(sorted(names)[:6])})")
        if layer.kept is not None:
            out = _out_channels(model, layer.name)
            k = layer.kept
            if list(k) != sorted(set(k)) or k[0] < 0 or k[-1] >= out:
                raise PolicyError(f"kept channels of {layer.name} must be sorted, unique and in [0, {out})")
        if recipe.granularity == "nm":
            w = layer_weight(model, layer.name)
            assert recipe.nm is not None
            if w.shape[1] % recipe.nm[1]:
                raise PolicyError(f"layer {layer.name}: input dimension {w.shape[1]} is not a multiple "
                                  f"of M={recipe.nm[1]}")


def check_checkpoint(recipe: Recipe, checkpoint: str | os.PathLike, force: bool = False) -> str:
    """The checkpoint's sha256; a mismatch with the recipe's raises ``CheckpointError`` unless ``force``."""
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    digest = file_sha256(checkpoint)
    if recipe.model.checkpoint_sha256 is None:  # made from a model object: nothing to compare with
        return digest
    if digest != recipe.model.checkpoint_sha256 and not force:
        raise CheckpointError(
            f"checkpoint {checkpoint} has sha256 {digest[:12]}..., but the recipe was made from "
            f"{recipe.model.checkpoint_sha256[:12]}...; pass --force (force=True) to apply it anyway")
    return digest


# ----------------------------------------------------------------------------- applying


def apply_recipe(
    recipe: Recipe,
    checkpoint: str | os.PathLike,
    force: bool = False,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_rebuilt: Callable[[nn.Module, Masks], None] | None = None,
) -> tuple[nn.Module, Masks]:
    """Rebuild the compressed model from the dense ``checkpoint``; finetune if ``loader`` is given.

    Pruning runs on the CPU in fp32, so the result before finetuning is bit-identical on every
    machine. fine / nm: the masks are checked against the recipe's hashes (skipped with ``force``,
    which also accepts another checkpoint). channel: returns the physically smaller model and no
    masks. The model then moves to ``device`` (default: stays on the CPU) and ``on_rebuilt(model,
    masks)`` sees it (e.g. to measure accuracy before finetuning). With ``loader``,
    ``recipe.finetune`` runs, seeded: ``epochs`` of finetuning with the masks held or, with an
    iterative schedule, iterative pruning from the dense weights to the same policy (its own
    ``steps x epochs_per_step`` epochs) followed by ``epochs`` more; with ``distill > 0`` the dense
    model (from the same checkpoint) is the teacher of every finetune.
    """
    validate_recipe(recipe)
    check_checkpoint(recipe, checkpoint, force)
    dense = load_model(recipe.model.arch, checkpoint, recipe.model.num_classes)
    teacher = dense if loader is not None and recipe.finetune.distill > 0 else None
    dense_state = None
    if recipe.finetune.iterative is not None and loader is not None:
        dense_state = {k: v.clone() for k, v in dense.state_dict().items()}
    model, masks = apply_to_model(recipe, dense, force)
    if device is not None:
        model = model.to(device)
        masks = {k: v.to(device) for k, v in masks.items()}
        teacher = teacher.to(device) if teacher is not None else None
    if on_rebuilt is not None:
        on_rebuilt(model, masks)
    if loader is not None:
        ft = recipe.finetune
        masks = recover_pruned(model, loader, ft.config(), masks, seed=ft.seed, teacher=teacher, on_step=on_step,
                               iterative=ft.iterative, policy=recipe.policy, dense_state=dense_state)
    return model.eval(), masks


def apply_to_model(recipe: Recipe, dense: nn.Module, force: bool = False,
                   example_inputs: Any = None) -> tuple[nn.Module, Masks]:
    """The pruning half of ``apply_recipe`` on a dense module object (not modified; a copy is
    pruned on the CPU in fp32). channel: the physically smaller model and no masks, traced on
    ``example_inputs`` (a tensor, a tuple or a dict; default: zeros of the recorded input shape, which a
    model of several inputs does not record); fine / nm: the masked copy and its masks, checked
    against the recipe's hashes unless ``force``."""
    validate_recipe(recipe, dense)
    model = copy.deepcopy(dense).cpu().float().eval()
    masks: Masks = {}
    if recipe.granularity == "channel":
        from amc.layers import map_inputs
        from amc.pruners.channel import prune_channels

        if example_inputs is None and not recipe.model.input_shape:
            raise RecipeError("this recipe was made on a model of several inputs: apply it with "
                              "example_inputs= (the inputs it was traced on: a tuple or a dict)")
        example = torch.zeros(recipe.model.input_shape) if example_inputs is None else \
            map_inputs(example_inputs, lambda t: t.detach().cpu().clone())
        return prune_channels(model, channel_plan(recipe, model), example), masks
    masks = rebuild_masks(model, recipe)
    if not force:
        bad = [la.name for la in recipe.layers
               if la.mask_sha256 is not None and mask_sha256(masks[la.name]) != la.mask_sha256]
        if bad:
            raise RecipeError(f"rebuilt masks differ from the recipe's hashes for {len(bad)} layers "
                              f"(e.g. {bad[0]}); the checkpoint or the pruning code changed")
    apply_masks(model, masks)
    return model, masks


def channel_plan(recipe: Recipe, model: nn.Module | None = None) -> Any:
    """The ``amc.pruners.channel.ChannelPlan`` that a channel recipe's kept indices describe."""
    from amc.pruners.channel import ChannelPlan

    model = model if model is not None else build_model(recipe.model.arch, recipe.model.num_classes)
    channels = {name: _out_channels(model, name) for name in recipe.kept_channels()}
    return ChannelPlan(recipe.kept_channels(), [], channels, recipe.criterion, recipe.round_to or 1)
