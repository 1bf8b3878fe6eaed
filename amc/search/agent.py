"""The AMC agent: stable-baselines3 DDPG (or TD3) over ``amc.envs.PruningEnv`` with AMC's settings.

AMC's settings (He et al. 2018, mit-han-lab/amc): actor and critic of two 300-unit layers, actor
learning rate 1e-4 and critic 1e-3, soft target updates tau 0.01, batch 64, no discount (the
only reward is the episode's last), warm-up episodes of uniformly random actions, then the actor's
action plus truncated normal noise whose width decays by 0.99 per episode, and a moving-average
baseline subtracted from the episode reward (``RewardBaseline``). As in AMC's code, every
transition of an episode is stored with the episode's final reward (``credit="final"``; ``"td"``
keeps the reward on the last step and bootstraps). One gradient step per transition after each
episode. Two additions to AMC: ``seed_policies`` (the uniform and the
sensitivity-picked policies, say) are played as the first warm-up episodes, as Optuna enqueues
them as its first trials; and each episode's policy is filled to spend the whole budget
(``AgentConfig.fill_budget``, ``Projector.fill``), since AMC's projection only ever raises ratios.

Lifecycle: ``AgentConfig(...)`` -> ``run_agent(evaluator, config, run_dir)`` -> ``SearchResult``;
or, with the searcher interface every searcher shares, ``AmcSearcher(evaluator, config, run_dir=...)``
-> ``run(progress)`` (the same as ``run_agent``), or ``propose() -> Policy`` -> ``evaluator.evaluate``
-> ``observe(policy, result)``, repeated (ask and tell: no checkpoints).
Inside ``run``: the one search loop (``amc.search.loop``) calls the agent's ``start`` (resume),
``drive`` (SB3's ``learn()`` plays the episodes in the env, wrapped in ``RewardBaseline``) and
``finish`` (the last checkpoint) hooks; ``SearchLogger`` (an SB3 callback) records every episode
with the loop, which logs it to ``run_dir/episodes.csv`` (atomic) and tracks the best feasible
policy, and every ``checkpoint_every`` episodes saves the agent (``agent.zip``), its replay buffer
(``replay.pkl``) and ``state.json`` (episodes done, baseline, best). A new ``run_agent`` on the same
``run_dir`` resumes from them (``DDPG.load``, ``load_replay_buffer``) and continues to ``episodes``
in total; episodes logged after the last checkpoint are dropped and run again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise

from amc.budget import Policy
from amc.envs import PruningEnv
from amc.errors import AmcError, CheckpointError
from amc.evaluator import Evaluator, Result
from amc.io import atomic_path, atomic_write_text
from amc.search.base import Progress, Proposals, Searcher, SearchResult
from amc.search.loop import SearchRun, run_search

CREDITS = ("final", "td")
NOISE_CLIP = 2.0  # a normal truncated at +-2 sigma, added to the action and clipped to [-1, 1]


@dataclass(frozen=True)
class AgentConfig:
    algo: str = "ddpg"  # "ddpg" or "td3"
    episodes: int = 300  # total, warm-up included
    warmup_episodes: int = 100  # AMC: 100 episodes of random actions before learning
    sigma: float = 1.0  # exploration noise: AMC's 0.5 on actions in [0, 1] is 1.0 on [-1, 1]
    sigma_decay: float = 0.99  # per episode after the warm-up (AMC)
    actor_lr: float = 1e-4  # AMC lra
    critic_lr: float = 1e-3  # AMC lrc
    tau: float = 0.01  # AMC soft target update
    batch_size: int = 64  # AMC bsize
    gamma: float = 1.0  # AMC: no discount; the episode's only reward is its last
    baseline_alpha: float = 0.95  # moving-average baseline: b <- alpha b + (1 - alpha) r
    fill_budget: bool = True  # each episode's policy spends the whole budget (Projector.fill)
    credit: str = "final"  # "final": every step stored with the episode's reward (AMC's code); "td": last only
    buffer_episodes: int | None = None  # replay buffer size in episodes (None: the whole run)
    net_arch: tuple[int, ...] = (300, 300)  # AMC hidden1, hidden2 for the actor and the critic
    checkpoint_every: int = 25  # episodes between agent + replay-buffer checkpoints (0: never)
    seed: int = 0
    device: str = "cpu"  # the 300x300 networks are faster on the CPU than a GPU round trip

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise AmcError(f"unknown agent {self.algo!r}; known: {', '.join(ALGOS)}")
        if self.credit not in CREDITS:
            raise AmcError(f"unknown credit {self.credit!r}; known: {', '.join(CREDITS)}")
        if self.episodes < 1 or self.warmup_episodes < 0:
            raise AmcError("episodes must be >= 1 and warm-up episodes >= 0")


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


class _Demonstrations:
    """Warm-up episodes that replay given policies before the random ones: ``demo_actions`` holds
    per-step actions (in [-1, 1]) taken in order, without noise, while the warm-up lasts. Not saved
    with the agent (``run_agent`` sets what is left of them on resume)."""

    demo_actions: list[np.ndarray] = []  # noqa: RUF012 (replaced per instance)

    def _sample_action(self, learning_starts: int, action_noise=None, n_envs: int = 1):
        if self.demo_actions and self.num_timesteps < learning_starts:  # type: ignore[attr-defined]
            a = np.asarray(self.demo_actions.pop(0), dtype=np.float32).reshape(1, -1)
            return a, a  # the action space is [-1, 1]: scaled and unscaled are the same
        return super()._sample_action(learning_starts, action_noise, n_envs)  # type: ignore[misc]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "demo_actions"]  # type: ignore[misc]


class _EpisodeCredit:
    """AMC's credit assignment (``credit="final"``): an episode's transitions wait until it ends,
    then each is stored with the episode's (baseline-shifted) final reward and as terminal, so the
    critic regresses every step's value on the return it led to (a Monte-Carlo target) instead of
    bootstrapping it back one layer at a time through slowly moving target networks. With
    ``credit="td"`` SB3 stores transitions as they come (reward only at the last step)."""

    credit: str = "final"

    def _store_transition(self, replay_buffer, buffer_action, new_obs, reward, dones, infos) -> None:
        if self.credit != "final":
            return super()._store_transition(replay_buffer, buffer_action, new_obs, reward,  # type: ignore[misc]
                                             dones, infos)
        pending = self.__dict__.setdefault("_episode_steps", [])

        class _Hold:  # receives SB3's add() for this step; the real buffer gets it at the episode's end
            @staticmethod
            def add(obs, next_obs, action, _reward, _done, step_infos) -> None:
                pending.append((np.array(obs, copy=True), np.array(next_obs, copy=True),
                                np.array(action, copy=True), step_infos))

        super()._store_transition(_Hold(), buffer_action, new_obs, reward, dones, infos)  # type: ignore[misc]
        if bool(np.asarray(dones).reshape(-1)[0]):
            final = np.asarray(reward, dtype=np.float32).reshape(1)
            for obs, nxt, act, step_infos in pending:
                replay_buffer.add(obs, nxt, act, final.copy(), np.array([True]), step_infos)
            pending.clear()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_episode_steps"]  # type: ignore[misc]


class AmcDDPG(_TwoRates, _Demonstrations, _EpisodeCredit, DDPG):
    pass


class AmcTD3(_TwoRates, _Demonstrations, _EpisodeCredit, TD3):
    pass


ALGOS: dict[str, type[AmcDDPG] | type[AmcTD3]] = {"ddpg": AmcDDPG, "td3": AmcTD3}


class DecayingTruncatedNormal(ActionNoise):
    """Zero-mean normal noise truncated at +-2 sigma; sigma decays by ``decay`` at every episode end
    after ``warmup`` episodes (SB3 calls ``reset`` when an episode ends)."""

    def __init__(self, sigma: float, decay: float, warmup: int = 0, episodes: int = 0, seed: int = 0,
                 size: int = 1) -> None:
        super().__init__()
        self.sigma0, self.decay, self.warmup, self.size = sigma, decay, warmup, size
        self.episodes = episodes
        self.rng = np.random.default_rng(seed)

    @property
    def sigma(self) -> float:
        return self.sigma0 * self.decay ** max(0, self.episodes - self.warmup)

    def __call__(self) -> np.ndarray:
        s = self.sigma
        out = self.rng.normal(0.0, s, self.size)
        bad = np.abs(out) > NOISE_CLIP * s
        while bad.any():  # rejection sampling = the truncated normal
            out[bad] = self.rng.normal(0.0, s, int(bad.sum()))
            bad = np.abs(out) > NOISE_CLIP * s
        return out.astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1


class MovingBaseline:
    """AMC's moving-average reward baseline: starts at the first reward, then
    ``b <- alpha b + (1 - alpha) r`` after each episode."""

    def __init__(self, alpha: float = 0.95, value: float | None = None) -> None:
        self.alpha, self.value = alpha, value

    def shift(self, r: float) -> tuple[float, float]:
        """``(r - b, b)`` with the baseline ``b`` before this reward, then the update."""
        if self.value is None:
            self.value = r
        used = self.value
        self.value += (1.0 - self.alpha) * (r - used)
        return r - used, used


class RewardBaseline(gym.Wrapper):
    """Subtracts a moving average of past episode rewards from each episode's final reward (AMC).
    ``info`` keeps the ``raw_reward`` and the ``baseline`` used."""

    def __init__(self, env: gym.Env, alpha: float = 0.95, baseline: float | None = None) -> None:
        super().__init__(env)
        self.moving = MovingBaseline(alpha, baseline)

    @property
    def baseline(self) -> float | None:
        return self.moving.value

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            r = float(reward)
            reward, used = self.moving.shift(r)
            info = dict(info, raw_reward=r, baseline=used)
        return obs, reward, terminated, truncated, info


class SearchLogger(BaseCallback):
    """The agent's side of the search loop inside SB3's ``learn()``: hands every finished episode to
    the loop (``SearchRun.record``: the trials log, the best, progress) with the agent's own columns,
    and every ``checkpoint_every`` episodes saves the agent, its replay buffer and ``state.json``."""

    def __init__(self, run: SearchRun, noise: DecayingTruncatedNormal, wrapper: RewardBaseline,
                 checkpoint_every: int = 0) -> None:
        super().__init__()
        self.run, self.noise, self.wrapper = run, noise, wrapper
        self.checkpoint_every = checkpoint_every
        self.t0 = time.perf_counter()

    @property
    def episodes(self) -> int:
        return self.run.done

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "result" not in info:
                continue
            res: Result = info["result"]
            self.run.record(res, {"episode": self.episodes, "raw_reward": info.get("raw_reward", res.reward),
                                  "baseline": info.get("baseline", float("nan")), "sigma": self.noise.sigma,
                                  "warmup": self.num_timesteps <= self.model.learning_starts,  # type: ignore[attr-defined]
                                  "wall": time.perf_counter() - self.t0})
            run_dir = self.run.searcher.run_dir
            if run_dir is not None and self.checkpoint_every and self.episodes % self.checkpoint_every == 0:
                self.checkpoint(Path(run_dir))
        return True

    def checkpoint(self, run_dir: Path) -> None:
        """Agent, replay buffer, then ``state.json`` (written last: what it counts is on disk)."""
        with atomic_path(run_dir / "agent.zip") as tmp:
            self.model.save(tmp)
        with atomic_path(run_dir / "replay.pkl") as tmp:
            self.model.save_replay_buffer(tmp)  # type: ignore[attr-defined]
        best = self.run.best
        state = {"episodes": self.episodes, "timesteps": int(self.num_timesteps),
                 "baseline": self.wrapper.baseline, "noise_episodes": self.noise.episodes,
                 "best": None if best is None else {"reward": best[0], "policy": best[1], "row": best[2]}}
        atomic_write_text(run_dir / "state.json", json.dumps(state, indent=1, default=str))


def _make_model(config: AgentConfig, env: gym.Env, n_layers: int, noise: ActionNoise):
    buffer = (config.buffer_episodes or config.episodes) * n_layers
    model = ALGOS[config.algo](
        "MlpPolicy", env, learning_rate=config.critic_lr, buffer_size=buffer,
        learning_starts=config.warmup_episodes * n_layers, batch_size=config.batch_size, tau=config.tau,
        gamma=config.gamma, train_freq=(1, "episode"), gradient_steps=-1, action_noise=noise, seed=config.seed,
        device=config.device, policy_kwargs={"net_arch": {"pi": list(config.net_arch), "qf": list(config.net_arch)}})
    model.actor_lr, model.critic_lr = config.actor_lr, config.critic_lr
    model.credit = config.credit
    return model


class AmcSearcher(Searcher):
    """The AMC agent behind the searcher interface.

    ``run(progress)`` (and ``run_agent``): the search loop with the ``drive`` hook: SB3's ``learn()``
    plays the episodes in a ``PruningEnv`` that scores each episode's policy, and ``SearchLogger``
    records every episode with the loop and checkpoints; ``start`` resumes the agent, its replay
    buffer, noise and baseline from the run folder's last checkpoint (``state.json``); ``finish``
    writes the last checkpoint. ``seed_policies`` are played as the first warm-up episodes.

    ``propose()`` / ``observe(policy, result)`` (ask and tell, no checkpoints; an agent of their own,
    built on first use): ``propose()`` rolls the actor (random actions during the warm-up, then
    actor + decaying noise) over the layers and returns the projected policy; ``observe`` stores the
    episode's transitions with the baseline-shifted reward in the replay buffer and, after the
    warm-up, takes one gradient step per transition. The same settings and networks as ``run``."""

    def __init__(self, evaluator: Evaluator, config: AgentConfig = AgentConfig(),
                 seed_policies: Sequence[Mapping[str, float]] = (), run_dir: str | Path | None = None,
                 resume: bool = True) -> None:
        self.evaluator, self.config, self.total = evaluator, config, config.episodes
        self.seed_policies, self.resume = list(seed_policies), resume
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._ask: tuple | None = None  # the ask/tell agent: (env, model, noise, baseline), built on first use
        self.episodes = 0  # ask/tell episodes observed
        self._pending: Proposals[list[tuple]] = Proposals()
        self._demos: list[np.ndarray] = []
        self.learner: AmcDDPG | AmcTD3 | None = None  # run()'s agent (resumed from the run folder)
        self._learning: tuple[RewardBaseline, DecayingTruncatedNormal, int, bool] | None = None
        self._logger: SearchLogger | None = None
        self._played = False  # run() played episodes (so it ends with a checkpoint)

    # -- ask and tell ------------------------------------------------------------------------------------
    def _ask_tell(self) -> tuple:
        if self._ask is None:
            from stable_baselines3.common.logger import configure

            config = self.config
            env = PruningEnv(self.evaluator, evaluate=False, fill=config.fill_budget)
            noise = DecayingTruncatedNormal(config.sigma, config.sigma_decay, config.warmup_episodes, seed=config.seed)
            model = _make_model(config, env, len(env.names), noise)
            model.set_logger(configure(None, [""]))  # train() logs; no output wanted
            env.action_space.seed(config.seed)
            self._ask = (env, model, noise, MovingBaseline(config.baseline_alpha))
            self._demos = _demo_actions(env, self.seed_policies, config.warmup_episodes)
        return self._ask

    @property
    def env(self) -> PruningEnv:
        return self._ask_tell()[0]

    @property
    def model(self) -> AmcDDPG | AmcTD3:
        return self._ask_tell()[1]

    def propose(self) -> Policy:
        env, model, noise, _ = self._ask_tell()
        obs, _ = env.reset(seed=self.config.seed + self.episodes)
        steps, done, info = [], False, {}
        warm = self.episodes < self.config.warmup_episodes
        while not done:
            if warm and self._demos:
                action = self._demos.pop(0)
            elif warm:
                action = env.action_space.sample()
            else:
                action, _ = model.predict(obs, deterministic=True)
                action = np.clip(action + noise(), -1.0, 1.0).astype(np.float32)
            nxt, _, done, _, info = env.step(action)
            steps.append((obs, nxt, np.asarray(action, dtype=np.float32).reshape(1), done))
            obs = nxt
        policy = info["policy"]
        self._pending.add(policy, steps)
        return policy

    def observe(self, policy: Policy, result: Result) -> None:
        _, model, noise, baseline = self._ask_tell()
        steps = self._pending.take(policy)
        r = result.reward if math.isfinite(result.reward) else 0.0
        shaped, _ = baseline.shift(r)
        final = self.config.credit == "final"
        for obs, nxt, action, done in steps:
            scaled = model.policy.scale_action(action)
            model.replay_buffer.add(obs[None], nxt[None], scaled[None],  # type: ignore[union-attr]
                                    np.array([shaped if done or final else 0.0]), np.array([done or final]), [{}])
        self.episodes += 1
        noise.reset()
        model.num_timesteps += len(steps)
        if self.episodes > self.config.warmup_episodes:
            model.train(gradient_steps=len(steps), batch_size=self.config.batch_size)

    # -- the search loop's hooks (amc.search.base.Searcher) -----------------------------------------------
    def start(self) -> int:
        """Build ``run``'s agent: resumed from the run folder's last checkpoint, else new."""
        config, run = self.config, self.run_dir
        env = PruningEnv(self.evaluator, fill=config.fill_budget)
        n_layers = len(env.names)
        state = None
        if run is not None and self.resume and (run / "state.json").exists():
            try:
                state = json.loads((run / "state.json").read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"cannot read agent state {run / 'state.json'}: {e}") from None
        done = int(state["episodes"]) if state else 0
        wrapper = RewardBaseline(env, config.baseline_alpha, state["baseline"] if state else None)
        noise = DecayingTruncatedNormal(config.sigma, config.sigma_decay, config.warmup_episodes,
                                        episodes=state["noise_episodes"] if state else 0, seed=config.seed)
        if state is not None:
            assert run is not None
            agent_zip, replay = _own_file(run, "agent.zip"), _own_file(run, "replay.pkl")
            try:
                model = ALGOS[config.algo].load(agent_zip, env=wrapper, device=config.device)
                model.load_replay_buffer(replay)
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"cannot resume the agent from {run}: {e}") from None
            model.action_noise = noise
            model.credit = config.credit
        else:
            model = _make_model(config, wrapper, n_layers, noise)
        model.actor_lr, model.critic_lr = config.actor_lr, config.critic_lr
        # on resume: the ones not yet played
        model.demo_actions = _demo_actions(env, self.seed_policies, config.warmup_episodes)[done * n_layers:]
        self.learner, self._learning = model, (wrapper, noise, n_layers, state is None)
        return done

    def drive(self, run: SearchRun) -> bool:
        """SB3's ``learn()`` plays the episodes left; ``SearchLogger`` records each with ``run``."""
        assert self.learner is not None and self._learning is not None, "start() builds the agent"
        wrapper, noise, n_layers, fresh = self._learning
        self._logger = SearchLogger(run, noise, wrapper, self.config.checkpoint_every)
        remaining = self.total - run.done
        self._played = remaining > 0
        if remaining > 0:
            self.learner.learn(total_timesteps=remaining * n_layers, callback=self._logger, reset_num_timesteps=fresh)
        return True

    def finish(self, result: SearchResult) -> SearchResult:
        if self.run_dir is not None and self._played and self.config.checkpoint_every and self._logger is not None:
            self._logger.checkpoint(self.run_dir)
        result.agent = self.learner
        return result

    def run(self, progress: Callable[[Progress], None] | None = None,
            on_episode: Callable[[dict, dict | None], None] | None = None) -> SearchResult:
        """The search loop over this agent; ``on_episode(row, best row)`` after every episode."""
        return run_search(self, progress, on_episode)


