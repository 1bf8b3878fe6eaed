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
    criterion: magnitude         # fine / nm: magnitude; channel: the criterion that chose the channels
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

How each granularity rebuilds deterministically (same result on any device, from fp32 weights):
- ``fine``: per layer, zero the ``round(ratio * numel)`` smallest |w|, ties broken by lower flat
  index (a stable sort, unlike ``torch.topk`` whose choice among equal values differs between CPU
  and CUDA; the fp16-stored shared checkpoints have many equal magnitudes). ``mask_sha256`` (of
  the shape and the packed mask bits) lets ``apply`` verify the rebuild.
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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from amc.budget import Budget
from amc.errors import AmcError, CheckpointError, PolicyError
from amc.io import atomic_write_text
from amc.layers import layer_weight, prunable_names
from amc.models import build_model, file_sha256, load_model
from amc.pruners.finegrained import magnitude_mask, nm_mask
from amc.pruners.schedule import SCHEDULES, IterativeSchedule, iterative_prune
from amc.train import FinetuneConfig, Masks, apply_masks, finetune

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no data section, a checkpoint hash always
GRANULARITIES = ("fine", "nm", "channel")
LR_SCHEDULES = ("cosine", "constant")


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
    """Compute (not apply) the fine / nm masks the recipe describes on ``model``'s current weights."""
    masks: Masks = {}
    for layer in recipe.layers:
        w = layer_weight(model, layer.name)
        if recipe.granularity == "fine":
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
) -> Recipe:
    """A validated recipe for ``policy`` on the dense ``checkpoint``.

    fine: ``policy`` = {layer: sparsity}; the masks are rebuilt once here and their hashes stored.
    nm: ``policy`` names the layers (ratios are 1 - N/M); ``nm`` = (N, M), default (2, 4).
    channel: ``kept`` = {root layer: kept output channels} (e.g. an ``amc.pruners.channel.ChannelPlan``);
    ``policy`` gives the ratios asked for (default: the share actually removed).
    With ``model`` (the dense module object, left untouched), nothing is rebuilt from ``arch``, and
    ``checkpoint`` may be None (the recipe then records no checkpoint hash).
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
        if policy is None:
            raise PolicyError(f"a {granularity} recipe needs a policy {{layer: ratio}}")
        if granularity == "nm":
            assert nm is not None
            policy = dict.fromkeys(policy, 1 - nm[0] / nm[1])
        layers = [LayerRecipe(name, float(r)) for name, r in policy.items()]
    recipe = Recipe(ref, granularity, criterion, tuple(layers), nm=nm, round_to=round_to, budget=budget,  # type: ignore[arg-type]
                    finetune=finetune or FinetuneSpec(), search=search, metrics=metrics or Metrics(), data=data)
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
    if recipe.granularity in ("fine", "nm") and recipe.criterion != "magnitude":
        raise RecipeError(f"{recipe.granularity} recipes rebuild by magnitude; criterion "
                          f"{recipe.criterion!r} cannot be re-applied")
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


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    d = asdict(recipe)
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
    return out


def dump_recipe(recipe: Recipe) -> str:
    validate_recipe(recipe)
    header = "# amc compression recipe: re-apply with `amc apply THIS.yaml --checkpoint DENSE.pt`\n"
    return header + yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, default_flow_style=None, width=110)


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Validate and write ``recipe`` as YAML, atomically."""
    path = Path(path)
    atomic_write_text(path, dump_recipe(recipe))
    return path


class _Reader:
    """Strict field access on one YAML mapping, naming the place of every problem."""

    def __init__(self, d: Any, where: str):
        if not isinstance(d, dict):
            raise RecipeError(f"{where} must be a mapping, got {type(d).__name__}")
        self.d, self.where = d, where
        self.used: set[str] = set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., nullable: bool = False) -> Any:
        self.used.add(key)
        if key not in self.d:
            if default is ...:
                raise RecipeError(f"{self.where}: missing field {key!r}")
            return default
        v = self.d[key]
        if v is None and (nullable or default is None):
            return None
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise RecipeError(f"{self.where}.{key} must be {names}, got {v!r}")
        return v

    def sub(self, key: str, default: Any = ...) -> _Reader | None:
        self.used.add(key)
        if key not in self.d:
            if default is ...:
                raise RecipeError(f"{self.where}: missing field {key!r}")
            return default
        if self.d[key] is None:
            return None
        return _Reader(self.d[key], f"{self.where}.{key}")

    def done(self) -> None:
        extra = [k for k in self.d if k not in self.used]
        if extra:
            raise RecipeError(f"{self.where}: unknown field {extra[0]!r} (known: {', '.join(sorted(self.used))})")


