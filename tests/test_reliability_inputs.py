"""Bad inputs through the CLI (exit 2, exactly one line on stderr, no traceback) and NaN/Inf losses
inside a search (the trial fails with its reason, the search goes on, a NaN is never the best).

Only the cases no other test file covers live here; ``benchmarks/reliability.py`` also runs the
bad-input tests of ``test_models``, ``test_cli``, ``test_recipe``, ``test_export`` and
``test_train_data`` and counts every class in ``reports/reliability.md``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from amc.budget import Budget
from amc.cli import main
from amc.evaluator import EvalConfig, Evaluator, Result
from amc.layers import prunable_names
from amc.models import build_model
from tests.conftest import CIFAR, flip_bit
from tests.reliability_counts import record
from tests.reliability_worker import synthetic_splits, tiny_model


def run_cli(capsys, *argv: object) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line(rc: int, err: str, *words: str) -> None:
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def _resnet20(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(build_model("resnet20").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _resnet20(tmp_path_factory.mktemp("ckpt") / "resnet20.pt")


# -- checkpoints ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("damage", "words"), [
    ("truncated_half", ("cannot read checkpoint",)),
    ("truncated_tail", ("cannot read checkpoint",)),
    ("bit_flip_weights", ("corrupt",)),
    ("bit_flip_index", ("corrupt",)),
    ("empty_file", ("cannot read checkpoint",)),
])
def test_damaged_checkpoint_cli(tmp_path, ckpt, capsys, damage, words):
    path = tmp_path / "damaged.pt"
    data = ckpt.read_bytes()
    if damage == "truncated_half":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "truncated_tail":
        path.write_bytes(data[:-100])  # only the zip's central directory is cut: an interrupted copy
    elif damage == "bit_flip_weights":
        path.write_bytes(data)
        flip_bit(path, "data/0", 7, bit=0x01)  # a bit of the first tensor's bytes
    elif damage == "bit_flip_index":
        path.write_bytes(data)
        flip_bit(path, "data.pkl", 40, bit=0x01)  # a bit of the record that maps names to tensors
    else:
        path.write_bytes(b"")
    assert_one_line(*run_cli(capsys, "info", path, "--model", "resnet20"), *words)
    record("bad_input", f"checkpoint: {damage}", where="cli", exit=2)


# -- data paths ---------------------------------------------------------------------------------------------
def test_empty_data_folder_cli(tmp_path, ckpt, capsys):
    (tmp_path / "empty").mkdir()
    assert_one_line(*run_cli(capsys, "info", ckpt, "--model", "resnet20", "--data", tmp_path / "empty"),
                    "empty")
    record("bad_input", "data: empty folder", where="cli", exit=2)


# -- recipes ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory, ckpt) -> Path:
    from amc.recipe import make_recipe, save_recipe

    names = prunable_names(build_model("resnet20"))
    policy = {names[1]: 0.5, names[2]: 0.3, names[-1]: 0.4}  # three layers, fine-grained
    return save_recipe(make_recipe("resnet20", ckpt, policy), tmp_path_factory.mktemp("recipe") / "r.yaml")


@pytest.mark.parametrize(("how", "words"), [
    ("unknown_layer", ("layer9.0.conv1",)),
    ("ratio_above_one", ("outside [0, 1)",)),
    ("ratio_nan", ("ratio",)),
    ("wrong_version", ("format_version 7",)),
    ("wrong_model_hash", ("sha256", "--force")),
])
def test_bad_recipe_cli(tmp_path, ckpt, recipe_file, capsys, how, words):
    data = yaml.safe_load(recipe_file.read_text())
    checkpoint = ckpt
    if how == "unknown_layer":
        data["layers"][0]["name"] = "layer9.0.conv1"
    elif how == "ratio_above_one":
        data["layers"][1]["ratio"] = 1.5
    elif how == "ratio_nan":
        data["layers"][1]["ratio"] = float("nan")
    elif how == "wrong_version":
        data["format_version"] = 7
    else:
        checkpoint = _resnet20(tmp_path / "other.pt", seed=1)  # same architecture, other weights
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert_one_line(*run_cli(capsys, "apply", path, "--checkpoint", checkpoint, "--out", out), *words)
    assert not out.exists() or not any(out.iterdir())  # nothing written for a refused recipe
    record("bad_input", f"recipe: {how}", where="cli", exit=2)


# -- budgets ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["optuna", "amc"])
def test_impossible_budget_cli(tmp_path, ckpt, capsys, method):
    if not CIFAR.exists():
        pytest.skip(f"shared data set not found at {CIFAR}")
    out = tmp_path / "run"
    rc, err = run_cli(capsys, "search", ckpt, "--model", "resnet20", "--method", method, "--budget", "size=0.001",
                      "--upper", "0.9", "--granularity", "fine", "--episodes", "2", "--data", CIFAR,
                      "--heldout", "128", "--calib-images", "128", "--device", "cpu", "--out", out)
    assert_one_line(rc, err, "budget")  # at most 90% per layer cannot reach 0.1% of the size
    assert not (out / "best_policy.yaml").exists()
    record("bad_input", f"budget: size=0.001 with upper 0.9 ({method})", where="cli", exit=2)


# -- NaN / Inf losses inside a search --------------------------------------------------------------------
RECOVERY_TRAIN = 640  # 512 train images after the held-out 128: 4 recovery batches of 128
BLOWUPS = {  # learning rate and steps that wreck the finetune recovery, and the reason the result reports
    "nan_loss": (float("inf"), 5, "loss became nan"),  # step 1 makes the weights Inf/NaN: step 2's loss is NaN
    "inf_outputs": (1e30, 1, "non-finite outputs"),  # one step to huge weights: train-mode BN hides them, eval
}                                                  # mode (running statistics) gives Inf/NaN outputs


class SometimesDiverging(Evaluator):
    """The real evaluator with finetune recovery, where every other evaluation trains at a learning
    rate that blows up: the loss or the outputs really become NaN/Inf inside ``amc.train``."""

    def __init__(self, *args, blowup_lr: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.base, self.blowup_lr = self.config, blowup_lr

    def evaluate(self, policy) -> Result:
        self.config = replace(self.base, recovery_lr=self.blowup_lr if self.calls % 2 else self.base.recovery_lr)
        return super().evaluate(policy)


@pytest.fixture(params=list(BLOWUPS))
def diverging(request) -> tuple[SometimesDiverging, str]:
    lr, steps, words = BLOWUPS[request.param]
    ev = SometimesDiverging(tiny_model(), synthetic_splits(train=RECOVERY_TRAIN), Budget.parse("size=0.5"),
                            EvalConfig(calib_images=128, recovery="finetune", recovery_steps=steps), blowup_lr=lr)
    return ev, words


def test_nan_loss_fails_the_trial_and_optuna_goes_on(diverging):
    from amc.search.optuna import OptunaConfig, OptunaSearcher

    ev, words = diverging
    n = 6  # completed trials asked; every other evaluation diverges
    s = OptunaSearcher(ev, OptunaConfig(n_trials=n, enqueue_sensitivity=False, n_startup_trials=2))
    res = s.run()
    frame = res.trials
    bad = frame[frame.reason.str.contains(words)]
    assert len(bad) >= n // 2 and not bad.feasible.any()  # diverged, with the loss in the reason
    assert (bad.state == "FAIL").all() and len(bad) == (frame.state == "FAIL").sum()  # FAIL, not COMPLETE
    assert (frame.state == "COMPLETE").sum() == n  # the search went on to the asked total of complete trials
    done = [t for t in s.study.trials if t.state.name == "COMPLETE"]
    assert all(math.isfinite(v) for t in done for v in t.values)  # no NaN reaches the sampler
    assert res.best_result is not None and res.best_result.feasible and math.isfinite(res.best_result.reward)
    assert res.best_result.reason == "" and math.isfinite(res.best_result.accuracy)
    assert res.best_result.reward == pytest.approx(frame.loc[frame.feasible.astype(bool), "reward"].max())
    record("bad_input", f"diverged finetune recovery: {words} (Optuna)", where="api", diverged=len(bad),
           completed=n, best_finite=1)


def test_nan_loss_fails_the_episode_and_the_agent_goes_on(diverging, tmp_path):
    from amc.search.agent import AgentConfig, run_agent

    ev, words = diverging
    n = 4  # episodes asked: 2 of them diverge
    res = run_agent(ev, AgentConfig(episodes=n, warmup_episodes=1, batch_size=4, net_arch=(16, 16),
                                    checkpoint_every=2), tmp_path)
    eps = res.episodes
    bad = eps[eps.reason.fillna("").str.contains(words)]
    assert len(eps) == n and len(bad) == n // 2 and not bad.feasible.any()
    assert res.best_result is not None and math.isfinite(res.best_result.reward) and res.best_result.feasible
    assert res.best_result.reason == "" and math.isfinite(res.best_result.accuracy)
    assert res.best_policy is not None and all(math.isfinite(p) for p in res.best_policy.values())
    record("bad_input", f"diverged finetune recovery: {words} (AMC agent)", where="api", diverged=len(bad),
           episodes=n, best_finite=1)


# -- study storage -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["unreachable_postgres", "not_a_url", "sqlite_in_missing_folder"])
def test_bad_study_storage(tmp_path, what):
    from amc.errors import AmcError
    from amc.search.optuna import OptunaConfig, OptunaSearcher
    from tests.pg import free_port

    if what == "unreachable_postgres":
        pytest.importorskip("psycopg2", reason="the PostgreSQL driver: pip install -e '.[dev]'")
        url = f"postgresql+psycopg2://amc@127.0.0.1:{free_port()}/amc"  # nothing listens on a free port
    elif what == "not_a_url":
        url = "my study database"
    else:
        url = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'study.db'}"
    ev = Evaluator(tiny_model(), synthetic_splits(), Budget.parse("size=0.5"), EvalConfig(calib_images=128))
    with pytest.raises(AmcError) as info:
        OptunaSearcher(ev, OptunaConfig(storage=url, n_trials=1, enqueue_sensitivity=False))
    assert "\n" not in str(info.value) and "storage" in str(info.value)
    record("bad_input", f"study storage: {what}", where="api", error=type(info.value).__name__)
