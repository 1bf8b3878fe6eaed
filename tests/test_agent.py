"""The AMC agent: a short search returns a feasible policy; checkpoints resume; AMC's exploration, batch
baseline and relabelled transitions; the diagnostics of every run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from amc.budget import Budget
from amc.errors import AmcError
from amc.evaluator import EvalConfig, Evaluator
from amc.search.agent import AgentConfig, run_agent
from tests.conftest import make_tiny_vgg

TINY = dict(warmup_episodes=1, batch_size=4)  # 1 random episode, then the actor learns on 4-transition batches


def _evaluator(splits, granularity="fine"):
    if granularity == "channel":
        pytest.importorskip("amc.pruners.channel")
    budget = Budget.parse("size=0.5" if granularity == "fine" else "macs=0.6")
    return Evaluator(make_tiny_vgg(), splits, budget, EvalConfig(granularity=granularity, calib_images=256,
                                                                 round_to=1))


@pytest.mark.parametrize("algo", ["ddpg", "td3"])
@pytest.mark.parametrize("granularity", ["fine", "channel"])
def test_three_episode_search_returns_feasible_policy(tiny_splits, tmp_path, algo, granularity):
    ev = _evaluator(tiny_splits, granularity)
    res = run_agent(ev, AgentConfig(algo=algo, episodes=3, checkpoint_every=0, **TINY), tmp_path)
    assert len(res.episodes) == 3
    assert res.best_policy is not None and res.best_result is not None
    assert res.best_result.feasible
    again = ev.evaluate(res.best_policy)
    assert again.feasible and again.cost(ev.budget.kind) <= ev.budget.fraction + 1e-9
    assert res.best_result.reward == pytest.approx(res.episodes.loc[res.episodes.feasible, "reward"].max())
    csv = pd.read_csv(tmp_path / "episodes.csv")
    assert list(csv.episode) == [0, 1, 2]
    assert csv.warmup.tolist()[0] and not csv.warmup.tolist()[-1]


def test_checkpoint_and_resume(tiny_splits, tmp_path):
    ev = _evaluator(tiny_splits)
    cfg = AgentConfig(episodes=2, checkpoint_every=1, **TINY)
    first = run_agent(ev, cfg, tmp_path)
    assert (tmp_path / "agent.zip").exists() and (tmp_path / "replay.pkl").exists()
    second = run_agent(ev, AgentConfig(episodes=4, checkpoint_every=1, **TINY), tmp_path)
    assert second.resumed_from == 2
    assert list(second.episodes.episode) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(second.episodes.head(2)[["episode", "reward"]],
                                  first.episodes[["episode", "reward"]], check_dtype=False)
    assert second.best_result is not None and second.best_result.reward >= first.best_result.reward
    done = run_agent(ev, AgentConfig(episodes=4, checkpoint_every=1, **TINY), tmp_path)
    assert done.resumed_from == 4 and len(done.episodes) == 4  # nothing left to do


def test_same_seed_same_search(tiny_splits):
    ev = _evaluator(tiny_splits)
    cfg = AgentConfig(episodes=3, checkpoint_every=0, **TINY)
    a, b = run_agent(ev, cfg), run_agent(ev, cfg)
    cols = ["reward"] + [c for c in a.episodes if c.startswith("r:")]
    pd.testing.assert_frame_equal(a.episodes[cols], b.episodes[cols])


def test_bad_config():
    with pytest.raises(AmcError):
        AgentConfig(algo="ppo")
    with pytest.raises(AmcError):
        AgentConfig(episodes=0)


def test_propose_observe_interface(tiny_splits):
    import torch

    from amc.search.agent import AmcSearcher

    ev = _evaluator(tiny_splits)
    s = AmcSearcher(ev, AgentConfig(episodes=4, checkpoint_every=0, **TINY))
    before = [p.detach().clone() for p in s.model.actor.parameters()]
    for _ in range(3):
        pol = s.propose()
        assert ev.projector.feasible(pol)
        res = ev.evaluate(pol)
        assert res.feasible
        s.observe(pol, res)
    assert s.model.replay_buffer.size() == 3 * len(ev.names)
    after = list(s.model.actor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # it learnt
    with pytest.raises(AmcError):
        s.observe({"x": 0.5}, res)


@pytest.fixture
def ckpt():
    """The shared ResNet-20 checkpoint (the CLI's searches run on it); skips where it or the data is missing."""
    from tests.conftest import CIFAR, MODELS

    path = MODELS / "resnet20_dense.pt"
    if not path.exists() or not CIFAR.exists():
        pytest.skip("shared checkpoint or data missing")
    return path


def test_cli_search_screens_trials_on_fewer_images(tmp_path, ckpt):
    """``--screen-images``: every trial is scored first by the cheap screen, only survivors by the full
    reward; the summary counts both, and the best is a fully scored trial."""
    import json

    import pandas as pd

    from amc.cli import main

    out = tmp_path / "run"
    argv = ["search", str(ckpt), "--method", "optuna", "--budget", "macs=0.6", "--granularity", "channel",
            "--episodes", "3", "--heldout", "256", "--calib-images", "128", "--sens-ratios", "",
            "--screen-images", "64", "--screen-eta", "2", "--rerank", "0", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    trials = pd.read_csv(out / "episodes.csv")
    assert (trials["state"] == "COMPLETE").sum() == 3 and trials["screen_0"].notna().all()
    assert summary["screen_calls"] == [len(trials)] and summary["pruned_trials"] == (trials["state"] == "PRUNED").sum()
    complete = trials[trials["state"] == "COMPLETE"]
    assert summary["best"]["reward"] == pytest.approx(complete["reward"].max())
    assert main([*argv[:argv.index("--method") + 1], "amc", *argv[argv.index("--method") + 2:-1],
                 str(tmp_path / "x")]) == 2  # the agent has no screens: one clear error


@pytest.mark.parametrize("method", ["amc", "optuna"])
def test_cli_search(tmp_path, method, capsys, ckpt):
    import json

    from amc.cli import main
    from amc.policy import load_policy_file

    out = tmp_path / "run"
    argv = ["search", str(ckpt), "--method", method, "--budget", "macs=0.6", "--granularity", "channel",
            "--episodes", "2", "--warmup", "1", "--heldout", "128", "--calib-images", "128",
            *(["--sens-ratios", "0.5"] if method == "optuna" else []), "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    policy = load_policy_file(out / "best_policy.yaml")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["feasible"] and summary["best"]["macs"] <= 0.6 + 1e-9
    assert set(policy) and (out / "episodes.csv").exists()
    assert "best policy" in capsys.readouterr().out
    assert main([*argv[:-2], "--budget", "macs=0.01", "--out", str(tmp_path / "x")]) == 2  # impossible budget


def test_cli_search_scored_after_reconstruction(tmp_path, capsys, ckpt):
    """``--recovery reconstruct``: every reward after AMC's least-squares refit (channel pruning); asked of
    fine-grained pruning, one clear error."""
    import json

    from amc.cli import main

    out = tmp_path / "run"
    argv = ["search", str(ckpt), "--method", "optuna", "--budget", "macs=0.5", "--granularity", "channel",
            "--recovery", "reconstruct", "--episodes", "2", "--heldout", "128", "--calib-images", "128",
            "--sens-ratios", "0.5", "--rerank", "0", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["feasible"] and summary["best"]["macs"] <= 0.5 + 1e-9
    capsys.readouterr()
    fine = [*argv[:argv.index("channel")], "fine", *argv[argv.index("channel") + 1:-1], str(tmp_path / "x")]
    assert main(fine) == 2
    assert "reconstruct" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["amc", "optuna"])
def test_cli_search_around_a_policy(tmp_path, method, ckpt):
    """``--around FILE --radius R``: the named layers are searched within R of the file's ratios,
    and the search starts from that policy; a missing file is one error, exit 2."""
    import json

    import pandas as pd

    from amc.cli import main
    from amc.policy import save_policy_file

    ref = tmp_path / "ref.yaml"
    save_policy_file({"layer1.0.conv1": 0.5, "layer3.2.conv2": 0.8}, ref)
    out = tmp_path / "run"
    argv = ["search", str(ckpt), "--method", method, "--budget", "size=0.6", "--granularity", "fine",
            "--episodes", "3", "--warmup", "2", "--heldout", "128", "--calib-images", "128",
            "--around", str(ref), "--radius", "0.1", "--sens-ratios", "", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    frame = pd.read_csv(out / "episodes.csv")
    if "state" in frame:  # Optuna lists enqueued trials that never ran (WAITING) too
        frame = frame[frame["state"] == "COMPLETE"]
    assert len(frame) == 3
    assert frame["r:layer1.0.conv1"].between(0.4 - 1e-9, 0.6 + 1e-9).all()
    assert frame["r:layer3.2.conv2"].between(0.7 - 1e-9, 0.9 + 1e-9).all()  # 0.8 + the radius
    assert json.loads((out / "summary.json").read_text())["best"]["feasible"]
    argv[argv.index(str(ref))] = str(tmp_path / "missing.yaml")
    assert main([*argv[:-1], str(tmp_path / "run2")]) == 2


def test_seed_policies_are_the_first_episodes(tiny_splits, tmp_path):
    ev = _evaluator(tiny_splits)
    over = {n: 0.1 * (i % 3) for i, n in enumerate(ev.names)}  # over the budget: tightened, its shape kept
    assert not ev.projector.feasible(over) and ev.projector.meet(over) != ev.projector.project(over)
    seeds = [ev.uniform_policy(), ev.projector.project({n: 0.9 for n in ev.names[:2]}), over]
    res = run_agent(ev, AgentConfig(episodes=4, warmup_episodes=3, batch_size=4, checkpoint_every=0), tmp_path,
                    seed_policies=seeds)
    rows = res.episodes
    for i, pol in enumerate(seeds):
        played = {n: float(rows.loc[i, f"r:{n}"]) for n in ev.names}
        assert played == pytest.approx(ev.projector.fill(ev.projector.spend(ev.projector.meet(pol))), abs=1e-6)
    assert res.best_result is not None
    assert res.best_result.reward >= max(ev.evaluate(ev.projector.fill(p)).reward for p in seeds) - 1e-9


@pytest.mark.parametrize("credit", ["final", "td"])
def test_credit_assignment_in_the_replay_buffer(tiny_splits, credit):
    """``final`` (AMC's code): every step of an episode is stored with its final reward (raw: the
    baseline is applied per sampled batch) and as terminal; ``td``: reward and end at the last step only."""
    ev = _evaluator(tiny_splits)
    n = len(ev.names)
    res = run_agent(ev, AgentConfig(episodes=2, warmup_episodes=2, batch_size=4, checkpoint_every=0,
                                    credit=credit))
    buf = res.agent.replay_buffer
    assert buf.size() == 2 * n
    rewards = buf.rewards[:2 * n, 0].reshape(2, n)
    dones = buf.dones[:2 * n, 0].reshape(2, n)
    for ep in range(2):
        r = float(res.episodes.reward[ep])
        if credit == "final":
            np.testing.assert_allclose(rewards[ep], r, rtol=1e-5, atol=1e-6)
            assert dones[ep].all()
        else:
            np.testing.assert_allclose(rewards[ep, :-1], 0.0)
            assert rewards[ep, -1] == pytest.approx(r, abs=1e-6)
            assert dones[ep, -1] and not dones[ep, :-1].any()


def test_unknown_credit_is_an_error():
    with pytest.raises(AmcError, match="credit"):
        AgentConfig(credit="monte")


def test_cli_search_reranks_the_top_policies(tmp_path, ckpt):
    """A reward on a subset of the held-out images: the top K are re-scored on all of them and the
    best of those is kept (``rerank.csv``, ``summary.json``); ``--rerank 0`` keeps the best reward."""
    import json

    import pandas as pd

    from amc.cli import main
    from amc.policy import load_policy_file

    out = tmp_path / "run"
    argv = ["search", str(ckpt), "--method", "optuna", "--budget", "size=0.5", "--granularity", "fine",
            "--episodes", "4", "--heldout", "256", "--eval-images", "64", "--calib-images", "128",
            "--reward", "acc_loss", "--sens-ratios", "", "--rerank", "3", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    ranked = pd.read_csv(out / "rerank.csv")
    assert len(ranked) == 3 and sorted(ranked["rank"]) == [1, 2, 3]
    assert list(ranked["score"]) == sorted(ranked["score"], reverse=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rerank"]["k"] == 3 and summary["rerank"]["winner_search_rank"] == ranked["rank"][0]
    kept = load_policy_file(out / "best_policy.yaml")
    first = {c[2:]: ranked.loc[0, c] for c in ranked.columns if c.startswith("r:")}
    assert kept == pytest.approx(first)
    # BN recalibration on every held-out image is exact: nothing to re-rank
    assert main([*argv[:argv.index("--eval-images")], *argv[argv.index("--calib-images"):-1],
                 str(tmp_path / "run2")]) == 0
    assert not (tmp_path / "run2" / "rerank.csv").exists()
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["rerank"] is None


@pytest.mark.parametrize("method", ["amc", "optuna"])
def test_cli_fine_size_search_starts_from_global_and_lamp(tmp_path, method, ckpt):
    """Fine-grained pruning to a size budget: both searchers also start from one global magnitude
    threshold and from LAMP at that size (AMC's warm-up episodes after the uniform one, Optuna's
    enqueued trials), so the search's best is never below those two under its own reward."""
    import json

    import pandas as pd

    from amc.cli import main
    from amc.models import load_model
    from amc.pruners.finegrained import global_policy, lamp_policy

    out = tmp_path / "run"
    argv = ["search", str(ckpt), "--method", method, "--budget", "size=0.4", "--granularity", "fine",
            "--episodes", "4", "--warmup", "3", "--heldout", "128", "--calib-images", "128", "--sens-ratios", "",
            "--upper", "0.98", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    frame = pd.read_csv(out / "episodes.csv")
    if "state" in frame:
        frame = frame[frame["state"] == "COMPLETE"].reset_index(drop=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed_policies"] == ["uniform", "global", "lamp"]
    dense = load_model("resnet20", ckpt)
    cols = [c for c in frame.columns if c.startswith("r:")]
    played = [{c[2:]: float(frame.loc[i, c]) for c in cols} for i in range(len(frame))]
    for want in (global_policy(dense, 0.4, [c[2:] for c in cols]), lamp_policy(dense, 0.4, [c[2:] for c in cols])):
        # each is played (up to the fill that spends the whole budget: a few weights' worth)
        assert any(all(abs(p[n] - want[n]) < 2e-3 for n in want) for p in played), want
    assert frame.loc[frame["feasible"].astype(bool), "reward"].max() == pytest.approx(summary["best"]["reward"])


def test_policy_files_keep_every_digit(tmp_path):
    from amc.policy import load_policy_file, save_policy_file

    pol = {"a": 0.1 + 0.2, "b": 1 / 3, "c": 0.0}
    for name in ("p.yaml", "p.json"):
        save_policy_file(pol, tmp_path / name)
        assert load_policy_file(tmp_path / name) == pol  # exact, not approximately


def test_the_environment_follows_a_retargeted_evaluator(tiny_splits):
    from amc.envs.pruning import PruningEnv

    ev = _evaluator(tiny_splits, "channel")
    env = PruningEnv(ev)
    ev.retarget(ev.budget.fraction * 0.8)
    assert env.projector is ev.projector and env.projector.budget.fraction == pytest.approx(ev.budget.fraction)
