"""``amc lottery``, ``amc slim``, ``amc scratch`` on a small slice of the shared data."""

import json

import pytest
import torch

from amc.cli import main
from tests.conftest import CIFAR, MODELS

R20 = MODELS / "resnet20_dense.pt"
FAST = ["--data", CIFAR, "--heldout", "64", "--batch-size", "32", "--train-limit", "64", "--eval-limit", "64"]


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_lottery_and_its_control(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "lottery", R20, "--size", "0.5", "--rounds", "2", "--rewind-steps", "0",
                           "--epochs", "1", "--control", *FAST, "--out", tmp_path)
    assert rc == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert len(s["sparsities"]) == 2 and s["ticket"]["size_fraction"] <= 0.5 + 1e-6
    assert 0 <= s["random_reinit"]["accuracy"] <= 1 and "random reinit" in out
    blob = torch.load(tmp_path / "ticket.pt", weights_only=True)
    assert set(blob) == {"state_dict", "masks"}


def test_slim_then_scratch_of_its_architecture(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "slim", R20, "--macs", "0.5", "--penalty", "1e-3", "--epochs", "1",
                           "--finetune-epochs", "1", *FAST, "--out", tmp_path / "slim")
    assert rc == 0, err
    s = json.loads((tmp_path / "slim" / "summary.json").read_text())
    assert s["macs_fraction"] <= 0.5 and "accuracy" in s
    from amc.pruners.channel import ChannelPlan
    from amc.recipe import make_recipe

    plan = ChannelPlan.load(tmp_path / "slim" / "plan.json")
    make_recipe("resnet20", R20, granularity="channel", criterion="bn", kept=plan).save(tmp_path / "r.yaml")
    rc, _, err = run_cli(capsys, "scratch", tmp_path / "r.yaml", "--epochs", "1", *FAST, "--out", tmp_path / "sc")
    assert rc == 0, err
    sc = json.loads((tmp_path / "sc" / "summary.json").read_text())
    small = torch.load(tmp_path / "slim" / "model.pt", weights_only=True)["state_dict"]
    assert sc["params"] == sum(v.numel() for k, v in small.items() if "running" not in k and "num_batches" not in k)


def test_prune_with_a_weight_criterion(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "prune", R20, "--size", "0.3", "--weight-criterion", "obd", "--data", CIFAR,
                         "--heldout", "64", "--batch-size", "32", "--eval-limit", "64", "--out", tmp_path)
    assert rc == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["weight_criterion"] == "obd" and s["size_fraction"] <= 0.3 + 1e-6


@pytest.mark.parametrize(("argv", "message"), [
    (["lottery", R20, "--size", "1.5"], "--size must be in (0, 1)"),
    (["lottery", R20, "--size", "0.5", "--rounds", "0"], "--rounds must be >= 1"),
    (["lottery", R20, "--size", "0.5", "--epochs", "-1"], "--epochs must be > 0"),
    (["slim", R20, "--macs", "0"], "--macs must be in (0, 1]"),
    (["slim", R20, "--macs", "0.5", "--penalty", "-1"], "--penalty must be >= 0"),
    (["scratch", "/no/such/recipe.yaml"], "recipe not found"),
])
def test_bad_input_gives_one_line_and_exit_2(capsys, argv, message):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
