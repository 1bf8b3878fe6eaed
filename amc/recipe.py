"""Recipes: a readable, versioned YAML file that re-applies a compression bit for bit.

Lifecycle: ``make_recipe(arch, checkpoint, policy, ...)`` (records the mask hashes or kept channels
by rebuilding once; ``model=`` a module object instead of rebuilding ``arch``) -> ``save_recipe(recipe,
path)`` -> ``load_recipe(path, checkpoint=...)`` (validates) -> ``apply_recipe(recipe, checkpoint,
loader=...)`` -> ``(model, masks)``; or, on a model object the caller built, ``Recipe.load(path).apply(model)``.

Format version 2 (every key below is written; ``load_recipe`` rejects unknown keys; version 1 files,
which have no ``data`` section and always a checkpoint hash, still read)::

    format_version: 2
    model: {arch: vgg8, checkpoint_sha256: <hex>, num_classes: 10, input_shape: [1, 3, 32, 32]}
                                 # arch: a model reference (vgg8, torchvision:mobilenet_v2, timm:resnet18,
                                 # pkg.module:factory) or the class name of a user's module;
                                 # checkpoint_sha256: null when the model was given as an object
    data: {source: <path or description>, classes: [...], mean: [...], std: [...]}    # or null
    granularity: fine            # fine | nm | channel
    criterion: magnitude         # fine: magnitude, obd or synflow; nm: magnitude; channel: the criterion
                                 # that chose the channels
    nm: null                     # [N, M] for granularity nm
    round_to: null               # channel: the multiple channel counts were rounded to
    layers:                      # one entry per pruned layer, by dotted module name
      - {name: backbone.conv0, ratio: 0.5, mask_sha256: <hex>}      # channel: kept: [0, 3, ...]
    budget: {kind: size, fraction: 0.25}       # amc.budget.Budget, or null
    finetune: {epochs: 5.0, lr: 0.01, schedule: cosine, batch_size: 256, seed: 0,
               iterative: {kind: agp, steps: 5, initial: 0.0, epochs_per_step: 1.0},   # or iterative: null
               distill: 0.0}             # distillation weight; the dense checkpoint is the teacher
                                         # (optional on reading: recipes without it read as 0.0)
    search: {method: optuna, episodes: 100, seed: 0}                                    # or null
    metrics: {accuracy: 0.91, ...}             # achieved numbers, all optional
    masks: {file: recipe.masks.safetensors, sha256: <hex>}   # only in fine recipes whose criterion
                                 # is not magnitude (written only then; a reader before it rejects the key)

How each granularity rebuilds deterministically (same result on any device, from fp32 weights):
- ``fine``, criterion ``magnitude``: per layer, zero the ``round(ratio * numel)`` smallest |w|, ties
  broken by lower flat index (a stable sort, unlike ``torch.topk`` whose choice among equal values
  differs between CPU and CUDA; the fp16-stored shared checkpoints have many equal magnitudes).
  ``mask_sha256`` (of the shape and the packed mask bits) lets ``apply`` verify the rebuild.
- ``fine``, criterion ``obd`` or ``synflow``: the masks themselves are stored, in a safetensors file
  next to the YAML (``<recipe stem>.masks.safetensors``: one bool tensor per layer, no pickle,
  written atomically before the YAML), referenced by name and the sha256 of its bytes. Recomputing
  the scores instead would need the very images (obd) and would still not re-apply bit for bit: a
  Fisher estimate or a SynFlow gradient is a sum of floats whose rounding differs between CPU and
  CUDA, thread counts and library versions, and one flipped tie moves a weight across the
  threshold. The stored masks re-apply exactly, need no data, and ``mask_sha256`` still checks them.
- ``nm``: in every group of M consecutive input channels keep the N largest |w|, ties by index.
- ``channel``: ``kept`` lists each root layer's kept output channels; ``amc.pruners.channel.prune_channels``
  slices the dense tensors, so weights are copies of the dense ones.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from amc.budget import Budget
from amc.errors import AmcError, CheckpointError, PolicyError
from amc.importance.weights import WEIGHT_CRITERIA
from amc.io import atomic_write_bytes, atomic_write_text
from amc.layers import layer_weight, prunable_names
from amc.models import build_model, file_sha256, load_model
from amc.pruners.finegrained import magnitude_mask, nm_mask
from amc.pruners.schedule import SCHEDULES, IterativeSchedule, iterative_prune
from amc.train import FinetuneConfig, Masks, apply_masks, finetune

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no data section, a checkpoint hash always
GRANULARITIES = ("fine", "nm", "channel")
LR_SCHEDULES = ("cosine", "constant")
MASKS_SUFFIX = ".masks.safetensors"  # the stored masks of a fine recipe: recipe.yaml -> recipe.masks.safetensors


class RecipeError(AmcError):
    """A recipe file that is malformed, of an unknown version, or inconsistent with its model."""


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class ModelRef:
    arch: str  # a reference ``amc.models.build_model`` knows, or a user module's class name
    checkpoint_sha256: str | None  # of the dense checkpoint file the recipe was made from (None: an object)
    num_classes: int = 10
    input_shape: tuple[int, ...] = (1, 3, 32, 32)  # one example input (CIFAR-10)


@dataclass(frozen=True)
class DataInfo:
    """What the model was compressed on: enough to rebuild the loaders' normalisation."""

    source: str | None = None  # a path or a description ("torch Dataset")
    classes: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    protocol: str | None = None  # "test-halves" (amc.data.holdout) or "heldout"; None: not recorded
    val_sha256: str | None = None  # test-halves: hash of the validation half's test-set indices
    test_sha256: str | None = None  # test-halves: hash of the final-test half's indices


