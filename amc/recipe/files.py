"""Recipe files: the YAML text, and the stored masks beside it; safe to load (no pickle, no code).

Lifecycle: ``save_recipe(recipe, path)`` (validates, then writes the masks file, if any, and the
YAML, each atomically) -> ``load_recipe(path, checkpoint=...)`` (``yaml.safe_load``, the schema of
``amc.recipe.schema``, the checks of ``amc.recipe.surgery.validate_recipe``, the checkpoint's hash;
a problem raises one ``RecipeError`` that starts with the file's path).

Stored masks: a fine recipe whose criterion is not magnitude (obd, synflow) keeps its masks in a
safetensors file next to the YAML (``<recipe stem>.masks.safetensors``: one bool tensor per layer,
no pickle, written before the YAML), referenced by name and the sha256 of its bytes. Recomputing
the scores instead would need the very images (obd) and would still not re-apply bit for bit: a
Fisher estimate or a SynFlow gradient is a sum of floats whose rounding differs between CPU and
CUDA, thread counts and library versions, and one flipped tie moves a weight across the threshold.
The stored masks re-apply exactly, need no data, and each layer's ``mask_sha256`` still checks them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from amc.errors import AmcError
from amc.io import atomic_write_bytes, atomic_write_text
from amc.recipe.schema import MASKS_SUFFIX, Recipe, RecipeError, recipe_from_mapping, recipe_to_mapping
from amc.recipe.surgery import check_checkpoint, validate_recipe
from amc.train import Masks


def masks_bytes(masks: Mapping[str, torch.Tensor]) -> bytes:
    """The stored masks as safetensors bytes: one bool tensor per layer (no pickle)."""
    from safetensors.torch import save

    return save({n: m.detach().to("cpu", torch.bool).contiguous() for n, m in masks.items()},
                metadata={"format": "amc-masks"})


def read_masks(folder: Path, ref: Mapping[str, str]) -> Masks:
    """The masks file a recipe in ``folder`` references, checked against its sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    name = ref["file"]
    if Path(name).name != name or name.startswith("."):
        raise RecipeError(f"recipe.masks.file must be a file name next to the recipe, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise RecipeError(f"the recipe's masks file {path} is missing (it is written next to the recipe "
                          "and must travel with it)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref["sha256"]:
        raise RecipeError(f"masks file {path} has sha256 {digest[:12]}..., the recipe expects {ref['sha256'][:12]}...")
    try:
        masks = load(data)
    except (SafetensorError, ValueError) as e:
        raise RecipeError(f"masks file {path} is not a readable safetensors file: {e}") from None
    bad = [n for n, m in masks.items() if m.dtype != torch.bool]
    if bad:
        raise RecipeError(f"masks file {path}: the mask of {bad[0]} is {masks[bad[0]].dtype}, not bool")
    return masks


def recipe_to_dict(recipe: Recipe, masks_file: str = "recipe" + MASKS_SUFFIX) -> dict[str, Any]:
    """The YAML mapping; a recipe with stored masks references them as ``masks_file`` (the bytes'
    sha256 included), which :func:`save_recipe` writes next to the YAML."""
    out = recipe_to_mapping(recipe)
    if recipe.masks is not None:
        out["masks"] = {"file": masks_file, "sha256": hashlib.sha256(masks_bytes(recipe.masks)).hexdigest()}
    return out


def recipe_from_dict(d: Any, folder: str | os.PathLike | None = None) -> Recipe:
    """Parse a YAML mapping into a ``Recipe``; one ``RecipeError`` for the first problem found.
    ``folder``: where the recipe file is, to read the masks file it may reference."""
    recipe, ref = recipe_from_mapping(d)
    if ref is None:
        return recipe
    if folder is None:
        raise RecipeError("recipe.masks: the masks file is read next to the recipe file; load it with "
                          "load_recipe(path)")
    return replace(recipe, masks=read_masks(Path(folder), {"file": ref.file, "sha256": ref.sha256}))


def dump_recipe(recipe: Recipe, masks_file: str = "recipe" + MASKS_SUFFIX) -> str:
    """The YAML text, after validating ``recipe``."""
    validate_recipe(recipe)
    header = "# amc compression recipe: re-apply with `amc apply THIS.yaml --checkpoint DENSE.pt`\n"
    if recipe.masks is not None:
        header += f"# its masks are in {masks_file}, next to it (keep the two together)\n"
    return header + yaml.safe_dump(recipe_to_dict(recipe, masks_file), sort_keys=False, default_flow_style=None,
                                   width=110)


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Validate and write ``recipe`` as YAML, atomically; stored masks (fine recipes of obd or
    synflow) go first, atomically too, to ``<stem>.masks.safetensors`` next to it."""
    path = Path(path)
    name = path.stem + MASKS_SUFFIX
    text = dump_recipe(recipe, name)  # validates before anything is written
    if recipe.masks is not None:
        atomic_write_bytes(path.parent / name, masks_bytes(recipe.masks))
    atomic_write_text(path, text)
    return path


def load_recipe(path: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                force: bool = False) -> Recipe:
    """Read and validate a recipe; with ``checkpoint``, also check its sha256 (unless ``force``)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"recipe {path} is not valid YAML{at}: {first}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not a text file") from None
    try:
        recipe = recipe_from_dict(data, path.parent)
        validate_recipe(recipe)
    except AmcError as e:
        raise type(e)(f"{path}: {e}") from None
    if checkpoint is not None:
        check_checkpoint(recipe, checkpoint, force)
    return recipe
