"""torch.nn.utils.prune interop: import, export, recipes; the round trip is exact."""

import copy

import pytest
import torch
from torch.nn.utils import prune

from amc.errors import CheckpointError, PolicyError
from amc.layers import prunable_names
from amc.models import build_model
from amc.recipe import RecipeError
from amc.torch_prune import (
    apply_masks_as_torch_prune,
    import_masks,
    load_pruned_state,
    recipe_as_torch_prune,
    recipe_from_masks,
)
from tests.conftest import make_tiny_vgg


def _global_unstructured(model, amount):
    params = [(model.get_submodule(n), "weight") for n in prunable_names(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return model


def test_import_a_global_unstructured_model_and_export_it_back_exactly(tmp_path):
    model = _global_unstructured(make_tiny_vgg(), 0.6)
    x = torch.randn(4, 3, 32, 32)
    plain, masks = import_masks(model)
    assert set(masks) == set(prunable_names(model))
    assert not any(hasattr(m, "weight_orig") for m in plain.modules())
    assert torch.equal(plain(x), model(x))
    back = apply_masks_as_torch_prune(plain, masks)
    for name, mask in masks.items():
        mod = back.get_submodule(name)
        assert torch.equal(mod.weight_mask.bool(), mask)
        assert torch.equal(mod.weight, model.get_submodule(name).weight)
    again, masks2 = import_masks(back)
    assert all(torch.equal(masks[n], masks2[n]) for n in masks)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), plain.state_dict().values(), strict=True))
    # the same from a saved state dict (weights_only)
    path = tmp_path / "pruned.pt"
    torch.save(model.state_dict(), path)
    fresh = make_tiny_vgg()
    masks3 = load_pruned_state(fresh, path)
    assert all(torch.equal(masks[n], masks3[n]) for n in masks)
    assert torch.equal(fresh(x), model(x))


def test_global_unstructured_masks_become_a_recipe_that_rebuilds_them(tmp_path):
    torch.manual_seed(0)
    dense = build_model("resnet20").eval()
    ckpt = tmp_path / "resnet20.pt"
    torch.save(dense.state_dict(), ckpt)
    pruned = _global_unstructured(copy.deepcopy(dense), 0.7)
    _, masks = import_masks(pruned)
    recipe = recipe_from_masks("resnet20", ckpt, masks)
    as_tp = recipe_as_torch_prune(recipe, dense)
    for n, m in masks.items():
        assert torch.equal(as_tp.get_submodule(n).weight_mask.bool(), m)
        assert torch.equal(as_tp.get_submodule(n).weight_orig, dense.get_submodule(n).weight)
    random_masks = {n: torch.rand_like(m, dtype=torch.float) > 0.5 for n, m in masks.items()}
    with pytest.raises(RecipeError, match="not the magnitude masks"):
        recipe_from_masks("resnet20", ckpt, random_masks)


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(PolicyError, match=r"no torch.nn.utils.prune masks"):
        import_masks(make_tiny_vgg())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pruned_state(make_tiny_vgg(), bad)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pruned_state(make_tiny_vgg(), {"x.weight": torch.zeros(1)})
    with pytest.raises(PolicyError, match="mask shaped"):
        first = prunable_names(make_tiny_vgg())[0]
        apply_masks_as_torch_prune(make_tiny_vgg(), {first: torch.ones(2, dtype=torch.bool)})