@dataclass(frozen=True)
class LayerRecipe:
    name: str  # dotted module name
    ratio: float  # fine/nm: share of weights zeroed; channel: share of output channels asked to go
    mask_sha256: str | None = None  # fine / nm: hash of the rebuilt mask
    kept: tuple[int, ...] | None = None  # channel: kept output-channel indices, sorted


@dataclass(frozen=True)
class FinetuneSpec:
    epochs: float = 5.0  # the benchmark protocol's finetune length
    lr: float = 0.01  # amc.train.FinetuneConfig's default peak learning rate
    schedule: str = "cosine"
    batch_size: int = 256
    seed: int = 0
    iterative: IterativeSchedule | None = None  # None: one-shot pruning, then ``epochs`` of finetuning
    distill: float = 0.0  # knowledge-distillation weight in [0, 1], the dense model as teacher (0: labels only)

    def config(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=self.epochs, lr=self.lr, schedule=self.schedule, distill_weight=self.distill)


@dataclass(frozen=True)
class SearchInfo:
    method: str  # amc | optuna | sensitivity | uniform | manual ...
    episodes: int = 0  # episodes (AMC) or trials (Optuna)
    seed: int = 0


@dataclass(frozen=True)
class Metrics:
    """Achieved numbers; fractions are of the dense model's."""

    dense_accuracy: float | None = None
    accuracy_before_finetune: float | None = None
    accuracy: float | None = None  # after finetuning (test set)
    size_fraction: float | None = None  # non-zero weights x 32 bits over dense (the lab's measure)
    file_bytes: int | None = None  # the compressed export's real bytes on disk
    params: int | None = None
    macs: int | None = None
    macs_fraction: float | None = None
    latency_ms: float | None = None
    latency_speedup: float | None = None
    latency_device: str | None = None  # e.g. "cpu 1 thread bs1" or "NVIDIA H100 bs256 bf16"


