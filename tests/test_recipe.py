"""Recipes: round trips that rebuild bit for bit, and one clear error per validation problem."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from amc.budget import Budget
from amc.errors import AmcError, BudgetError, CheckpointError, PolicyError
from amc.layers import prunable_names
from amc.pruners.schedule import IterativeSchedule
from amc.recipe import (
    FinetuneSpec,
    Metrics,
    RecipeError,
    SearchInfo,
    apply_recipe,
    load_recipe,
    make_recipe,
    mask_sha256,
    save_recipe,
    stable_magnitude_mask,
    stable_nm_mask,
)
from tests.conftest import make_tiny_resnet, make_tiny_vgg

POLICY = {"backbone.conv0": 0.3, "backbone.conv1": 0.6, "backbone.conv2": 0.75, "classifier": 0.5}


def _ckpt(tmp_path: Path, model: torch.nn.Module, name: str = "dense.pt") -> Path:
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def _fp16_ckpt(tmp_path: Path) -> Path:
    """Like the shared checkpoints: weights stored in fp16, so many magnitudes are exactly equal."""
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in make_tiny_vgg().state_dict().items()}
    path = tmp_path / "dense16.pt"
    torch.save(sd, path)
    return path


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _tiny_loader(n_batches: int = 2, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


@pytest.fixture
def fine_recipe(tmp_path: Path):
    ckpt = _fp16_ckpt(tmp_path)
    recipe = make_recipe("vgg8", ckpt, POLICY, budget=Budget("size", 0.5),
                         search=SearchInfo("optuna", 20, 3), metrics=Metrics(accuracy=0.5, latency_ms=1.25,
                                                                             latency_device="cpu 1 thread"))
    return recipe, ckpt


@pytest.fixture(autouse=True)
def _tiny_vgg8(monkeypatch):
    """Make the name ``vgg8`` build the tiny VGG so recipes can name a zoo architecture cheaply."""
    from amc import models

    monkeypatch.setitem(models.MODELS, "vgg8", lambda num_classes=10: make_tiny_vgg())
    monkeypatch.setitem(models.MODELS, "resnet8", lambda num_classes=10: make_tiny_resnet())


def test_stable_mask_breaks_ties_by_index():
    w = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.9, -0.1])
    mask = stable_magnitude_mask(w, 0.5)  # 3 of 6 go: the first three 0.1s by index
    assert mask.tolist() == [True, False, False, False, True, True]
    nm = stable_nm_mask(torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.2, 0.3, -0.3, 0.1]]), 2, 4)
    assert nm.tolist() == [[True, True, False, False, False, True, True, False]]


def test_fine_round_trip_bit_identical(tmp_path, fine_recipe):
    recipe, ckpt = fine_recipe
    path = save_recipe(recipe, tmp_path / "recipe.yaml")
    loaded = load_recipe(path, checkpoint=ckpt)
    assert loaded == recipe
    model_a, masks_a = apply_recipe(loaded, ckpt)
    model_b, _ = apply_recipe(load_recipe(path), ckpt)
    assert _same_state(model_a, model_b)
    # the reference: dense weights times a mask built independently of the recipe code's path
    ref = make_tiny_vgg()
    ref.load_state_dict({k: v.float() for k, v in torch.load(ckpt, weights_only=True).items()})
    for name, ratio in POLICY.items():
        w = ref.get_submodule(name).weight
        assert torch.equal(masks_a[name], stable_magnitude_mask(w, ratio))
        zeros = int((model_a.get_submodule(name).weight == 0).sum())
        assert zeros == round(ratio * w.numel())
        with torch.no_grad():
            w.mul_(masks_a[name])
    assert _same_state(model_a, ref)


def test_yaml_is_readable_and_versioned(tmp_path, fine_recipe):
    recipe, _ = fine_recipe
    text = save_recipe(recipe, tmp_path / "r.yaml").read_text()
    data = yaml.safe_load(text)
    assert data["format_version"] == 2
    assert data["model"]["arch"] == "vgg8" and len(data["model"]["checkpoint_sha256"]) == 64
    assert "data" in data
    assert [la["name"] for la in data["layers"]] == list(POLICY)
    assert data["budget"] == {"kind": "size", "fraction": 0.5}
    assert data["search"] == {"method": "optuna", "episodes": 20, "seed": 3}
    assert data["metrics"]["latency_device"] == "cpu 1 thread"


def test_version_1_files_still_read_and_apply(tmp_path, fine_recipe):
    recipe, ckpt = fine_recipe
    data = yaml.safe_load(save_recipe(recipe, tmp_path / "r.yaml").read_text())
    data["format_version"] = 1
    del data["data"]  # version 1 had no data section
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(data))
    old = load_recipe(tmp_path / "v1.yaml", checkpoint=ckpt)
    assert old.format_version == 1 and old.data is None
    assert _same_state(apply_recipe(old, ckpt)[0], apply_recipe(recipe, ckpt)[0])
    assert "data" not in yaml.safe_load(save_recipe(old, tmp_path / "again.yaml").read_text())


def test_nm_round_trip(tmp_path):
    ckpt = _ckpt(tmp_path, make_tiny_vgg())
    names = ["backbone.conv1", "backbone.conv2", "classifier"]  # conv0 has 3 inputs: not a multiple of 4
    recipe = make_recipe("vgg8", ckpt, dict.fromkeys(names, 0.5), granularity="nm", nm=(2, 4))
    loaded = load_recipe(save_recipe(recipe, tmp_path / "nm.yaml"), checkpoint=ckpt)
    model, masks = apply_recipe(loaded, ckpt)
    again, _ = apply_recipe(loaded, ckpt)
    assert _same_state(model, again)
    for name in names:
        m = masks[name]
        groups = (m.permute(0, 2, 3, 1) if m.ndim == 4 else m).reshape(-1, 4)
        assert bool((groups.sum(1) == 2).all())


def test_channel_round_trip(tmp_path):
    channel = pytest.importorskip("amc.pruners.channel")
    model = make_tiny_resnet()
    ckpt = _ckpt(tmp_path, model)
    example = torch.randn(2, 3, 32, 32)
    policy = dict.fromkeys([n for n in prunable_names(model) if n != "fc"], 0.5)
    plan = channel.plan_channels(model, policy, round_to=4, example_inputs=example)
    recipe = make_recipe("resnet8", ckpt, policy, granularity="channel", criterion="l2", kept=plan, round_to=4)
    loaded = load_recipe(save_recipe(recipe, tmp_path / "ch.yaml"), checkpoint=ckpt)
    assert loaded == recipe
    rebuilt, masks = apply_recipe(loaded, ckpt)
    assert masks == {}
    direct = channel.prune_channels(copy.deepcopy(model), plan, example)
    assert _same_state(rebuilt, direct)
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(rebuilt(x), direct.eval()(x))


# ------------------------------------------------------------------------------- validation errors


def _mutate(data: dict, how: str) -> str | dict:
    d = copy.deepcopy(data)
    if how == "unknown_layer":
        d["layers"][0]["name"] = "backbone.conv99"
    elif how == "ratio_high":
        d["layers"][1]["ratio"] = 1.5
    elif how == "ratio_negative":
        d["layers"][1]["ratio"] = -0.1
    elif how == "ratio_text":
        d["layers"][1]["ratio"] = "half"
    elif how == "version":
        d["format_version"] = 3
    elif how == "missing_granularity":
        del d["granularity"]
    elif how == "missing_arch":
        del d["model"]["arch"]
    elif how == "unknown_field":
        d["finetune"]["epoch"] = 3
    elif how == "granularity":
        d["granularity"] = "blocks"
    elif how == "budget":
        d["budget"]["fraction"] = 1.5
    elif how == "duplicate_layer":
        d["layers"][1]["name"] = d["layers"][0]["name"]
    elif how == "distill":
        d["finetune"]["distill"] = 1.5
    elif how == "iterative_kind":
        d["finetune"]["iterative"] = {"kind": "exp", "steps": 3}
    elif how == "not_mapping":
        return "- just\n- a list\n"
    elif how == "malformed":
        return "format_version: 1\nmodel: {arch: vgg8\n  layers: [\n"
    return d


@pytest.mark.parametrize(("how", "error", "words"), [
    ("unknown_layer", PolicyError, "backbone.conv99"),
    ("ratio_high", PolicyError, "outside [0, 1)"),
    ("ratio_negative", PolicyError, "outside [0, 1)"),
    ("ratio_text", RecipeError, "ratio must be float"),
    ("version", RecipeError, "format_version 3"),
    ("missing_granularity", RecipeError, "missing field 'granularity'"),
    ("missing_arch", RecipeError, "missing field 'arch'"),
    ("unknown_field", RecipeError, "unknown field 'epoch'"),
    ("granularity", RecipeError, "unknown granularity 'blocks'"),
    ("budget", BudgetError, "(0, 1]"),
    ("duplicate_layer", PolicyError, "appears twice"),
    ("iterative_kind", RecipeError, "'exp' unknown"),
    ("distill", RecipeError, "finetune.distill is a weight in [0, 1]"),
    ("not_mapping", RecipeError, "must be a mapping"),
    ("malformed", RecipeError, "not valid YAML"),
])
def test_each_validation_error(tmp_path, fine_recipe, how, error, words):
    recipe, _ = fine_recipe
    data = yaml.safe_load(save_recipe(recipe, tmp_path / "good.yaml").read_text())
    bad = _mutate(data, how)
    path = tmp_path / "bad.yaml"
    path.write_text(bad if isinstance(bad, str) else yaml.safe_dump(bad))
    with pytest.raises(error) as info:
        load_recipe(path)
    assert isinstance(info.value, AmcError)
    assert words in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_checkpoint_hash_mismatch_and_force(tmp_path, fine_recipe):
    recipe, _ = fine_recipe
    path = save_recipe(recipe, tmp_path / "r.yaml")
    other = make_tiny_vgg()
    with torch.no_grad():
        other.classifier.weight.add_(1.0)
    other_ckpt = _ckpt(tmp_path, other, "other.pt")
    with pytest.raises(CheckpointError, match="--force"):
        load_recipe(path, checkpoint=other_ckpt)
    with pytest.raises(CheckpointError, match="sha256"):
        apply_recipe(recipe, other_ckpt)
    model, _ = apply_recipe(load_recipe(path, checkpoint=other_ckpt, force=True), other_ckpt, force=True)
    assert float((model.classifier.weight == 0).float().mean()) == pytest.approx(0.5)


def test_mask_hash_mismatch_is_caught(tmp_path, fine_recipe):
    recipe, ckpt = fine_recipe
    data = yaml.safe_load(save_recipe(recipe, tmp_path / "r.yaml").read_text())
    data["layers"][2]["mask_sha256"] = mask_sha256(torch.ones(3, dtype=torch.bool))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"backbone\.conv2"):
        apply_recipe(load_recipe(tmp_path / "t.yaml"), ckpt)


def test_missing_files(tmp_path, fine_recipe):
    recipe, _ = fine_recipe
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(CheckpointError, match="not found"):
        apply_recipe(recipe, tmp_path / "nope.pt")


@pytest.mark.parametrize("iterative", [None, IterativeSchedule("agp", steps=2, epochs_per_step=0.5)])
def test_apply_with_finetune_keeps_masks_and_is_repeatable(tmp_path, iterative):
    ckpt = _ckpt(tmp_path, make_tiny_vgg())
    spec = FinetuneSpec(epochs=1.0, lr=0.01, seed=1, iterative=iterative)
    recipe = make_recipe("vgg8", ckpt, POLICY, finetune=spec)
    loaded = load_recipe(save_recipe(recipe, tmp_path / "r.yaml"))
    assert loaded.finetune == spec
    model, masks = apply_recipe(loaded, ckpt, loader=_tiny_loader())
    again, _ = apply_recipe(loaded, ckpt, loader=_tiny_loader())
    assert _same_state(model, again)  # seeded: same on the same machine
    dense = make_tiny_vgg()
    for name, ratio in POLICY.items():
        w = model.get_submodule(name).weight
        assert not torch.equal(w, dense.get_submodule(name).weight * masks[name])  # it trained
        assert bool((w[~masks[name]] == 0).all())
        assert int((~masks[name]).sum()) == round(ratio * w.numel())


def test_recipe_without_distill_reads_as_labels_only(tmp_path, fine_recipe):
    recipe, _ = fine_recipe
    data = yaml.safe_load(save_recipe(recipe, tmp_path / "r.yaml").read_text())
    assert data["finetune"]["distill"] == 0.0  # written
    del data["finetune"]["distill"]  # a recipe written before the key existed
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    assert load_recipe(tmp_path / "old.yaml") == recipe


@pytest.mark.parametrize("iterative", [None, IterativeSchedule("agp", steps=2, epochs_per_step=0.5)])
def test_apply_with_distillation_uses_the_dense_teacher(tmp_path, iterative):
    ckpt = _ckpt(tmp_path, make_tiny_vgg())
    spec = FinetuneSpec(epochs=1.0, lr=0.01, seed=1, iterative=iterative, distill=0.7)
    recipe = make_recipe("vgg8", ckpt, POLICY, finetune=spec)
    loaded = load_recipe(save_recipe(recipe, tmp_path / "r.yaml"))
    assert loaded.finetune == spec and loaded.finetune.config().distill_weight == 0.7
    model, masks = apply_recipe(loaded, ckpt, loader=_tiny_loader())
    again, _ = apply_recipe(loaded, ckpt, loader=_tiny_loader())
    assert _same_state(model, again)  # seeded, teacher included
    plain, _ = apply_recipe(replace(loaded, finetune=replace(spec, distill=0.0)), ckpt, loader=_tiny_loader())
    assert not _same_state(model, plain)  # the teacher's soft targets changed the training
    for name in POLICY:
        assert bool((model.get_submodule(name).weight[~masks[name]] == 0).all())


def test_channel_apply_with_distillation(tmp_path):
    channel = pytest.importorskip("amc.pruners.channel")
    model = make_tiny_resnet()
    ckpt = _ckpt(tmp_path, model)
    policy = dict.fromkeys([n for n in prunable_names(model) if n != "fc"], 0.5)
    plan = channel.plan_channels(model, policy, round_to=4, example_inputs=torch.randn(2, 3, 32, 32))
    spec = FinetuneSpec(epochs=1.0, lr=0.01, seed=0, distill=0.5)
    recipe = make_recipe("resnet8", ckpt, policy, granularity="channel", criterion="l2", kept=plan, round_to=4,
                         finetune=spec)
    small, _ = apply_recipe(load_recipe(save_recipe(recipe, tmp_path / "ch.yaml")), ckpt, loader=_tiny_loader())
    plain, _ = apply_recipe(replace(recipe, finetune=replace(spec, distill=0.0)), ckpt, loader=_tiny_loader())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert not _same_state(small, plain)  # the dense teacher changed the training


# ------------------------------------------------------------------------------- the amc apply command


def _image_folder(root: Path, train_per_class: int = 6, test_per_class: int = 2) -> Path:
    """A tiny CIFAR-10-shaped ImageFolder of random 32x32 PNGs."""
    import numpy as np
    from PIL import Image

    from amc.data import CLASSES

    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_cli_apply_writes_model_files(tmp_path, fine_recipe, capsys):
    from amc.cli import main
    from amc.export.files import load_sparse

    recipe, ckpt = fine_recipe
    path = save_recipe(recipe, tmp_path / "r.yaml")
    out = tmp_path / "out"
    assert main(["apply", str(path), "--checkpoint", str(ckpt), "--out", str(out), "--dtype", "fp32"]) == 0
    assert str(out) in capsys.readouterr().out
    expected, _ = apply_recipe(recipe, ckpt)
    loaded = load_sparse(out / "model.sparse.safetensors")
    assert _same_state(loaded, expected)
    written = load_recipe(out / "recipe.yaml")
    assert written.layers == recipe.layers
    assert written.metrics.file_bytes == (out / "model.sparse.safetensors").stat().st_size
    assert written.metrics.size_fraction is not None and written.metrics.size_fraction < 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["sparse_bytes"] == written.metrics.file_bytes
    assert {"rebuild", "export", "total"} <= set(summary["times_s"])


def test_cli_apply_finetunes_and_evaluates(tmp_path, monkeypatch, capsys):
    from amc.cli import main

    monkeypatch.setenv("AMC_CACHE", str(tmp_path / "cache"))
    data = _image_folder(tmp_path / "data")
    ckpt = _ckpt(tmp_path, make_tiny_vgg())
    recipe = make_recipe("vgg8", ckpt, POLICY, finetune=FinetuneSpec(epochs=1.0, batch_size=16))
    path = save_recipe(recipe, tmp_path / "r.yaml")
    out = tmp_path / "out"
    rc = main(["apply", str(path), "--checkpoint", str(ckpt), "--out", str(out), "--finetune", "--evaluate",
               "--data", str(data), "--heldout", "10", "--device", "cpu", "--batch-size", "16", "--epochs", "0.5"])
    assert rc == 0
    assert "accuracy" in capsys.readouterr().out
    written = load_recipe(out / "recipe.yaml")
    assert written.finetune.epochs == 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert {"rebuild", "evaluate_rebuilt", "finetune", "evaluate_dense"} <= set(summary["times_s"])
    for value in (written.metrics.dense_accuracy, written.metrics.accuracy_before_finetune,
                  written.metrics.accuracy):
        assert value is not None and 0.0 <= value <= 1.0


def test_cli_apply_errors_are_one_line(tmp_path, fine_recipe, capsys):
    from amc.cli import main

    recipe, _ = fine_recipe
    path = save_recipe(recipe, tmp_path / "r.yaml")
    other = _ckpt(tmp_path, make_tiny_resnet(), "other.pt")
    assert main(["apply", str(path), "--checkpoint", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amc apply: error:") and "--force" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("how", "words"), [
    (lambda d: d["layers"][0].update(kept=[1, True]), "recipe.layers[0].kept must be a list of ints"),
    (lambda d: d["model"].update(num_classes=None), "recipe.model.num_classes must be int, got None"),
    (lambda d: d.update(model=[1]), "recipe.model must be a mapping, got list"),
    (lambda d: d["model"].update(width=2), "recipe.model: unknown field 'width' (known: arch, checkpoint_sha256"),
    (lambda d: d["metrics"].update(params=1.5), "recipe.metrics.params must be int, got 1.5"),
    (lambda d: d.update(format_version="2"), "unknown recipe format_version '2'"),
])
def test_schema_errors_name_the_place(tmp_path, fine_recipe, how, words):
    """The schema (pydantic, strict, no unknown fields) reports the first problem where it is."""
    recipe, _ = fine_recipe
    data = yaml.safe_load(save_recipe(recipe, tmp_path / "good.yaml").read_text())
    data.setdefault("metrics", {})
    how(data)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "bad.yaml")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_version_1_needs_its_checkpoint_hash_and_has_no_data(tmp_path, fine_recipe):
    recipe, _ = fine_recipe
    data = yaml.safe_load(save_recipe(recipe, tmp_path / "good.yaml").read_text())
    data["format_version"] = 1
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="unknown field 'data'"):
        load_recipe(tmp_path / "v1.yaml")
    del data["data"]
    del data["model"]["checkpoint_sha256"]
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="missing field 'checkpoint_sha256'"):
        load_recipe(tmp_path / "v1.yaml")
