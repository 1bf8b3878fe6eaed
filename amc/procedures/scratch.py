"""The "Rethinking the Value of Network Pruning" control (Liu et al., 2019): a recipe's pruned
architecture (channel recipes: the physically smaller model; fine / nm recipes: the dense model
under the recipe's masks) with freshly initialised weights, to be trained from scratch."""

from __future__ import annotations

import os

import torch
from torch import nn

from amc.models import build_model
from amc.procedures.lottery import reinitialise
from amc.recipe import Recipe, RecipeError, apply_to_model, channel_plan, validate_recipe
from amc.train import Masks, apply_masks


def scratch_model(recipe: Recipe, checkpoint: str | os.PathLike | None = None, seed: int = 0,
                  force: bool = False) -> tuple[nn.Module, Masks]:
    """The recipe's pruned architecture, randomly initialised from ``seed`` (and its masks, for
    fine / nm recipes, whose masks are rebuilt from the dense ``checkpoint``)."""
    validate_recipe(recipe)
    dense = build_model(recipe.model.arch, recipe.model.num_classes)
    if recipe.granularity == "channel":
        from amc.pruners.channel import prune_channels

        small = prune_channels(dense, channel_plan(recipe, dense), torch.zeros(recipe.model.input_shape))
        return reinitialise(small, seed).eval(), {}
    if checkpoint is None:
        raise RecipeError(f"a {recipe.granularity} recipe's masks come from the dense weights: give the checkpoint")
    from amc.models import load_checkpoint

    load_checkpoint(dense, checkpoint)
    _, masks = apply_to_model(recipe, dense, force)
    model = reinitialise(build_model(recipe.model.arch, recipe.model.num_classes), seed)
    apply_masks(model, masks)
    return model.eval(), masks
