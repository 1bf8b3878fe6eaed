"""The AMC agent as AMC built it: exploration inside the bounds, the baseline per sampled batch, the
stored actions are the scored ones, the warm-up shared by both paths, and every run's diagnostics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from gymnasium import spaces

from amc.budget import Budget
from amc.envs import PruningEnv
from amc.evaluator import EvalConfig, Evaluator
from amc.search.agent import AgentConfig, AmcSearcher, agent_diagnostics, at_bound, run_agent
from amc.search.ddpg import AmcReplayBuffer, exploration_sigma, truncated_normal
from tests.conftest import make_tiny_vgg

SMALL = dict(batch_size=4, net_arch=(16, 16), checkpoint_every=0)


def _evaluator(splits, granularity="fine"):
    budget = Budget.parse("size=0.5" if granularity == "fine" else "macs=0.6")
    return Evaluator(make_tiny_vgg(), splits, budget, EvalConfig(granularity=granularity, calib_images=128,
                                                                 round_to=1))


def test_truncated_normal_stays_inside_and_off_the_bounds():
    rng = np.random.default_rng(0)
    for mu in (-1.0, -0.9, 0.0, 0.95, 1.0):  # the actor's action anywhere, the bounds included
        for sigma in (2.0, 1.0, 0.3, 0.01):
            draws = truncated_normal(np.full(2000, mu), sigma, rng)
            assert draws.min() >= -1.0 and draws.max() <= 1.0
            assert at_bound(draws) < 0.02
    near = truncated_normal(np.zeros(4000), 0.05, rng)
    assert near.std() == pytest.approx(0.05, rel=0.1)  # a narrow one is the plain normal
    assert truncated_normal(np.array([0.3]), 0.0, rng)[0] == pytest.approx(0.3)


def test_sigma_decays_by_episode_after_the_warmup():
    assert exploration_sigma(1.0, 0.95, -3) == 1.0  # warm-up: not decayed
    assert exploration_sigma(1.0, 0.95, 0) == 1.0
    assert exploration_sigma(1.0, 0.95, 10) == pytest.approx(0.95 ** 10)


def test_few_actions_land_on_a_bound_over_many_episodes(tiny_splits, tmp_path):
    ev = _evaluator(tiny_splits)
    res = run_agent(ev, AgentConfig(episodes=16, warmup_episodes=4, sigma=1.0, sigma_decay=0.95, **SMALL), tmp_path)
    log = pd.read_csv(tmp_path / "episodes.csv")
    assert log["at_bound"].mean() < 0.02
    assert log.loc[log.warmup, "sigma"].eq(1.0).all()
    learn = log.loc[~log.warmup, "sigma"].to_numpy()
    np.testing.assert_allclose(learn, 0.95 ** np.arange(len(learn)), rtol=1e-6)
    assert res.extra["diagnostics"]["at_bound"]["all"] < 0.02


def _buffer(rewards):
    obs = spaces.Box(0, 1, (2,), np.float32)
    act = spaces.Box(-1, 1, (1,), np.float32)
    buf = AmcReplayBuffer(16, obs, act, device="cpu", baseline="batch")
    for i, r in enumerate(rewards):
        buf.add(np.full((1, 2), i / 10, np.float32), np.zeros((1, 2), np.float32), np.full((1, 1), i / 10),
                np.array([r]), np.array([True]), [{}])
    return buf


def test_equal_rewards_get_equal_targets_whatever_their_storage_order():
    """The baseline is applied per sampled batch: the buffer keeps raw rewards, and in every batch two
    transitions with the same reward get the same (centred) target, whenever each was stored."""
    np.random.seed(0)  # SB3 samples batch indices from numpy's global generator
    for order in ([1.0, 3.0, 1.0, 2.0], [1.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 1.0]):
        buf = _buffer(order)
        np.testing.assert_array_equal(buf.rewards[:4, 0], order)
        for _ in range(20):
            batch = buf.sample(8)
            raw = buf.rewards[(batch.observations[:, 0] * 10).round().long().numpy(), 0]
            centred = batch.rewards[:, 0].numpy()
            assert centred.mean() == pytest.approx(0.0, abs=1e-5)
            ones = centred[raw == 1.0]
            if len(ones) > 1:
                assert np.ptp(ones) == pytest.approx(0.0, abs=1e-6)
            np.testing.assert_allclose(centred, raw - raw.mean(), atol=1e-5)
    flat = AmcReplayBuffer(4, spaces.Box(0, 1, (2,), np.float32), spaces.Box(-1, 1, (1,), np.float32),
                           device="cpu", baseline="none")
    flat.add(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 1)), np.array([2.5]), np.array([True]), [{}])
    assert float(flat.sample(2).rewards[0, 0]) == pytest.approx(2.5)


@pytest.mark.parametrize("granularity", ["fine", "channel"])
def test_stored_actions_reproduce_the_scored_policy(tiny_splits, granularity):
    """Every episode's stored actions are those of the policy that was scored (after the projection
    and the fill), not the actions the agent sampled."""
    if granularity == "channel":
        pytest.importorskip("amc.pruners.channel")
    ev = _evaluator(tiny_splits, granularity)
    res = run_agent(ev, AgentConfig(episodes=5, warmup_episodes=2, **SMALL))
    env = PruningEnv(ev)
    n = len(env.names)
    buf = res.agent.replay_buffer
    actions = buf.actions[:5 * n, 0, 0].reshape(5, n)
    moved = 0
    for ep in range(5):
        scored = {name: float(res.episodes.loc[ep, f"r:{name}"]) for name in env.names}
        stored = {name: env.ratio_of(float(actions[ep, t]), name) for t, name in enumerate(env.names)}
        assert stored == pytest.approx(scored, abs=1e-5)
        obs, _ = env.trajectory(scored)
        np.testing.assert_allclose(buf.observations[ep * n:(ep + 1) * n, 0], obs[:-1], atol=1e-6)
        moved += res.episodes.loc[ep, "at_bound"] >= 0  # every episode logged
    assert moved == 5


def test_the_buffer_holds_the_last_episodes(tiny_splits):
    ev = _evaluator(tiny_splits)
    res = run_agent(ev, AgentConfig(episodes=4, warmup_episodes=1, buffer_episodes=2, **SMALL))
    n = len(ev.names)
    assert res.agent.replay_buffer.buffer_size == 2 * n and res.agent.replay_buffer.full


def test_ask_tell_and_run_play_the_same_warmup(tiny_splits):
    """Both paths explore with the one function: the same seed gives the same warm-up episodes
    (seed policies first, then uniform random actions, no noise)."""
    ev = _evaluator(tiny_splits)
    cfg = AgentConfig(episodes=4, warmup_episodes=3, **SMALL)
    seeds = [ev.uniform_policy()]
    ran = run_agent(ev, cfg, seed_policies=seeds)
    s = AmcSearcher(ev, cfg, seed_policies=seeds)
    cols = [f"r:{n}" for n in ev.names]
    for ep in range(3):
        pol = s.propose()
        s.observe(pol, ev.evaluate(pol))
        assert [pol[c[2:]] for c in cols] == pytest.approx(ran.episodes.loc[ep, cols].astype(float).tolist(), abs=1e-9)
    again = run_agent(ev, cfg, seed_policies=seeds)
    pd.testing.assert_frame_equal(ran.episodes[["reward", *cols]], again.episodes[["reward", *cols]])


def test_every_run_writes_its_diagnostics(tiny_splits, tmp_path):
    ev = _evaluator(tiny_splits)
    run_agent(ev, AgentConfig(episodes=6, warmup_episodes=2, window=2, **SMALL), tmp_path)
    log = pd.read_csv(tmp_path / "episodes.csv")
    assert {"at_bound", "ratio_at_bound", "sigma", "best_so_far", "warmup"} <= set(log.columns)
    assert log["best_so_far"].is_monotonic_increasing
    diag = json.loads((tmp_path / "agent_diagnostics.json").read_text())
    assert diag["episodes"] == 6 and len(diag["rewards"]) == 6 and len(diag["curve"]) == 3
    assert diag["curve"][0]["episodes"] == [0, 1]
    assert diag["moving_best"][-1] == pytest.approx(max(r for r in diag["rewards"] if r is not None))
    assert set(diag["actor"]) == {"warmup", "final"}
    for pol in diag["actor"].values():
        assert set(pol) == set(ev.names) and ev.projector.feasible(pol)
    assert diag["best_reward"] == pytest.approx(log["reward"].max())


def test_diagnostics_of_a_log():
    frame = pd.DataFrame({"episode": range(4), "reward": [1.0, 3.0, 2.0, 5.0], "feasible": [True, True, False, True],
                          "at_bound": [0.0, 0.5, 0.0, 0.0], "ratio_at_bound": [0.0] * 4})
    d = agent_diagnostics(frame, warmup=2, window=2)
    assert d["moving_best"] == [1.0, 3.0, 3.0, 5.0]
    assert d["curve"] == [{"episodes": [0, 1], "best": 3.0, "mean": 2.0},
                          {"episodes": [2, 3], "best": 5.0, "mean": 5.0}]  # the infeasible episode is left out
    assert d["at_bound"] == {"all": 0.125, "warmup": 0.25, "learning": 0.0}
    assert d["best_in_warmup"] == 3.0 and d["best_after_warmup"] == 5.0 and d["best_episode"] == 3


def test_a_resumed_run_logs_its_wall_clock_on(tiny_splits, tmp_path):
    ev = _evaluator(tiny_splits)
    run_agent(ev, AgentConfig(episodes=2, warmup_episodes=1, **{**SMALL, "checkpoint_every": 1}), tmp_path)
    first = pd.read_csv(tmp_path / "episodes.csv")["wall"].tolist()
    run_agent(ev, AgentConfig(episodes=3, warmup_episodes=1, **{**SMALL, "checkpoint_every": 1}), tmp_path)
    wall = pd.read_csv(tmp_path / "episodes.csv")["wall"].tolist()
    assert wall[:2] == pytest.approx(first) and wall[2] >= wall[1]
    diag = json.loads((tmp_path / "agent_diagnostics.json").read_text())
    assert diag["episodes"] == 3 and set(diag["actor"]) == {"warmup", "final"}


def test_an_older_agents_checkpoint_is_refused(tiny_splits, tmp_path):
    """A run folder checkpointed by the agent whose buffer froze a baseline into its rewards is not resumed
    silently under the new rules: one clear error."""
    from stable_baselines3.common.buffers import ReplayBuffer

    from amc.errors import CheckpointError

    ev = _evaluator(tiny_splits)
    cfg = {**SMALL, "checkpoint_every": 1}
    res = run_agent(ev, AgentConfig(episodes=2, warmup_episodes=1, **cfg), tmp_path)
    res.agent.replay_buffer = ReplayBuffer(8, res.agent.observation_space, res.agent.action_space, device="cpu")
    res.agent.save_replay_buffer(tmp_path / "replay.pkl")
    with pytest.raises(CheckpointError, match="older agent"):
        run_agent(ev, AgentConfig(episodes=3, warmup_episodes=1, **cfg), tmp_path)