def _ints(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise RecipeError(f"{where} must be a list of integers")
    return tuple(v)


def recipe_from_dict(d: Any) -> Recipe:
    """Parse a YAML mapping into a ``Recipe``; one ``RecipeError`` for the first problem found."""
    r = _Reader(d, "recipe")
    version = r.get("format_version", int)
    if version not in READABLE_VERSIONS:
        raise RecipeError(f"unknown recipe format_version {version!r}; this amc reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
    m = r.sub("model")
    assert m is not None
    sha = m.get("checkpoint_sha256", str) if version == 1 else m.get("checkpoint_sha256", str, None)
    model = ModelRef(m.get("arch", str), sha, m.get("num_classes", int, 10),
                     _ints(m.get("input_shape", list, [1, 3, 32, 32]), "recipe.model.input_shape"))
    m.done()
    layers = []
    raw_layers = r.get("layers", list)
    for i, entry in enumerate(raw_layers):
        la = _Reader(entry, f"recipe.layers[{i}]")
        kept = la.get("kept", list, None)
        layers.append(LayerRecipe(la.get("name", str), la.get("ratio", float), la.get("mask_sha256", str, None),
                                  _ints(kept, f"recipe.layers[{i}].kept") if kept is not None else None))
        la.done()
    nm = r.get("nm", list, None)
    budget = None
    if (b := r.sub("budget", None)) is not None:
        budget = Budget(b.get("kind", str), b.get("fraction", float))  # checks kind and range
        b.done()
    ft = FinetuneSpec()
    if (f := r.sub("finetune", None)) is not None:
        iterative = None
        if (it := f.sub("iterative", None)) is not None:
            sched_kind = it.get("kind", str)
            if sched_kind not in SCHEDULES:
                raise RecipeError(f"recipe.finetune.iterative.kind {sched_kind!r} unknown; "
                                  f"known: {', '.join(SCHEDULES)}")
            try:
                iterative = IterativeSchedule(sched_kind, it.get("steps", int), it.get("initial", float, 0.0),
                                              it.get("epochs_per_step", float, 1.0))
            except PolicyError as e:
                raise RecipeError(f"recipe.finetune.iterative: {e}") from None
            it.done()
        ft = FinetuneSpec(f.get("epochs", float), f.get("lr", float), f.get("schedule", str, "cosine"),
                          f.get("batch_size", int, 256), f.get("seed", int, 0), iterative,
                          f.get("distill", float, 0.0))
        f.done()
    search = None
    if (s := r.sub("search", None)) is not None:
        search = SearchInfo(s.get("method", str), s.get("episodes", int, 0), s.get("seed", int, 0))
        s.done()
    metrics = Metrics()
    if (mt := r.sub("metrics", None)) is not None:
        values = {}
        for fl in fields(Metrics):
            kind: Any = {"file_bytes": int, "params": int, "macs": int, "latency_device": str}.get(fl.name, float)
            values[fl.name] = mt.get(fl.name, kind, None)
        metrics = Metrics(**values)
        mt.done()
    data = None
    if version >= 2 and (dr := r.sub("data", None)) is not None:
        def floats(key: str) -> tuple[float, ...] | None:
            v = dr.get(key, list, None)
            if v is not None and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise RecipeError(f"recipe.data.{key} must be a list of numbers")
            return tuple(float(x) for x in v) if v is not None else None

        classes = dr.get("classes", list, None)
        if classes is not None and not all(isinstance(c, str) for c in classes):
            raise RecipeError("recipe.data.classes must be a list of strings")
        data = DataInfo(dr.get("source", str, None), tuple(classes) if classes is not None else None,
                        floats("mean"), floats("std"), dr.get("protocol", str, None),
                        dr.get("val_sha256", str, None), dr.get("test_sha256", str, None))
        dr.done()
    recipe = Recipe(model, r.get("granularity", str), r.get("criterion", str), tuple(layers),
                    nm=_ints(nm, "recipe.nm") if nm is not None else None,  # type: ignore[arg-type]
                    round_to=r.get("round_to", int, None), budget=budget, finetune=ft, search=search,
                    metrics=metrics, data=data, format_version=version)
    r.done()
    return recipe


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
        recipe = recipe_from_dict(data)
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
