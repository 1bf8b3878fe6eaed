"""The recipe file's schema: one pydantic declaration per field, for the objects and the YAML alike.

Lifecycle: a recipe is built in Python (``Recipe(ModelRef(...), "fine", "magnitude", layers, ...)``,
usually by ``amc.recipe.make_recipe``; keyword arguments validated by pydantic) or read from a YAML
mapping with :func:`recipe_from_mapping` (strict types, no unknown fields, an old version migrated
by :func:`migrate`; the first problem raised as one ``RecipeError`` naming its place, such as
``recipe.layers[0].kept must be a list of ints``) -> :func:`check_recipe` (the rules between fields:
granularity, criterion, ranges, duplicates) -> :func:`recipe_to_mapping` (the YAML mapping, in the
file's key order). The classes are frozen pydantic dataclasses, so ``dataclasses.replace``,
``fields`` and ``asdict`` work on them as on plain ones.

Format version 2 (every key below is written; unknown keys are rejected; version 1 files, which have
no ``data`` section and always a checkpoint hash, still read)::

    format_version: 2
    model: {arch: vgg8, checkpoint_sha256: <hex>, num_classes: 10, input_shape: [1, 3, 32, 32]}
                                 # arch: a model reference (vgg8, torchvision:mobilenet_v2, timm:resnet18,
                                 # pkg.module:factory) or the class name of a user's module;
                                 # checkpoint_sha256: null when the model was given as an object
    granularity: fine            # fine | nm | channel
    criterion: magnitude         # fine: magnitude, obd or synflow; nm: magnitude; channel: the criterion
                                 # that chose the channels
    layers:                      # one entry per pruned layer, by dotted module name
      - {name: backbone.conv0, ratio: 0.5, mask_sha256: <hex>}      # channel: kept: [0, 3, ...]
    nm: null                     # [N, M] for granularity nm
    round_to: null               # channel: the multiple channel counts were rounded to
    budget: {kind: size, fraction: 0.25}       # amc.budget.Budget, or null
    finetune: {epochs: 5.0, lr: 0.01, schedule: cosine, batch_size: 256, seed: 0,
               iterative: {kind: agp, steps: 5, initial: 0.0, epochs_per_step: 1.0},   # or iterative: null
               distill: 0.0}             # distillation weight; the dense checkpoint is the teacher
                                         # (optional on reading: recipes without it read as 0.0)
    search: {method: optuna, episodes: 100, seed: 0}                                    # or null
    metrics: {accuracy: 0.91, ...}             # achieved numbers, all optional
    data: {source: <path or description>, classes: [...], mean: [...], std: [...]}    # or null
    masks: {file: recipe.masks.safetensors, sha256: <hex>}   # only in fine recipes whose criterion
                                 # is not magnitude (see amc.recipe.files)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError
from torch import nn

from amc.budget import Budget
from amc.errors import AmcError, PolicyError
from amc.importance.weights import WEIGHT_CRITERIA
from amc.pruners.schedule import SCHEDULES, IterativeSchedule
from amc.train import FinetuneConfig

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no data section, a checkpoint hash always
GRANULARITIES = ("fine", "nm", "channel")
LR_SCHEDULES = ("cosine", "constant")
MASKS_SUFFIX = ".masks.safetensors"  # the stored masks of a fine recipe: recipe.yaml -> recipe.masks.safetensors


class RecipeError(AmcError):
    """A recipe file that is malformed, of an unknown version, or inconsistent with its model."""


# Python callers get pydantic's usual conversions (a list where a tuple is declared, an int for a
# float); a file is read strictly (see recipe_from_mapping). arbitrary_types_allowed: Recipe.masks
# holds torch tensors.
_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _in_turn(error: AmcError) -> PydanticCustomError:
    """An ``AmcError`` met while validating a section (Budget's own check, a file's missing key),
    carried as a pydantic error so that it takes its turn among the others: the first problem in
    the file is the one reported (``_schema_error`` raises the ``AmcError`` itself)."""
    return PydanticCustomError("amc_error", "{message}", {"message": str(error), "error": error})


# ----------------------------------------------------------------------------- the sections


@dataclass(frozen=True, config=_CONFIG)
class ModelRef:
    """The dense model a recipe applies to."""

    arch: Annotated[str, Field(description="a reference amc.models.build_model knows, or a user module's class name")]
    checkpoint_sha256: str | None = Field(
        default=None, description="sha256 of the dense checkpoint file (None: the model was given as an object)")
    num_classes: int = Field(default=10, description="outputs of the classifier")
    input_shape: tuple[int, ...] = Field(default=(1, 3, 32, 32), description="one example input (CIFAR-10)")


@dataclass(frozen=True, config=_CONFIG)
class DataInfo:
    """What the model was compressed on: enough to rebuild the loaders' normalisation."""

    source: str | None = Field(default=None, description='a path or a description ("torch Dataset")')
    classes: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    protocol: str | None = Field(
        default=None, description='"test-halves" (amc.data.holdout) or "heldout"; None: not recorded')
    val_sha256: str | None = Field(
        default=None, description="test-halves: hash of the validation half's test-set indices")
    test_sha256: str | None = Field(default=None, description="test-halves: hash of the final-test half's indices")


