"""Recipes: a readable, versioned YAML file that re-applies a compression bit for bit.

Lifecycle: ``make_recipe(arch, checkpoint, policy, ...)`` (records the mask hashes or kept channels
by rebuilding once; ``model=`` a module object instead of rebuilding ``arch``) -> ``save_recipe(recipe,
path)`` -> ``load_recipe(path, checkpoint=...)`` (validates) -> ``apply_recipe(recipe, checkpoint,
loader=...)`` -> ``(model, masks)``; or, on a model object the caller built, ``Recipe.load(path).apply(model)``.

The parts, in the order data flows through them:
- ``amc.recipe.schema``: the file's schema, one pydantic declaration per field (``Recipe``,
  ``ModelRef``, ``LayerRecipe``, ``FinetuneSpec``, ``SearchInfo``, ``Metrics``, ``DataInfo``), the
  rules between fields, the version migration, the errors that name the place of a problem;
- ``amc.recipe.surgery``: a recipe on a model (building one, checking a model matches, the masks
  and channel plans that re-apply it);
- ``amc.recipe.files``: the YAML text and the stored masks beside it (safe_load, safetensors).
The recovery after pruning (finetuning, iterative pruning) is ``amc.pruners.schedule.recover_pruned``.
"""

from amc.recipe.files import (
    dump_recipe,
    load_recipe,
    masks_bytes,
    read_masks,
    recipe_from_dict,
    recipe_to_dict,
    save_recipe,
)
from amc.recipe.schema import (
    FORMAT_VERSION,
    GRANULARITIES,
    LR_SCHEDULES,
    MASKS_SUFFIX,
    READABLE_VERSIONS,
    DataInfo,
    FinetuneSpec,
    LayerRecipe,
    MasksRef,
    Metrics,
    ModelRef,
    Recipe,
    RecipeError,
    SearchInfo,
    check_recipe,
    migrate,
    recipe_from_mapping,
    recipe_to_mapping,
)
from amc.recipe.surgery import (
    apply_recipe,
    apply_to_model,
    channel_plan,
    check_checkpoint,
    make_recipe,
    mask_sha256,
    rebuild_masks,
    stable_magnitude_mask,
    stable_nm_mask,
    validate_recipe,
)

__all__ = [
    "FORMAT_VERSION", "GRANULARITIES", "LR_SCHEDULES", "MASKS_SUFFIX", "READABLE_VERSIONS",
    "DataInfo", "FinetuneSpec", "LayerRecipe", "MasksRef", "Metrics", "ModelRef", "Recipe", "RecipeError",
    "SearchInfo", "apply_recipe", "apply_to_model", "channel_plan", "check_checkpoint", "check_recipe",
    "dump_recipe", "load_recipe", "make_recipe", "mask_sha256", "masks_bytes", "migrate", "read_masks",
    "rebuild_masks", "recipe_from_dict", "recipe_from_mapping", "recipe_to_dict", "recipe_to_mapping",
    "save_recipe", "stable_magnitude_mask", "stable_nm_mask", "validate_recipe",
]