@dataclass(frozen=True)
class Recipe:
    model: ModelRef
    granularity: str
    criterion: str
    layers: tuple[LayerRecipe, ...]
    nm: tuple[int, int] | None = None
    round_to: int | None = None
    budget: Budget | None = None
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    search: SearchInfo | None = None
    metrics: Metrics = field(default_factory=Metrics)
    data: DataInfo | None = None
    format_version: int = FORMAT_VERSION
    # fine recipes of a criterion other than magnitude: the masks ({layer: bool tensor}, True = kept),
    # saved next to the YAML (see the module doc); None: rebuilt from the weights
    masks: Mapping[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             force: bool = False) -> Recipe:
        """``load_recipe``: read and validate a recipe file."""
        return load_recipe(path, checkpoint, force)

    def save(self, path: str | os.PathLike) -> Path:
        """``save_recipe``: validate and write atomically."""
        return save_recipe(self, path)

    def apply(self, model: nn.Module, force: bool = False) -> nn.Module:
        """Apply to a dense ``model`` object the caller built and loaded (left untouched): the
        physically smaller model (channel) or a masked copy (fine / nm), bit for bit as recorded."""
        return apply_to_model(self, model, force)[0]

    @property
    def policy(self) -> dict[str, float]:
        return {layer.name: layer.ratio for layer in self.layers}

    def kept_channels(self) -> dict[str, list[int]]:
        return {layer.name: list(layer.kept or ()) for layer in self.layers}

    def with_metrics(self, **values: Any) -> Recipe:
        """A copy with some metrics filled in (``recipe.with_metrics(accuracy=0.9)``)."""
        return replace(self, metrics=replace(self.metrics, **values))


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
    recipe = Recipe(ref, granularity, criterion, tuple(layers), nm=nm, round_to=round_to, budget=budget,  # type: ignore[arg-type]
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


# ----------------------------------------------------------------------------- validation


def validate_recipe(recipe: Recipe, model: nn.Module | None = None) -> None:
    """Raise one clear error for the first problem: version, granularity, ranges, unknown layers."""
    if recipe.format_version not in READABLE_VERSIONS:
        raise RecipeError(f"unknown recipe format_version {recipe.format_version!r}; this amc reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    if recipe.granularity not in GRANULARITIES:
        raise RecipeError(f"unknown granularity {recipe.granularity!r}; known: {', '.join(GRANULARITIES)}")
    if recipe.granularity == "nm" and recipe.criterion != "magnitude":
        raise RecipeError(f"nm recipes rebuild by magnitude; criterion {recipe.criterion!r} cannot be re-applied")
    if recipe.granularity == "fine":
        if recipe.criterion not in WEIGHT_CRITERIA:
            raise RecipeError(f"unknown fine-grained criterion {recipe.criterion!r}; known: "
                              f"{', '.join(WEIGHT_CRITERIA)}")
        if recipe.criterion != "magnitude" and recipe.masks is None:
            raise RecipeError(f"a fine recipe of criterion {recipe.criterion!r} re-applies from its stored masks, and "
                              "this one has none (make_recipe(..., masks=...); the file: the masks: section)")
    if recipe.masks is not None:
        if recipe.granularity != "fine":
            raise RecipeError(f"only fine recipes store masks, not {recipe.granularity} ones")
        names = {layer.name for layer in recipe.layers}
        if set(recipe.masks) != names:
            extra, missing = sorted(set(recipe.masks) - names), sorted(names - set(recipe.masks))
            raise RecipeError(f"the stored masks do not match the recipe's layers (missing: {missing[:3]}, "
                              f"extra: {extra[:3]})")
        if recipe.finetune.iterative is not None:
            raise RecipeError("an iterative schedule prunes by magnitude step by step; it cannot follow stored "
                              f"masks (criterion {recipe.criterion!r})")
    if recipe.granularity == "nm":
        if recipe.nm is None or len(recipe.nm) != 2 or not 0 < recipe.nm[0] <= recipe.nm[1]:
            raise RecipeError(f"an nm recipe needs nm: [N, M] with 0 < N <= M, got {recipe.nm!r}")
    ft = recipe.finetune
    if ft.schedule not in LR_SCHEDULES:
        raise RecipeError(f"unknown finetune schedule {ft.schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    if not (ft.epochs >= 0 and ft.lr > 0 and ft.batch_size > 0):
        raise RecipeError(f"finetune needs epochs >= 0, lr > 0, batch_size > 0; got {ft}")
    if not 0 <= ft.distill <= 1:
        raise RecipeError(f"finetune.distill is a weight in [0, 1], got {ft.distill}")
    if ft.iterative is not None and recipe.granularity != "fine":
        raise RecipeError("an iterative schedule is only defined for fine-grained recipes")
    seen: set[str] = set()
    for layer in recipe.layers:
        if layer.name in seen:
            raise PolicyError(f"layer {layer.name!r} appears twice in the recipe")
        seen.add(layer.name)
        if not (isinstance(layer.ratio, float) and math.isfinite(layer.ratio) and 0.0 <= layer.ratio < 1.0):
            raise PolicyError(f"ratio for {layer.name} is {layer.ratio!r}, outside [0, 1)")
        if recipe.granularity == "channel" and not layer.kept:
            raise RecipeError(f"channel recipe layer {layer.name} lists no kept channels")
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


# ----------------------------------------------------------------------------- YAML


def masks_bytes(masks: Mapping[str, torch.Tensor]) -> bytes:
    """The stored masks as safetensors bytes: one bool tensor per layer (no pickle)."""
    from safetensors.torch import save

    return save({n: m.detach().to("cpu", torch.bool).contiguous() for n, m in masks.items()},
                metadata={"format": "amc-masks"})


def _masks_ref(recipe: Recipe, file: str) -> dict[str, str] | None:
    if recipe.masks is None:
        return None
    return {"file": file, "sha256": hashlib.sha256(masks_bytes(recipe.masks)).hexdigest()}


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
    d = asdict(replace(recipe, masks=None))
    d.pop("masks")
    out: dict[str, Any] = {"format_version": d.pop("format_version")}
    out.update(d)
    out["model"]["input_shape"] = list(recipe.model.input_shape)
    data = out.pop("data")
    if data is not None:
        data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}
    if recipe.format_version >= 2:  # version 1 has no data section
        out["data"] = data
    out["nm"] = list(recipe.nm) if recipe.nm is not None else None
    out["layers"] = []
    for la in recipe.layers:  # fields a granularity does not use are left out (read back as null)
        entry: dict[str, Any] = {"name": la.name, "ratio": la.ratio}
        if la.mask_sha256 is not None:
            entry["mask_sha256"] = la.mask_sha256
        if la.kept is not None:
            entry["kept"] = list(la.kept)
        out["layers"].append(entry)
    ref = _masks_ref(recipe, masks_file)
    if ref is not None:
        out["masks"] = ref
    return out


def dump_recipe(recipe: Recipe, masks_file: str = "recipe" + MASKS_SUFFIX) -> str:
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


# -- reading: the file's schema as pydantic models (strict types, no unknown fields) -------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _ModelFile(_Strict):
    arch: str
    checkpoint_sha256: str | None = None  # required in version 1 (checked below)
    num_classes: int = 10
    input_shape: list[int] = [1, 3, 32, 32]


class _LayerFile(_Strict):
    name: str
    ratio: float
    mask_sha256: str | None = None
    kept: list[int] | None = None


class _BudgetFile(_Strict):
    kind: str
    fraction: float


class _IterativeFile(_Strict):
    kind: str
    steps: int
    initial: float = 0.0
    epochs_per_step: float = 1.0


class _FinetuneFile(_Strict):
    epochs: float
    lr: float
    schedule: str = "cosine"
    batch_size: int = 256
    seed: int = 0
    iterative: _IterativeFile | None = None
    distill: float = 0.0


class _SearchFile(_Strict):
    method: str
    episodes: int = 0
    seed: int = 0


class _MetricsFile(_Strict):
    dense_accuracy: float | None = None
    accuracy_before_finetune: float | None = None
    accuracy: float | None = None
    size_fraction: float | None = None
    file_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    macs_fraction: float | None = None
    latency_ms: float | None = None
    latency_speedup: float | None = None
    latency_device: str | None = None


class _DataFile(_Strict):
    source: str | None = None
    classes: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    protocol: str | None = None
    val_sha256: str | None = None
    test_sha256: str | None = None


class _MasksFile(_Strict):
    file: str
    sha256: str


class _RecipeFile(_Strict):
    format_version: int
    model: _ModelFile
    granularity: str
    criterion: str
    layers: list[_LayerFile]
    nm: list[int] | None = None
    round_to: int | None = None
    budget: _BudgetFile | None = None
    finetune: _FinetuneFile | None = None
    search: _SearchFile | None = None
    metrics: _MetricsFile | None = None
    data: _DataFile | None = None  # version 2
    masks: _MasksFile | None = None  # fine recipes of obd / synflow


_KINDS = {"float_type": "float", "int_type": "int", "string_type": "str", "list_type": "list",
          "bool_type": "bool", "model_type": "a mapping", "dict_type": "a mapping"}


_SECTIONS: dict[str, type[BaseModel]] = {
    "model": _ModelFile, "layers": _LayerFile, "budget": _BudgetFile, "finetune": _FinetuneFile,
    "iterative": _IterativeFile, "search": _SearchFile, "metrics": _MetricsFile, "data": _DataFile,
    "masks": _MasksFile}


def _place(loc: tuple[int | str, ...]) -> str:
    return "recipe" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _schema_error(e: ValidationError, model: type[BaseModel]) -> RecipeError:
    """The first problem pydantic found, in the reader's words: where, and what was wrong."""
    err = e.errors()[0]
    loc, kind = tuple(err["loc"]), err["type"]
    if kind == "missing":
        return RecipeError(f"{_place(loc[:-1])}: missing field {loc[-1]!r}")
    if kind == "extra_forbidden":
        section = next((p for p in reversed(loc[:-1]) if isinstance(p, str)), None)
        owner = _SECTIONS.get(section, model) if section is not None else model
        known = ", ".join(sorted(owner.model_fields))
        return RecipeError(f"{_place(loc[:-1])}: unknown field {loc[-1]!r} (known: {known})")
    if kind in ("model_type", "dict_type"):
        return RecipeError(f"{_place(loc)} must be a mapping, got {type(err['input']).__name__}")
    if loc and isinstance(loc[-1], int):  # an item of a list
        return RecipeError(f"{_place(loc[:-1])} must be a list of {_KINDS.get(kind, 'values of one type')}s")
    return RecipeError(f"{_place(loc)} must be {_KINDS.get(kind, kind)}, got {err['input']!r}")


def recipe_from_dict(d: Any, folder: str | os.PathLike | None = None) -> Recipe:
    """Parse a YAML mapping into a ``Recipe``; one ``RecipeError`` for the first problem found.
    ``folder``: where the recipe file is, to read the masks file it may reference."""
    if not isinstance(d, dict):
        raise RecipeError(f"recipe must be a mapping, got {type(d).__name__}")
    version = d.get("format_version")
    if "format_version" in d and (not isinstance(version, int) or isinstance(version, bool)
                                  or version not in READABLE_VERSIONS):
        raise RecipeError(f"unknown recipe format_version {version!r}; this amc reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
    if version == 1 and "data" in d:
        raise RecipeError("recipe: unknown field 'data' (a version 2 section; this recipe is version 1)")
    try:
        f = _RecipeFile.model_validate(d)
    except ValidationError as e:
        raise _schema_error(e, _RecipeFile) from None
    if f.format_version == 1 and f.model.checkpoint_sha256 is None:
        raise RecipeError("recipe.model: missing field 'checkpoint_sha256'" if "checkpoint_sha256" not in d["model"]
                          else "recipe.model.checkpoint_sha256 must be str, got None")
    model = ModelRef(f.model.arch, f.model.checkpoint_sha256, f.model.num_classes, tuple(f.model.input_shape))
    layers = tuple(LayerRecipe(la.name, la.ratio, la.mask_sha256, tuple(la.kept) if la.kept is not None else None)
                   for la in f.layers)
    budget = Budget(f.budget.kind, f.budget.fraction) if f.budget is not None else None  # checks kind and range
    ft = FinetuneSpec()
    if (fs := f.finetune) is not None:
        iterative = None
        if (it := fs.iterative) is not None:
            if it.kind not in SCHEDULES:
                raise RecipeError(f"recipe.finetune.iterative.kind {it.kind!r} unknown; known: {', '.join(SCHEDULES)}")
            try:
                iterative = IterativeSchedule(it.kind, it.steps, it.initial, it.epochs_per_step)
            except PolicyError as e:
                raise RecipeError(f"recipe.finetune.iterative: {e}") from None
        ft = FinetuneSpec(fs.epochs, fs.lr, fs.schedule, fs.batch_size, fs.seed, iterative, fs.distill)
    search = SearchInfo(f.search.method, f.search.episodes, f.search.seed) if f.search is not None else None
    metrics = Metrics(**f.metrics.model_dump()) if f.metrics is not None else Metrics()
    data = None
    if (dr := f.data) is not None:
        data = DataInfo(dr.source, tuple(dr.classes) if dr.classes is not None else None,
                        tuple(dr.mean) if dr.mean is not None else None, tuple(dr.std) if dr.std is not None else None,
                        dr.protocol, dr.val_sha256, dr.test_sha256)
    masks = None
    if f.masks is not None:
        if folder is None:
            raise RecipeError("recipe.masks: the masks file is read next to the recipe file; load it with "
                              "load_recipe(path)")
        masks = read_masks(Path(folder), f.masks.model_dump())
    return Recipe(model, f.granularity, f.criterion, layers,
                  nm=tuple(f.nm) if f.nm is not None else None,  # type: ignore[arg-type]
                  round_to=f.round_to, budget=budget, finetune=ft, search=search, metrics=metrics, data=data,
                  format_version=f.format_version, masks=masks)


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
        torch.manual_seed(recipe.finetune.seed)
        ft = recipe.finetune
        if ft.iterative is not None:
            assert dense_state is not None
            model.load_state_dict(dense_state)
            result = iterative_prune(model, recipe.policy, ft.iterative, loader=loader, finetune_cfg=ft.config(),
                                     teacher=teacher)
            masks = result.masks
        if ft.epochs > 0:
            finetune(model, loader, ft.config(), masks=masks or None, on_step=on_step, teacher=teacher)
    return model.eval(), masks


def apply_to_model(recipe: Recipe, dense: nn.Module, force: bool = False) -> tuple[nn.Module, Masks]:
    """The pruning half of ``apply_recipe`` on a dense module object (not modified; a copy is
    pruned on the CPU in fp32). channel: the physically smaller model and no masks; fine / nm: the
    masked copy and its masks, checked against the recipe's hashes unless ``force``."""
    validate_recipe(recipe, dense)
    model = copy.deepcopy(dense).cpu().float().eval()
    masks: Masks = {}
    if recipe.granularity == "channel":
        from amc.pruners.channel import prune_channels

        example = torch.zeros(recipe.model.input_shape)
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


def channel_plan(recipe: Recipe, model: nn.Module | None = None):
    """The ``amc.pruners.channel.ChannelPlan`` that a channel recipe's kept indices describe."""
    from amc.pruners.channel import ChannelPlan

    model = model if model is not None else build_model(recipe.model.arch, recipe.model.num_classes)
    channels = {name: _out_channels(model, name) for name in recipe.kept_channels()}
    return ChannelPlan(recipe.kept_channels(), [], channels, recipe.criterion, recipe.round_to or 1)