@dataclass(frozen=True, config=_CONFIG)
class LayerRecipe:
    """One pruned layer."""

    name: Annotated[str, Field(description="dotted module name")]
    ratio: Annotated[float, Field(description="fine / nm: share of weights zeroed; channel: share of output "
                                              "channels asked to go; in [0, 1), checked by check_recipe")]
    mask_sha256: str | None = Field(default=None, description="fine / nm: hash of the rebuilt mask")
    kept: tuple[int, ...] | None = Field(default=None, description="channel: kept output-channel indices, sorted")


@dataclass(frozen=True, config=_CONFIG)
class FinetuneSpec:
    """The recovery after pruning that re-applying the recipe with data runs."""

    epochs: float = Field(default=5.0, description="the benchmark protocol's finetune length; >= 0")
    lr: float = Field(default=0.01, description="amc.train.FinetuneConfig's default peak learning rate; > 0")
    schedule: str = Field(default="cosine", description=f"learning-rate schedule: {', '.join(LR_SCHEDULES)}")
    batch_size: int = Field(default=256, description="> 0")
    seed: int = 0
    iterative: IterativeSchedule | None = Field(
        default=None, description="None: one-shot pruning, then `epochs` of finetuning")
    distill: float = Field(default=0.0, description="knowledge-distillation weight in [0, 1], the dense model as "
                                            "teacher (0: labels only)")

    @model_validator(mode="before")
    @classmethod
    def _file_needs_epochs_and_lr(cls, data: Any) -> Any:
        # a mapping (a file's section) names the length and the rate; Python callers may rely on defaults
        if isinstance(data, dict):
            for key in ("epochs", "lr"):
                if key not in data:
                    raise _in_turn(RecipeError(f"recipe.finetune: missing field {key!r}"))
        return data

    @field_validator("iterative", mode="wrap")
    @classmethod
    def _iterative_in_file_words(cls, value: Any, handler: Any) -> Any:
        if isinstance(value, dict):
            if "kind" in value and isinstance(value["kind"], str) and value["kind"] not in SCHEDULES:
                raise _in_turn(RecipeError(f"recipe.finetune.iterative.kind {value['kind']!r} unknown; "
                                           f"known: {', '.join(SCHEDULES)}"))
            for key in ("kind", "steps"):  # required in a file, though IterativeSchedule has defaults
                if key not in value:
                    raise _in_turn(RecipeError(f"recipe.finetune.iterative: missing field {key!r}"))
        try:
            return handler(value)
        except PolicyError as e:
            raise _in_turn(RecipeError(f"recipe.finetune.iterative: {e}")) from None

    def config(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=self.epochs, lr=self.lr, schedule=self.schedule, distill_weight=self.distill)


@dataclass(frozen=True, config=_CONFIG)
class SearchInfo:
    """How the policy was found."""

    method: Annotated[str, Field(description="amc | optuna | sensitivity | uniform | manual ...")]
    episodes: int = Field(default=0, description="episodes (AMC) or trials (Optuna)")
    seed: int = 0


@dataclass(frozen=True, config=_CONFIG)
class Metrics:
    """Achieved numbers; fractions are of the dense model's."""

    dense_accuracy: float | None = None
    accuracy_before_finetune: float | None = None
    accuracy: float | None = Field(default=None, description="after finetuning (test set)")
    size_fraction: float | None = Field(
        default=None, description="non-zero weights x 32 bits over dense (the lab's measure)")
    file_bytes: int | None = Field(default=None, description="the compressed export's real bytes on disk")
    params: int | None = None
    macs: int | None = None
    macs_fraction: float | None = None
    latency_ms: float | None = None
    latency_speedup: float | None = None
    latency_device: str | None = Field(default=None, description='e.g. "cpu 1 thread bs1" or "NVIDIA H100 bs256 bf16"')


