"""The pruning environment keeps the Gymnasium contract and the budget."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from amc.budget import Budget
from amc.envs import ENV_ID, OBS_DIM, PruningEnv
from amc.evaluator import EvalConfig, Evaluator
from tests.conftest import make_tiny_resnet, make_tiny_vgg

GRANULARITIES = ["fine", "channel"]


def _evaluator(splits, granularity: str, make=make_tiny_vgg) -> Evaluator:
    if granularity == "channel":
        pytest.importorskip("amc.pruners.channel")
        budget = Budget.parse("macs=0.6")
    else:
        budget = Budget.parse("size=0.5")
    return Evaluator(make(), splits, budget, EvalConfig(granularity=granularity, calib_images=256,
                                                        round_to=1))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_env_checkers(tiny_splits, granularity):
    env = gym.make(ENV_ID, evaluator=_evaluator(tiny_splits, granularity))
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def _episode(env: gym.Env, seed: int) -> tuple[list[np.ndarray], float, dict]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    seen, done, reward, info = [obs], False, 0.0, {}
    while not done:
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
        seen.append(obs)
        done = term or trunc
    return seen, float(reward), info


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_same_seed_same_episode(tiny_splits, granularity):
    env = PruningEnv(_evaluator(tiny_splits, granularity))
    a, ra, ia = _episode(env, 3)
    b, rb, ib = _episode(env, 3)
    assert ra == rb and ia["policy"] == ib["policy"]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    _, _, ic = _episode(env, 4)
    assert ic["policy"] != ia["policy"]


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("action", [-1.0, 0.0, 1.0])
def test_episode_meets_budget(tiny_splits, granularity, action):
    ev = _evaluator(tiny_splits, granularity)
    env = PruningEnv(ev)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (OBS_DIM,) and obs.dtype == np.float32
    rewards = []
    for i, name in enumerate(env.names):
        obs, r, term, trunc, info = env.step(np.array([action], dtype=np.float32))
        assert env.observation_space.contains(obs)
        rewards.append(r)
        assert term == (i == len(env.names) - 1) and not trunc
        lo, hi = ev.bounds[name]
        assert lo <= env._policy[name] <= hi
    assert all(r == 0.0 for r in rewards[:-1])
    res = info["result"]
    assert res.feasible, res.reason
    assert rewards[-1] == pytest.approx(res.reward)


def test_action_maps_to_bounds(tiny_splits):
    ev = Evaluator(make_tiny_resnet(), tiny_splits, Budget.parse("size=0.9"),
                   EvalConfig(calib_images=256, lower=0.1, upper=0.7))
    env = PruningEnv(ev)
    name = env.names[0]
    assert env.ratio_of(-1.0, name) == pytest.approx(0.1)
    assert env.ratio_of(1.0, name) == pytest.approx(0.7)
    assert env.ratio_of(0.0, name) == pytest.approx(0.4)


def test_observation_tracks_removed_cost(tiny_splits):
    env = PruningEnv(_evaluator(tiny_splits, "fine"))
    obs0, _ = env.reset(seed=0)
    assert obs0[7] == 0.0 and obs0[8] > 0  # nothing removed yet, some removable
    obs1, *_ = env.step(np.array([1.0], dtype=np.float32))
    assert obs1[7] > 0  # removed cost grows
    assert obs1[9] == pytest.approx(1.0)  # previous action at its upper bound


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_fill_spends_the_budget(tiny_splits, granularity):
    """Every action at its upper bound prunes far past the budget; the filled episode spends it all."""
    ev = _evaluator(tiny_splits, granularity)
    spent = {}
    for fill in (False, True):
        env = PruningEnv(ev, fill=fill)
        env.reset(seed=0)
        info: dict = {}
        for _ in env.names:
            *_, info = env.step(np.array([1.0], dtype=np.float32))
        assert info["result"].feasible
        # the cost model's figure: the tiny untrained model's BatchNorm biases are exact zeros, which
        # the re-measure (non-zeros) does not count
        spent[fill] = ev.projector.cost.fraction(info["policy"])
    assert spent[False] < 0.5 * ev.budget.fraction
    tol = 0.002 if granularity == "fine" else 0.1  # channel costs move in whole channels (tiny layers)
    assert ev.budget.fraction - tol <= spent[True] <= ev.budget.fraction + 1e-9


def test_actions_of_replays_a_policy(tiny_splits):
    ev = _evaluator(tiny_splits, "fine")
    env = PruningEnv(ev)
    pol = ev.uniform_policy()
    env.reset(seed=0)
    info: dict = {}
    for a in env.actions_of(pol):
        *_, info = env.step(a)
    assert info["policy"] == pytest.approx(pol, abs=1e-6)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_trajectory_is_the_episode_that_plays_the_policy(tiny_splits, granularity):
    """``trajectory(policy)``: the observations and actions of stepping the policy's own actions, and
    the environment's running episode is left as it was."""
    ev = _evaluator(tiny_splits, granularity)
    env = PruningEnv(ev, evaluate=False)
    env.reset(seed=0)
    for _ in env.names:
        *_, info = env.step(np.array([1.0], dtype=np.float32))
    pol = info["policy"]  # filled: not what the raw actions gave
    env.reset(seed=0)
    env.step(np.array([0.3], dtype=np.float32))
    mid = env._obs().copy()
    obs, actions = env.trajectory(pol)
    np.testing.assert_array_equal(env._obs(), mid)  # untouched
    assert obs.shape == (len(env.names) + 1, OBS_DIM) and actions.shape == (len(env.names), 1)
    assert {n: env.ratio_of(float(a[0]), n) for n, a in zip(env.names, actions, strict=True)} == pytest.approx(
        pol, abs=1e-6)
    env.reset(seed=0)
    seen = [env._obs()]
    for a in actions:
        o, *_, info = env.step(a)
        seen.append(o)
    np.testing.assert_allclose(np.stack(seen), obs, atol=1e-6)
    assert info["policy"] == pytest.approx(pol, abs=1e-6)