def _demo_actions(env: PruningEnv, policies: Sequence[Mapping[str, float]], warmup: int) -> list[np.ndarray]:
    """The per-step actions that play ``policies`` as episodes, as many as fit in the warm-up."""
    return [a for p in policies[:warmup] for a in env.actions_of(dict(p))]


def _own_file(run: Path, name: str) -> Path:
    """``run/name`` if it is a regular file of the run folder itself. SB3's agent zip and replay
    buffer are unpickled on load, so they are read only from files this run wrote: a symlink, or a
    path that resolves outside the folder, is refused."""
    path = run / name
    real = path.resolve()
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"cannot resume the agent from {run}: {name} is missing")
    if path.is_symlink() or not real.is_relative_to(run.resolve()) or not real.is_file():
        raise CheckpointError(f"refusing to load {path}: agent checkpoints are read only from regular "
                              f"files inside the run folder {run} (they are pickles)")
    return real


def run_agent(evaluator: Evaluator, config: AgentConfig = AgentConfig(), run_dir: str | Path | None = None,
              on_episode: Callable[[dict, dict | None], None] | None = None, resume: bool = True,
              seed_policies: Sequence[Mapping[str, float]] = ()) -> SearchResult:
    """Search with the AMC agent until ``config.episodes`` episodes are done in total (``AmcSearcher``
    run by the search loop). ``seed_policies`` (for instance the uniform and the sensitivity-picked
    policies) are played as the first warm-up episodes, so the agent's replay buffer and its best
    policy start from them; as many as fit in the warm-up are used."""
    return AmcSearcher(evaluator, config, seed_policies, run_dir, resume).run(on_episode=on_episode)