@dataclass(frozen=True, config=_CONFIG)
class MasksRef:
    """The file section naming the stored masks next to the YAML (amc.recipe.files)."""

    file: Annotated[str, Field(description="a file name in the recipe's folder")]
    sha256: Annotated[str, Field(description="of the file's bytes")]


@dataclass(frozen=True, config=_CONFIG)
class Recipe:
    """A replayable compression: the policy, how it was found, and what it achieved."""

    model: ModelRef
    granularity: Annotated[str, Field(description=" | ".join(GRANULARITIES))]
    criterion: Annotated[str, Field(description="fine: a weight criterion; nm: magnitude; channel: the channel "
                                                "criterion")]
    layers: tuple[LayerRecipe, ...]
    nm: tuple[int, int] | None = Field(default=None, description="[N, M] for granularity nm")
    round_to: int | None = Field(default=None, description="channel: the multiple channel counts were rounded to")
    budget: Budget | None = Field(default=None, description="amc.budget.Budget")
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    search: SearchInfo | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    data: DataInfo | None = Field(default=None, description="version 2")
    format_version: int = Field(default=FORMAT_VERSION, description="a file read keeps its version when written")
    # fine recipes of a criterion other than magnitude: the masks ({layer: bool tensor}, True = kept),
    # saved next to the YAML (amc.recipe.files); None: rebuilt from the weights. Not a YAML key.
    masks: Mapping[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @field_validator("budget", mode="wrap")
    @classmethod
    def _budget_in_turn(cls, value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except AmcError as e:  # Budget's check of its kind and range (a BudgetError)
            raise _in_turn(e) from None

    # the methods below reach amc.recipe.files and amc.recipe.surgery, which import this module: the
    # imports wait for the call
    @classmethod
    def load(cls, path: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             force: bool = False) -> Recipe:
        """``load_recipe``: read and validate a recipe file."""
        from amc.recipe.files import load_recipe

        return load_recipe(path, checkpoint, force)

    def save(self, path: str | os.PathLike) -> Path:
        """``save_recipe``: validate and write atomically."""
        from amc.recipe.files import save_recipe

        return save_recipe(self, path)

    def apply(self, model: nn.Module, force: bool = False, example_inputs: Any = None) -> nn.Module:
        """Apply to a dense ``model`` object the caller built and loaded (left untouched): the
        physically smaller model (channel) or a masked copy (fine / nm), bit for bit as recorded.
        ``example_inputs``: what a channel recipe's model is traced on (needed for a model of several
        inputs; default: zeros of the recorded input shape)."""
        from amc.recipe.surgery import apply_to_model

        return apply_to_model(self, model, force, example_inputs)[0]

    def to_yaml(self) -> str:
        """The YAML text ``save`` writes (a recipe with stored masks names ``recipe.masks.safetensors``)."""
        from amc.recipe.files import dump_recipe

        return dump_recipe(self)

    @property
    def policy(self) -> dict[str, float]:
        return {layer.name: layer.ratio for layer in self.layers}

    def kept_channels(self) -> dict[str, list[int]]:
        return {layer.name: list(layer.kept or ()) for layer in self.layers}

    def with_metrics(self, **values: Any) -> Recipe:
        """A copy with some metrics filled in (``recipe.with_metrics(accuracy=0.9)``)."""
        return replace(self, metrics=replace(self.metrics, **values))


# ----------------------------------------------------------------------------- rules between fields


def check_recipe(recipe: Recipe) -> None:
    """Raise one clear error for the first problem the fields show without a model: version,
    granularity, criterion, stored masks, ranges, duplicate layers."""
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


# ----------------------------------------------------------------------------- the YAML mapping


def recipe_to_mapping(recipe: Recipe) -> dict[str, Any]:
    """The file's mapping, without the masks section: ``format_version`` first, ``data`` after
    ``metrics`` (not in version 1), and a layer's unused fields left out (they read back as null)."""
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
    for la in recipe.layers:
        entry: dict[str, Any] = {"name": la.name, "ratio": la.ratio}
        if la.mask_sha256 is not None:
            entry["mask_sha256"] = la.mask_sha256
        if la.kept is not None:
            entry["kept"] = list(la.kept)
        out["layers"].append(entry)
    return out


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """An older version's mapping in the current schema's terms (the version number is kept, so
    that writing it back gives the same version). Version 1: no data section; the checkpoint hash
    is required (version 2 allows null: a recipe made from a model object)."""
    d = {k: v for k, v in d.items() if not (k in ("finetune", "metrics") and v is None)}  # null: the defaults
    if d["format_version"] == 1:
        if "data" in d:
            raise RecipeError("recipe: unknown field 'data' (a version 2 section; this recipe is version 1)")
        model = d.get("model")
        if isinstance(model, dict) and model.get("checkpoint_sha256") is None:
            raise RecipeError("recipe.model: missing field 'checkpoint_sha256'" if "checkpoint_sha256" not in model
                              else "recipe.model.checkpoint_sha256 must be str, got None")
    return d


_KINDS = {"float_type": "float", "int_type": "int", "string_type": "str", "list_type": "list", "tuple_type": "list",
          "bool_type": "bool", "dataclass_type": "a mapping", "dict_type": "a mapping"}
_NOT_JSON = "!yaml"  # marks a YAML value JSON has no type for (a date...), so no field accepts it
_SECTIONS: dict[str, type] = {
    "model": ModelRef, "layers": LayerRecipe, "budget": Budget, "finetune": FinetuneSpec,
    "iterative": IterativeSchedule, "search": SearchInfo, "metrics": Metrics, "data": DataInfo, "masks": MasksRef}


def _place(loc: tuple[int | str, ...]) -> str:
    return "recipe" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _shown(value: Any) -> str:
    return value[_NOT_JSON] if isinstance(value, dict) and set(value) == {_NOT_JSON} else repr(value)


def _schema_error(e: ValidationError, owner: type) -> AmcError:
    """The first problem pydantic found, in the reader's words: where, and what was wrong."""
    err = e.errors()[0]
    loc, kind = tuple(err["loc"]), err["type"]
    if kind == "amc_error":  # a plain dataclass's own check (Budget's range...), as it raised it
        return err["ctx"]["error"]
    if kind in ("missing", "missing_argument"):
        return RecipeError(f"{_place(loc[:-1])}: missing field {loc[-1]!r}")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        section = next((p for p in reversed(loc[:-1]) if isinstance(p, str)), None)
        cls = _SECTIONS.get(section, owner) if section is not None else owner
        known = ", ".join(sorted(f.name for f in fields(cls)))
        return RecipeError(f"{_place(loc[:-1])}: unknown field {loc[-1]!r} (known: {known})")
    if kind in ("dataclass_type", "dict_type", "model_type") and not isinstance(err["input"], dict):
        return RecipeError(f"{_place(loc)} must be a mapping, got {type(err['input']).__name__}")
    if loc and isinstance(loc[-1], int):  # an item of a list
        return RecipeError(f"{_place(loc[:-1])} must be a list of {_KINDS.get(kind, 'values of one type')}s")
    return RecipeError(f"{_place(loc)} must be {_KINDS.get(kind, kind)}, got {_shown(err['input'])}")


def _strict(cls: type, d: Any, prefix: tuple[str, ...] = ()) -> Any:
    """``cls`` from a YAML mapping, strictly: no str for a number, no float for an int, no bool for
    either, no unknown key. Validated as JSON, where pydantic's strict mode still builds the nested
    sections and tuples from mappings and lists (in Python mode it wants the instances)."""
    text = json.dumps(d, default=lambda v: {_NOT_JSON: repr(v)})
    try:
        return TypeAdapter(cls).validate_json(text, strict=True)
    except ValidationError as e:
        err = _schema_error(e, cls)
        if prefix and isinstance(err, RecipeError) and str(err).startswith("recipe"):
            err = RecipeError(f"recipe.{'.'.join(prefix)}{str(err)[len('recipe'):]}")
        raise err from None


def recipe_from_mapping(d: Any) -> tuple[Recipe, MasksRef | None]:
    """Parse a YAML mapping into a ``Recipe`` (its ``masks`` not yet read) and the masks section it
    names, if any; one ``RecipeError`` for the first problem found."""
    if not isinstance(d, dict):
        raise RecipeError(f"recipe must be a mapping, got {type(d).__name__}")
    if "format_version" not in d:
        raise RecipeError("recipe: missing field 'format_version'")
    version = d["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise RecipeError(f"unknown recipe format_version {version!r}; this amc reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
    d = migrate(d)
    ref = d.pop("masks", None)
    recipe = _strict(Recipe, d)
    return recipe, (_strict(MasksRef, ref, ("masks",)) if ref is not None else None)
