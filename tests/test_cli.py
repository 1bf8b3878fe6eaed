import json

import pytest
import torch

from amc.cli import main
from tests.conftest import CIFAR, MODELS


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_vgg):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_vgg.state_dict(), path)
    return path


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_json(capsys):
    rc, out, _ = run_cli(capsys, "info", MODELS / "resnet20_dense.pt", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["summary"]["params"] == 272_474 and len(info["layers"]) == 22


@pytest.mark.parametrize(("argv", "message"), [
    (["info", "/no/such.pt", "--model", "vgg8"], "checkpoint not found"),
    (["info", MODELS / "resnet20_dense.pt", "--model", "vgg8"], "another architecture"),
    (["info", MODELS / "resnet20_dense.pt", "--data", "/no/such/data"], "data path does not exist"),
    (["prune", MODELS / "resnet20_dense.pt", "--policy", "/no/policy.yaml"], "policy file not found"),
    (["prune", MODELS / "resnet20_dense.pt"], "give exactly one of"),
    (["sensitivity", MODELS / "resnet20_dense.pt", "--sparsities", "0.5,1.5"], "sparsities must be in"),
    (["prune", MODELS / "resnet20_dense.pt", "--global-sparsity", "0.5", "--distill", "1.5"],
     "--distill is a weight in [0, 1]"),
    (["prune", MODELS / "resnet20_dense.pt", "--granularity", "channel", "--distill", "nan"],
     "--distill is a weight in [0, 1]"),
    (["compress", MODELS / "resnet20_dense.pt", "--distill", "-0.5"], "distill weight in [0, 1]"),
])
def test_bad_input_gives_one_line_and_exit_2(capsys, argv, message):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_policy_layer(capsys, tmp_path):
    pol = tmp_path / "p.yaml"
    pol.write_text("layer1.0.conv9: 0.5\n")
    rc, _, err = run_cli(capsys, "prune", MODELS / "resnet20_dense.pt", "--policy", pol, "--data", CIFAR,
                         "--eval-limit", "64", "--out", tmp_path / "o")
    assert rc == 2 and "not in the model" in err


def test_prune_finetune_with_distillation(capsys, tmp_path):
    out = tmp_path / "run"
    rc, stdout, _ = run_cli(capsys, "prune", MODELS / "resnet20_dense.pt", "--global-sparsity", "0.6",
                            "--data", CIFAR, "--heldout", "256", "--eval-limit", "128", "--finetune-epochs", "0.006",
                            "--distill", "0.5", "--out", out)
    assert rc == 0, stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distill"] == 0.5 and "accuracy_after_finetune" in summary
    assert summary["size_fraction_after_finetune"] == pytest.approx(summary["size_fraction"])  # masks held


def test_prune_size_target_end_to_end(capsys, tmp_path):
    out = tmp_path / "run"
    rc, stdout, _ = run_cli(capsys, "prune", MODELS / "resnet20_dense.pt", "--size", "0.5", "--data", CIFAR,
                            "--heldout", "256", "--sparsities", "0.5,0.8,0.9", "--eval-limit", "256",
                            "--finetune-epochs", "0.005", "--out", out)
    assert rc == 0, stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["size_fraction"] <= 0.5
    assert summary["size_fraction_after_finetune"] == summary["size_fraction"]  # masks held
    assert (out / "model.safetensors").stat().st_size > 0 and (out / "policy.yaml").exists()
    assert (out / "sensitivity.csv").exists()
    # the automatic picker checked its candidates jointly and kept the best-scoring one
    cands = summary["candidates"]
    assert [c["candidate"] for c in cands] == ["curves", "curves_loss", "global", "lamp"]
    chosen = [c for c in cands if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["score"] == max(c["score"] for c in cands)
    assert f"picked {chosen[0]['candidate']}" in stdout
    assert (out / "candidates.csv").exists()


def test_progress_prints_plain_lines_off_a_terminal(capsys):
    from amc.commands.common import progress

    with progress("finetune", every_s=1e9) as advance:  # stderr is captured: not a terminal
        for step in range(1, 21):
            advance(completed=step, total=20, info=f"loss {1 / step:.3f}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10  # one per tenth, no repeat at the end
    assert lines[0].startswith("finetune 2/20 (10%) ") and lines[0].endswith("loss 0.500")
    assert lines[-1].startswith("finetune 20/20 (100%) ")

    with progress("scan", every_s=0) as advance:  # no total: a line per step when every_s allows
        advance()
        advance(2)
    assert [ln.split()[1] for ln in capsys.readouterr().err.splitlines()] == ["1/?", "3/?"]

    with progress("rebuild", total=100, every_s=1e9) as advance:
        advance(5)  # below the first tenth: nothing yet, one line when the work ends
    assert capsys.readouterr().err.splitlines()[0].startswith("rebuild 5/100 (5%) ")
