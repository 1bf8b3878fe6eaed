"""The recipe's one schema: hand-written files of each version load, a file is read strictly and its
first problem reported where it is, and the objects behave as frozen dataclasses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from amc.budget import Budget
from amc.errors import BudgetError
from amc.models import file_sha256
from amc.recipe import (
    FORMAT_VERSION,
    FinetuneSpec,
    LayerRecipe,
    Metrics,
    ModelRef,
    Recipe,
    RecipeError,
    apply_recipe,
    load_recipe,
    make_recipe,
    recipe_from_mapping,
    recipe_to_mapping,
    save_recipe,
)
from tests.conftest import make_tiny_vgg

POLICY = {"backbone.conv1": 0.5, "classifier": 0.25}


@pytest.fixture(autouse=True)
def _tiny_vgg8(monkeypatch):
    """Make the name ``vgg8`` build the tiny VGG so recipes can name a zoo architecture cheaply."""
    from amc import models

    monkeypatch.setitem(models.MODELS, "vgg8", lambda num_classes=10: make_tiny_vgg())


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "dense.pt"
    torch.save(make_tiny_vgg().state_dict(), path)
    return path


V1 = """\
format_version: 1
model: {{arch: vgg8, checkpoint_sha256: {sha}, num_classes: 10, input_shape: [1, 3, 32, 32]}}
granularity: fine
criterion: magnitude
layers:
- {{name: backbone.conv1, ratio: 0.5}}
- {{name: classifier, ratio: 0.25}}
nm: null
round_to: null
budget: {{kind: size, fraction: 0.5}}
finetune: {{epochs: 2.0, lr: 0.01, schedule: cosine, batch_size: 64, seed: 3, iterative: null}}
search: {{method: optuna, episodes: 20, seed: 1}}
metrics: {{accuracy: 0.5}}
"""

V2 = V1.replace("format_version: 1", "format_version: 2") + """\
data: {{source: cifar10, classes: [a, b], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], protocol: heldout}}
"""


@pytest.mark.parametrize("version", [1, 2])
def test_hand_written_files_of_each_version_load_and_apply(tmp_path, ckpt, version):
    text = (V1 if version == 1 else V2).format(sha=file_sha256(ckpt))
    path = tmp_path / f"v{version}.yaml"
    path.write_text(text)
    recipe = load_recipe(path, checkpoint=ckpt)
    assert recipe.format_version == version and recipe.policy == POLICY
    assert recipe.budget == Budget("size", 0.5) and recipe.finetune.distill == 0.0  # distill: its default
    assert recipe.finetune == FinetuneSpec(epochs=2.0, lr=0.01, batch_size=64, seed=3)
    assert recipe.metrics == Metrics(accuracy=0.5)
    assert (recipe.data is None) == (version == 1)
    if version == 2:
        assert recipe.data is not None and recipe.data.classes == ("a", "b") and recipe.data.std == (0.25,) * 3
    model, masks = apply_recipe(recipe, ckpt)
    for name, ratio in POLICY.items():
        assert int((~masks[name]).sum()) == round(ratio * masks[name].numel())
        assert bool((model.get_submodule(name).weight[~masks[name]] == 0).all())
    again = yaml.safe_load(save_recipe(recipe, tmp_path / "again.yaml").read_text())
    assert again["format_version"] == version and ("data" in again) == (version == 2)  # a version is kept


def test_writing_gives_the_current_version_and_the_schemas_key_order(ckpt):
    recipe = make_recipe("vgg8", ckpt, POLICY)
    assert recipe.format_version == FORMAT_VERSION
    keys = list(recipe_to_mapping(recipe))
    fields = [f.name for f in dataclasses.fields(Recipe) if f.name not in ("masks", "format_version", "data")]
    assert keys == ["format_version", *fields, "data"]  # every field a key, in the schema's order
    assert yaml.safe_load(recipe.to_yaml()) == recipe_to_mapping(recipe)


def test_the_mapping_round_trips_through_the_schema(ckpt):
    recipe = make_recipe("vgg8", ckpt, POLICY, budget=Budget("macs", 0.25), metrics=Metrics(params=10, accuracy=0.5))
    parsed, masks_ref = recipe_from_mapping(recipe_to_mapping(recipe))
    assert parsed == recipe and masks_ref is None


def _good(ckpt: Path) -> dict:
    return recipe_to_mapping(make_recipe("vgg8", ckpt, POLICY, budget=Budget("size", 0.5)))


@pytest.mark.parametrize(("how", "words"), [
    (lambda d: d["finetune"].pop("epochs"), "recipe.finetune: missing field 'epochs'"),
    (lambda d: d["finetune"].update(iterative={"kind": "agp"}), "recipe.finetune.iterative: missing field 'steps'"),
    (lambda d: d["finetune"].update(iterative={"kind": "agp", "steps": 2.0}),
     "recipe.finetune.iterative.steps must be int, got 2.0"),
    (lambda d: d["budget"].update(fraction="0.5"), "recipe.budget.fraction must be float, got '0.5'"),
    (lambda d: d["layers"][0].update(ratio=True), "recipe.layers[0].ratio must be float, got True"),
    (lambda d: d["model"].update(input_shape=[1, 3, 32.0, 32]), "recipe.model.input_shape must be a list of ints"),
    (lambda d: d["budget"].update(x=1), "recipe.budget: unknown field 'x' (known: fraction, kind)"),
    (lambda d: d.update(search={"method": 1}), "recipe.search.method must be str, got 1"),
    (lambda d: d.pop("format_version"), "recipe: missing field 'format_version'"),
])
def test_a_file_is_read_strictly(ckpt, how, words):
    data = _good(ckpt)
    how(data)
    with pytest.raises(RecipeError) as info:
        recipe_from_mapping(data)
    assert str(info.value).startswith(words)


def test_the_first_problem_in_the_file_is_the_one_reported(ckpt):
    data = _good(ckpt)
    data["budget"]["fraction"] = 1.5  # Budget's own check: a BudgetError
    with pytest.raises(BudgetError, match=r"\(0, 1\]"):
        recipe_from_mapping(data)
    data["layers"][0]["ratio"] = "half"  # an earlier section: reported first
    with pytest.raises(RecipeError, match=r"recipe.layers\[0\].ratio must be float"):
        recipe_from_mapping(data)


def test_an_int_reads_as_a_float_where_the_schema_says_float(ckpt):
    data = _good(ckpt)
    data["layers"][0]["ratio"] = 0
    data["finetune"]["epochs"] = 3
    recipe, _ = recipe_from_mapping(data)
    assert type(recipe.layers[0].ratio) is float and recipe.finetune.epochs == 3.0


def test_objects_are_frozen_dataclasses_validated_on_construction():
    layer = LayerRecipe("conv", 0.5, kept=[3, 1])  # Python callers get pydantic's conversions
    assert layer.kept == (3, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.ratio = 0.1  # type: ignore[misc]
    assert dataclasses.replace(layer, ratio=0.25).ratio == 0.25
    with pytest.raises(ValidationError):
        dataclasses.replace(layer, ratio="half")
    with pytest.raises(ValidationError):
        ModelRef("vgg8", None, num_classes=1.5)  # type: ignore[arg-type]
    assert {f.name for f in dataclasses.fields(Metrics)} >= {"accuracy", "macs", "latency_device"}
    recipe = Recipe(ModelRef("vgg8"), "fine", "magnitude", (layer,))
    assert recipe.with_metrics(accuracy=0.5).metrics == Metrics(accuracy=0.5)
    assert dataclasses.asdict(recipe)["layers"][0]["name"] == "conv"
