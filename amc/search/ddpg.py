"""The AMC agent's learner: stable-baselines3's DDPG / TD3 with AMC's exploration, buffer and credit.

What differs from SB3's defaults, and why (mit-han-lab/amc, ``lib/agent.py`` and ``lib/memory.py``):

- Exploration (``_AmcOffPolicy._sample_action``, one function for ``learn()`` and ask/tell): the
  warm-up is plain uniform random actions (SB3 would add the action noise to them too); after it,
  the actor's action is the mean of a normal *truncated to the action range* (resampled inside
  [-1, 1], never clipped onto a bound) whose width ``sigma`` decays by ``sigma_decay`` per episode
  after the warm-up, down to ``sigma_min`` (AMC: no floor; its width is gone ~60 episodes after
  the warm-up). Every ``exploit_every``-th learning episode (2: every other one) is not the actor's
  but the best episode stored so far (its per-step actions) inside the same truncated normal: a
  local search around the best policy beside the actor's (AMC: the actor only). Each step's random
  numbers come from a generator seeded by ``(seed, step)``, so the same seed plays the same
  episodes, and a resumed run plays what the unbroken one would.
- Stored transitions (``_store_transition``): an episode's transitions wait until it ends and are
  then replaced by those of the episode that plays the scored policy (``PruningEnv.trajectory``:
  after the budget projection and the fill, the actions taken are not the ones that produced the
  policy); with ``credit="final"`` (AMC's code) every step is stored with the episode's reward and
  as terminal, with ``"td"`` the reward and the end at the last step only.
- The reward baseline (``AmcReplayBuffer``): the rewards of each *sampled batch* are centred on the
  batch's mean (``baseline="batch"``, AMC centres its batches on a moving average of batch means)
  or left as they are (``"none"``); the buffer keeps the raw rewards, so two equal rewards get the
  same target whenever they were stored. The buffer holds the last ``buffer_episodes`` episodes.
- Separate actor and critic learning rates (``_TwoRates``); SB3 has one schedule for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.buffers import ReplayBuffer

BASELINES = ("batch", "none")
CREDITS = ("final", "td")


def truncated_normal(mu: np.ndarray, sigma: float, rng: np.random.Generator, low: float = -1.0,
                     high: float = 1.0) -> np.ndarray:
    """A normal of mean ``mu`` and width ``sigma`` truncated to ``[low, high]`` (rejection sampling:
    a draw outside is drawn again, so no mass piles up on a bound); ``sigma == 0`` gives ``mu``."""
    mu = np.clip(np.asarray(mu, dtype=np.float64), low, high)
    if sigma <= 0:
        return mu.astype(np.float32)
    out = rng.normal(mu, sigma)
    bad = (out < low) | (out > high)
    for _ in range(1000):  # each draw lands inside with probability >= ~0.16 (mu on a bound, any sigma)
        if not bad.any():
            break
        out[bad] = rng.normal(mu[bad], sigma)
        bad = (out < low) | (out > high)
    return np.clip(out, low, high).astype(np.float32)  # clip: only if 1000 draws all fell outside


def exploration_sigma(sigma0: float, decay: float, episodes_after_warmup: int, floor: float = 0.0) -> float:
    """AMC's width: ``sigma0`` through the warm-up and its first learning episode, then times ``decay``
    per episode, never under ``floor`` (AMC: none; it decays to nothing)."""
    return float(max(min(floor, sigma0), sigma0 * decay ** max(0, episodes_after_warmup)))


class AmcReplayBuffer(ReplayBuffer):
    """SB3's ring buffer (the last ``buffer_size`` transitions) whose sampled batches have their
    rewards centred on the batch mean (``baseline="batch"``) or not (``"none"``)."""

    def __init__(self, *args: Any, baseline: str = "batch", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline = baseline

    def sample(self, batch_size: int, env=None):
        batch = super().sample(batch_size, env)
        if self.baseline == "batch":
            batch = batch._replace(rewards=batch.rewards - batch.rewards.mean())
        return batch


class _TwoRates:
    """Separate actor and critic learning rates (SB3 uses one schedule for both)."""

    actor_lr: float = 1e-4
    critic_lr: float = 1e-3

    def _update_learning_rate(self, optimizers) -> None:
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        for g in self.actor.optimizer.param_groups:  # type: ignore[attr-defined]
            g["lr"] = self.actor_lr
        for g in self.critic.optimizer.param_groups:  # type: ignore[attr-defined]
            g["lr"] = self.critic_lr


Trajectory = Callable[[dict[str, float]], tuple[np.ndarray, np.ndarray]]


class _AmcOffPolicy:
    """AMC's exploration and stored transitions (see the module doc). Set by the searcher after
    building or loading: ``n_layers``, ``sigma0``, ``sigma_decay``, ``credit``, ``explore_seed``,
    ``trajectory`` (``PruningEnv.trajectory``; not saved) and ``demo_actions`` (per-step actions
    played first during the warm-up, without noise; not saved)."""

    n_layers: int = 1
    sigma0: float = 1.0
    sigma_decay: float = 0.95
    sigma_min: float = 0.0
    exploit_every: int = 0  # every this many learning episodes, one perturbs the best episode (0: never)
    best_reward: float = -np.inf  # the best episode stored so far and its per-step actions
    best_actions: np.ndarray | None = None
    credit: str = "final"
    explore_seed: int = 0
    trajectory: Trajectory | None = None
    demo_actions: list[np.ndarray] = []  # noqa: RUF012 (replaced per instance)

    @property
    def sigma(self) -> float:
        """The exploration width of the step about to be taken."""
        after = (self.num_timesteps - self.learning_starts) // max(1, self.n_layers)  # type: ignore[attr-defined]
        return exploration_sigma(self.sigma0, self.sigma_decay, after, self.sigma_min)

    def exploits(self, episode_after_warmup: int) -> bool:
        """Whether that learning episode perturbs the best episode so far instead of the actor's
        actions: the last of every ``exploit_every`` (2: every other one), once an episode is stored."""
        k = self.exploit_every
        return k > 0 and self.best_actions is not None and episode_after_warmup % k == k - 1

    def explore(self, obs: np.ndarray) -> np.ndarray:
        """The action of the step about to be taken from ``obs``: a seed policy's or a uniform random one
        during the warm-up, then the actor's (or, in an exploiting episode, the best episode's action
        at this step) inside a truncated normal (shape ``(1, action_dim)``)."""
        t = int(self.num_timesteps)  # type: ignore[attr-defined]
        rng = np.random.default_rng([self.explore_seed, t])
        dim = int(np.prod(self.action_space.shape))  # type: ignore[attr-defined]
        if t < self.learning_starts:  # type: ignore[attr-defined]
            if self.demo_actions:
                return np.asarray(self.demo_actions.pop(0), dtype=np.float32).reshape(1, dim)
            return rng.uniform(-1.0, 1.0, (1, dim)).astype(np.float32)
        after, step = divmod(t - int(self.learning_starts), max(1, self.n_layers))  # type: ignore[attr-defined]
        if self.exploits(after):
            assert self.best_actions is not None
            mu = self.best_actions[min(step, len(self.best_actions) - 1)]
        else:
            mu, _ = self.predict(obs, deterministic=True)  # type: ignore[attr-defined]
        return truncated_normal(np.asarray(mu).reshape(1, dim), self.sigma, rng)

    def _sample_action(self, learning_starts: int, action_noise=None, n_envs: int = 1):
        a = self.explore(self._last_obs)  # type: ignore[attr-defined]
        return a, a  # the action space is [-1, 1]: scaled and unscaled are the same

    def episode_transitions(self, policy: dict[str, float] | None, reward: float,
                            held: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[tuple]:
        """``(obs, next_obs, action, reward, done)`` per step of an episode that scored ``policy``:
        the relabelled episode (``trajectory``), else ``held`` (the steps as taken)."""
        if policy is not None and self.trajectory is not None:
            obs, actions = self.trajectory(policy)
            steps = [(obs[t], obs[t + 1], actions[t]) for t in range(len(actions))]
        else:
            steps = [(o.reshape(-1), n.reshape(-1), a.reshape(-1)) for o, n, a in held]
        last = len(steps) - 1
        final = self.credit == "final"
        return [(o, n, a, reward if (final or t == last) else 0.0, final or t == last)
                for t, (o, n, a) in enumerate(steps)]

    def add_episode(self, transitions: list[tuple]) -> None:
        """Store an episode's transitions (``episode_transitions``); keep its actions if its reward
        (its last step's) is the best so far."""
        if transitions and float(transitions[-1][3]) > self.best_reward:
            self.best_reward = float(transitions[-1][3])
            self.best_actions = np.stack([np.asarray(a, dtype=np.float32).reshape(-1) for _, _, a, _, _ in transitions])
        for obs, nxt, act, reward, done in transitions:
            self.replay_buffer.add(np.asarray(obs)[None], np.asarray(nxt)[None],  # type: ignore[attr-defined]
                                   np.asarray(act, dtype=np.float32).reshape(1, -1), np.array([reward]),
                                   np.array([done]), [{}])

    def _store_transition(self, replay_buffer, buffer_action, new_obs, reward, dones, infos) -> None:
        pending = self.__dict__.setdefault("_episode_steps", [])

        class _Hold:  # receives SB3's add() for this step; the real buffer gets the episode at its end
            @staticmethod
            def add(obs, next_obs, action, _reward, _done, _infos) -> None:
                pending.append((np.array(obs, copy=True), np.array(next_obs, copy=True),
                                np.array(action, copy=True)))

        super()._store_transition(_Hold(), buffer_action, new_obs, reward, dones, infos)  # type: ignore[misc]
        if bool(np.asarray(dones).reshape(-1)[0]):
            policy = infos[0].get("policy") if infos else None
            self.add_episode(self.episode_transitions(policy, float(np.asarray(reward).reshape(-1)[0]), pending))
            pending.clear()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_episode_steps", "trajectory", "demo_actions"]  # type: ignore[misc]


class AmcDDPG(_TwoRates, _AmcOffPolicy, DDPG):
    pass


class AmcTD3(_TwoRates, _AmcOffPolicy, TD3):
    pass


ALGOS: dict[str, type[AmcDDPG] | type[AmcTD3]] = {"ddpg": AmcDDPG, "td3": AmcTD3}
