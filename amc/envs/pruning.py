"""AMC's pruning environment: one step per searched layer, reward at the last step.

Observation (float32 ``Box`` in [0, 1], AMC's layer embedding, each static feature min-max
normalised over the layers): layer index, kind (conv / depthwise / linear), input channels,
output channels, stride, kernel, parameters (log scale), cost already removed, cost still
removable, previous action. "Cost" is the budget's kind (size, MACs, params) as a fraction of the
dense model, from the evaluator's exact cost model: *removed* is what the ratios chosen so far
remove (later layers dense), *removable* what the later layers could still remove at their upper
bounds.

Action: float32 ``Box`` [-1, 1] of shape (1,), mapped linearly to the layer's ``[lower, upper]``
ratio bounds, then clamped by the budget projection (so every finished episode meets the budget).
At the last step the policy is filled (``Projector.fill``, on by default): when the actions pruned
more than the budget needs, every ratio is scaled toward its lower bound by one factor until the
budget is spent, so no episode wastes budget it was given.
``trajectory(policy)`` gives the observations and actions of the episode that plays a policy (the
agent stores those, so its stored actions are the ones that produced the scored policy).
The reward is 0 before the last step and ``Evaluator.evaluate(policy).reward`` at the last step;
``info`` at the last step holds ``policy`` and ``result`` (with ``evaluate=False`` only ``policy``
and reward 0: an ask/tell driver such as ``amc.search.agent.AmcSearcher`` scores it). The environment
only steps: logging and best-policy tracking are callbacks (``amc.search.agent``).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amc.budget import Policy, Projector
from amc.evaluator import Evaluator

KINDS = {"conv": 0.0, "dwconv": 0.5, "linear": 1.0}
OBS_DIM = 10


def _minmax(col: np.ndarray) -> np.ndarray:
    span = col.max() - col.min()
    return (col - col.min()) / span if span > 0 else np.zeros_like(col)


class PruningEnv(gym.Env):
    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(self, evaluator: Evaluator, evaluate: bool = True, fill: bool = True) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.fill = fill  # spend the whole budget at the last step (Projector.fill)
        self.evaluate = evaluate  # False: the last step only hands back the policy (ask/tell drivers)
        self.names = list(evaluator.names)
        info = {t.name: t for t in evaluator.table}
        rows = []
        for i, n in enumerate(self.names):
            t = info[n]
            rows.append([i, KINDS[t.kind], t.in_channels, t.out_channels, t.stride, t.kernel,
                         math.log(max(t.params, 1))])
        static = np.array(rows, dtype=np.float64)
        self._static = np.stack([_minmax(static[:, j]) for j in range(static.shape[1])], axis=1)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._cost = evaluator.projector.cost
        self._dense_cost = self._cost.fraction({})
        self._t = 0
        self._policy: Policy = {}
        self._prev = 0.0

    @property
    def projector(self) -> Projector:
        """The evaluator's projector, read at each use: a search aimed anew (``Evaluator.retarget``) holds every
        later episode to the new aim."""
        return self.evaluator.projector

    def _obs(self) -> np.ndarray:
        return self._observe(self._t, self._policy, self._prev)

    def _observe(self, t: int, done: Policy, prev: float) -> np.ndarray:
        """The observation before step ``t`` once ``done`` holds the ratios of the layers before it
        and ``prev`` is the last one's place in its bounds (a pure function of its arguments)."""
        removed = self._dense_cost - self._cost.fraction(done)
        rest = dict(done)
        for n in self.names[t:]:
            rest[n] = self.projector.upper[n]
        removable = self._cost.fraction(done) - self._cost.fraction(rest)
        obs = np.concatenate([self._static[min(t, len(self.names) - 1)],
                              [removed, removable, prev]]).astype(np.float32)
        return np.clip(obs, 0.0, 1.0)

    def _place(self, ratio: float, name: str) -> float:
        lo, hi = self.evaluator.bounds[name]
        return (ratio - lo) / (hi - lo) if hi > lo else 0.0

    def trajectory(self, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
        """The episode that plays ``policy``: its ``len(names) + 1`` observations and its per-step
        actions (``actions_of``), without touching the environment's own episode. An agent stores
        these, not the actions it sampled, once the projection and the fill have turned its actions
        into the policy that was scored: every stored action then is the one that produced it."""
        actions = self.actions_of(policy)
        done: Policy = {}
        prev = 0.0
        obs = [self._observe(0, done, prev)]
        for t, name in enumerate(self.names):
            ratio = self.projector.clamp(done, name, self.ratio_of(float(actions[t][0]), name))
            done[name] = ratio
            prev = self._place(ratio, name)
            obs.append(self._observe(t + 1, done, prev))
        return np.stack(obs), np.stack(actions).astype(np.float32)

    def ratio_of(self, action: float, name: str) -> float:
        lo, hi = self.evaluator.bounds[name]
        a = float(np.clip(action, -1.0, 1.0))
        return lo + (a + 1.0) / 2.0 * (hi - lo)

    def action_of(self, ratio: float, name: str) -> float:
        """The action in [-1, 1] that ``ratio_of`` maps to ``ratio`` (clipped to the bounds)."""
        lo, hi = self.evaluator.bounds[name]
        return float(np.clip(2.0 * (ratio - lo) / (hi - lo) - 1.0, -1.0, 1.0)) if hi > lo else -1.0

    def actions_of(self, policy: Policy) -> list[np.ndarray]:
        """The per-step actions of one episode that plays ``policy`` (missing layers at their lower
        bound); a feasible policy comes out of the projection unchanged."""
        return [np.array([self.action_of(policy.get(n, self.evaluator.bounds[n][0]), n)], dtype=np.float32)
                for n in self.names]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t, self._policy, self._prev = 0, {}, 0.0
        return self._obs(), {}

    def step(self, action):
        name = self.names[self._t]
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        ratio = self.projector.clamp(self._policy, name, self.ratio_of(a, name))
        self._policy[name] = ratio
        self._prev = self._place(ratio, name)
        self._t += 1
        if self._t < len(self.names):
            return self._obs(), 0.0, False, False, {}
        if self.fill:
            self._policy = self.projector.fill(self._policy)
        if not self.evaluate:
            return self._obs(), 0.0, True, False, {"policy": dict(self._policy)}
        result = self.evaluator.evaluate(self._policy)
        reward = result.reward if math.isfinite(result.reward) else 0.0  # a diverged model scores 0
        info = {"policy": dict(self._policy), "result": result}
        return self._obs(), float(reward), True, False, info


ENV_ID = "amc/Pruning-v0"  # gymnasium.make(ENV_ID, evaluator=...) once this module is imported

if ENV_ID not in gym.envs.registration.registry:
    gym.register(id=ENV_ID, entry_point="amc.envs.pruning:PruningEnv", disable_env_checker=True)
