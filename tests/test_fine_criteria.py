"""Fine-grained OBD and SynFlow in the evaluator (so in both searchers) and in recipes (stored masks)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from amc.budget import Budget
from amc.cli import main
from amc.errors import AmcError, PolicyError
from amc.evaluator import EvalConfig, Evaluator
from amc.importance import masks_from_scores, prune_by_criterion, synflow_scores
from amc.layers import layer_weight
from amc.recipe import MASKS_SUFFIX, RecipeError, apply_to_model, load_recipe, make_recipe, save_recipe
from tests.conftest import CIFAR, MODELS, make_tiny_vgg

CALIB = 128  # two batches of 64: the Fisher of the obd tests


def _ev(splits, criterion: str, size: float = 0.3) -> Evaluator:
    cfg = EvalConfig(calib_images=CALIB, batch_size=64, criterion=criterion, upper=0.99)
    return Evaluator(make_tiny_vgg(), splits, Budget("size", size), cfg)


def _calib(splits):  # the evaluator's first 4 calibration batches: train, in order, not augmented
    return [b for b in splits.loader("train", 64, limit=CALIB, shuffle=False, augment=False)][:4]


def _differs(a, b) -> bool:
    return any(not torch.equal(a[n], b[n]) for n in a)


def test_evaluator_obd_masks_equal_the_one_shot_obd_pruner(tiny_splits):
    ev = _ev(tiny_splits, "obd")
    model = make_tiny_vgg()
    masks, policy = prune_by_criterion(model, 0.3, "obd", names=ev.names, loader=_calib(tiny_splits), batches=4)
    got = ev.fine_masks(ev.check(policy))
    assert set(got) == set(masks)
    for n in masks:
        assert torch.equal(got[n], masks[n]), n
    # not magnitude under another name: the same ratios by |w| choose other weights
    assert _differs(_ev(tiny_splits, "magnitude").fine_masks(ev.check(policy)), masks)
    res = ev.evaluate(policy)
    assert res.feasible and res.size <= 0.3 + 1e-6


def test_evaluator_synflow_masks_rank_by_synflow_scores(tiny_splits):
    ev = _ev(tiny_splits, "synflow")
    model = make_tiny_vgg()
    scores = synflow_scores(model, ev.names)
    masks = masks_from_scores(model, scores, size=0.3)
    policy = {n: 1.0 - int(m.sum()) / m.numel() for n, m in masks.items()}
    got = ev.fine_masks(ev.check(policy))
    assert all(torch.equal(got[n], masks[n]) for n in masks)
    assert _differs(_ev(tiny_splits, "l2").fine_masks(ev.check(policy)), masks)  # l2 = magnitude for weights


def test_fine_obd_recipe_reapplies_bit_for_bit_without_data(tiny_splits, tmp_path):
    ev = _ev(tiny_splits, "obd")
    policy = ev.projector.project({n: 0.7 for n in ev.names})
    masks = ev.fine_masks(policy)
    dense = make_tiny_vgg()
    recipe = make_recipe("VGG", None, policy, "fine", "obd", model=dense, masks=masks)
    path = save_recipe(recipe, tmp_path / "r.yaml")
    side = tmp_path / ("r" + MASKS_SUFFIX)
    assert side.is_file() and not list(tmp_path.glob("*.tmp*"))
    doc = yaml.safe_load(path.read_text())
    assert doc["criterion"] == "obd" and doc["masks"]["file"] == side.name
    loaded = load_recipe(path)
    model, again = apply_to_model(loaded, make_tiny_vgg())  # no data: the stored masks
    assert set(again) == set(masks)
    for n, m in masks.items():
        assert torch.equal(again[n].cpu(), m.cpu()), n
        w = layer_weight(model, n)
        assert torch.equal(w[~m], torch.zeros_like(w[~m]))
        assert torch.equal(w[m], layer_weight(dense, n)[m])
    assert _differs(masks, _ev(tiny_splits, "magnitude").fine_masks(policy))
    # saved again (as `amc apply` does), it still loads and re-applies the same masks
    again2 = apply_to_model(load_recipe(save_recipe(loaded, tmp_path / "out" / "recipe.yaml")), dense)[1]
    assert all(torch.equal(again2[n], masks[n]) for n in masks)


def test_stored_masks_are_checked(tiny_splits, tmp_path):
    ev = _ev(tiny_splits, "obd")
    policy = ev.projector.project({n: 0.7 for n in ev.names})
    masks = ev.fine_masks(policy)
    dense = make_tiny_vgg()
    path = save_recipe(make_recipe("VGG", None, policy, "fine", "obd", model=dense, masks=masks), tmp_path / "r.yaml")
    side = tmp_path / ("r" + MASKS_SUFFIX)
    data = bytearray(side.read_bytes())
    data[-1] ^= 1
    side.write_bytes(bytes(data))
    with pytest.raises(RecipeError, match="sha256"):
        load_recipe(path)
    side.unlink()
    with pytest.raises(RecipeError, match="missing"):
        load_recipe(path)
    # the masks must name the policy's layers and zero its ratios
    with pytest.raises(PolicyError, match="zeroes"):
        make_recipe("VGG", None, {n: 0.1 for n in policy}, "fine", "obd", model=dense, masks=masks)


def test_the_old_error_is_gone_and_unknown_criteria_fail_clearly(tiny_splits):
    dense = make_tiny_vgg()
    ev = _ev(tiny_splits, "synflow")
    policy = ev.projector.project({n: 0.5 for n in ev.names})
    recipe = make_recipe("VGG", None, policy, "fine", "synflow", model=dense, masks=ev.fine_masks(policy))
    assert recipe.criterion == "synflow"  # accepted (was: "fine recipes rebuild by magnitude")
    with pytest.raises(RecipeError, match="stored masks"):  # obd without its masks cannot be re-applied
        make_recipe("VGG", None, policy, "fine", "obd", model=dense)
    with pytest.raises(RecipeError, match="unknown fine-grained criterion 'foo'"):
        make_recipe("VGG", None, policy, "fine", "foo", model=dense)
    with pytest.raises(RecipeError, match="nm recipes rebuild by magnitude"):
        make_recipe("VGG", None, policy, "nm", "obd", model=dense)
    for bad in ("foo", "apoz", "taylor"):
        with pytest.raises(PolicyError, match="does not rank single weights") as e:
            EvalConfig(granularity="fine", criterion=bad)
        assert isinstance(e.value, AmcError) and "\n" not in str(e.value)


def test_search_cli_accepts_obd_for_fine_and_rejects_unknown(capsys, tmp_path):
    ckpt = MODELS / "resnet20_dense.pt"
    if not ckpt.exists() or not CIFAR.exists():
        pytest.skip("shared checkpoint or data missing")
    argv = ["search", str(ckpt), "--method", "optuna", "--budget", "size=0.5", "--granularity", "fine",
            "--criterion", "obd", "--episodes", "2", "--heldout", "128", "--calib-images", "128", "--eval-images",
            "128", "--sens-ratios", "", "--rerank", "0", "--data", str(CIFAR), "--device", "cpu",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["criterion"] == "obd" and summary["best"]["feasible"]
    capsys.readouterr()
    argv[argv.index("obd")] = "nonsense"
    argv[-1] = str(tmp_path / "run2")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "nonsense" in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.slow  # a whole (tiny) compress run: about a minute on a 2-core CPU
def test_compress_with_fine_obd_writes_a_recipe_that_reapplies(tmp_path, tiny_splits):
    from amc.models import build_model
    from amc.pipeline import CompressConfig, compress
    from amc.recipe import apply_recipe

    torch.manual_seed(0)
    ckpt = tmp_path / "r20.pt"
    torch.save(build_model("resnet20").state_dict(), ckpt)
    cfg = CompressConfig(budget="size=0.4", method="sensitivity", criterion="obd", finetune_epochs=0.0,
                         calib_images=128, eval_images=128, test_limit=128, latency_runs=2,
                         sparsities=(0.9,), batch_size=128, onnx=False)
    compress(ckpt, "resnet20", tiny_splits, cfg, tmp_path / "run")
    path = tmp_path / "run" / "recipe.yaml"
    assert (tmp_path / "run" / ("recipe" + MASKS_SUFFIX)).is_file()
    recipe = load_recipe(path, checkpoint=ckpt)
    assert recipe.criterion == "obd" and recipe.masks is not None
    _, masks = apply_recipe(recipe, ckpt)  # the hashes are checked against the stored masks
    assert all(torch.equal(masks[n], recipe.masks[n]) for n in masks)
