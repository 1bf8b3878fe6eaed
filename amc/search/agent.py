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
or, with the searcher interface the Optuna searcher shares, ``AmcSearcher(evaluator, config, run_dir=...)``
-> ``run(progress)`` (the same as ``run_agent``), or ``propose() -> Policy`` -> ``evaluator.evaluate``
-> ``observe(policy, result)``, repeated (ask and tell: no checkpoints).
Inside: the env is wrapped in ``RewardBaseline``; ``SearchLogger`` (an SB3 callback) logs every
episode to ``run_dir/episodes.csv`` (atomic), tracks the best feasible policy, and every
``checkpoint_every`` episodes saves the agent (``agent.zip``), its replay buffer (``replay.pkl``)
and ``state.json`` (episodes done, baseline, best). A new ``run_agent`` on the same ``run_dir``
resumes from them (``DDPG.load``, ``load_replay_buffer``) and continues to ``episodes`` in total;
episodes logged after the last checkpoint are dropped and run again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise

from amc.budget import Policy
from amc.envs import PruningEnv
from amc.errors import AmcError, CheckpointError
from amc.evaluator import Evaluator, Result
from amc.io import atomic_path, atomic_write_text
from amc.search.base import Progress, Proposals, Searcher, SearchResult

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


AgentResult = SearchResult  # the one result type of every searcher (``episodes`` = ``trials``)


class SearchLogger(BaseCallback):
    """Logs every episode, tracks the best feasible policy, checkpoints agent + replay buffer."""

    def __init__(self, run_dir: Path | None, noise: DecayingTruncatedNormal, wrapper: RewardBaseline,
                 checkpoint_every: int = 0, rows: list[dict] | None = None, episodes: int = 0,
                 best: tuple[float, Policy, dict] | None = None,
                 on_episode: Callable[[dict, dict | None], None] | None = None) -> None:
        super().__init__()
        self.run_dir, self.noise, self.wrapper = run_dir, noise, wrapper
        self.checkpoint_every = checkpoint_every
        self.rows: list[dict] = rows or []
        self.episodes = episodes
        self.best = best  # (reward, policy, result row)
        self.best_result: Result | None = None
        self.on_episode = on_episode
        self.t0 = time.perf_counter()

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "result" not in info:
                continue
            res: Result = info["result"]
            row = {"episode": self.episodes, "raw_reward": info.get("raw_reward", res.reward),
                   "baseline": info.get("baseline", float("nan")), "sigma": self.noise.sigma,
                   "warmup": self.num_timesteps <= self.model.learning_starts,  # type: ignore[attr-defined]
                   "wall": time.perf_counter() - self.t0, **res.row()}
            self.rows.append(row)
            self.episodes += 1
            if res.feasible and math.isfinite(res.reward) and (self.best is None or res.reward > self.best[0]):
                self.best = (res.reward, dict(res.policy), res.row())
                self.best_result = res
            if self.on_episode is not None:
                self.on_episode(row, self.best[2] if self.best else None)
            if self.run_dir is not None:
                self.write_csv()
                if self.checkpoint_every and self.episodes % self.checkpoint_every == 0:
                    self.checkpoint()
        return True

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def write_csv(self) -> None:
        assert self.run_dir is not None
        with atomic_path(self.run_dir / "episodes.csv") as tmp:
            self.frame().to_csv(tmp, index=False)

    def checkpoint(self) -> None:
        assert self.run_dir is not None
        with atomic_path(self.run_dir / "agent.zip") as tmp:
            self.model.save(tmp)
        with atomic_path(self.run_dir / "replay.pkl") as tmp:
            self.model.save_replay_buffer(tmp)  # type: ignore[attr-defined]
        state = {"episodes": self.episodes, "timesteps": int(self.num_timesteps),
                 "baseline": self.wrapper.baseline, "noise_episodes": self.noise.episodes,
                 "best": None if self.best is None else {"reward": self.best[0], "policy": self.best[1],
                                                         "row": self.best[2]}}
        atomic_write_text(self.run_dir / "state.json", json.dumps(state, indent=1, default=str))


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
    """The AMC agent behind the searcher interface: ``propose()`` rolls the actor (random actions
    during the warm-up, then actor + decaying noise) over the layers and returns the projected
    policy; ``observe(policy, result)`` stores the episode's transitions with the baseline-shifted
    reward in the replay buffer and, after the warm-up, takes one gradient step per transition.
    The same agent, settings and networks as ``run_agent``; no checkpoints. ``run(progress)`` is
    ``run_agent`` on ``run_dir`` (checkpointed, resumed; its own agent, not the ask/tell one)."""

    def __init__(self, evaluator: Evaluator, config: AgentConfig = AgentConfig(),
                 seed_policies: Sequence[Mapping[str, float]] = (), run_dir: str | Path | None = None,
                 resume: bool = True) -> None:
        from stable_baselines3.common.logger import configure

        self.evaluator, self.config = evaluator, config
        self.seed_policies, self.run_dir, self.resume = list(seed_policies), run_dir, resume
        self.env = PruningEnv(evaluator, evaluate=False, fill=config.fill_budget)
        self.n_layers = len(self.env.names)
        self.noise = DecayingTruncatedNormal(config.sigma, config.sigma_decay, config.warmup_episodes,
                                             seed=config.seed)
        self.model = _make_model(config, self.env, self.n_layers, self.noise)
        self.model.set_logger(configure(None, [""]))  # train() logs; no output wanted
        self.env.action_space.seed(config.seed)
        self.baseline = MovingBaseline(config.baseline_alpha)
        self.episodes = 0
        self._pending: Proposals[list[tuple]] = Proposals()
        self._demos = _demo_actions(self.env, seed_policies, config.warmup_episodes)

    def propose(self) -> Policy:
        obs, _ = self.env.reset(seed=self.config.seed + self.episodes)
        steps, done, info = [], False, {}
        warm = self.episodes < self.config.warmup_episodes
        while not done:
            if warm and self._demos:
                action = self._demos.pop(0)
            elif warm:
                action = self.env.action_space.sample()
            else:
                action, _ = self.model.predict(obs, deterministic=True)
                action = np.clip(action + self.noise(), -1.0, 1.0).astype(np.float32)
            nxt, _, done, _, info = self.env.step(action)
            steps.append((obs, nxt, np.asarray(action, dtype=np.float32).reshape(1), done))
            obs = nxt
        policy = info["policy"]
        self._pending.add(policy, steps)
        return policy

    def observe(self, policy: Policy, result: Result) -> None:
        steps = self._pending.take(policy)
        r = result.reward if math.isfinite(result.reward) else 0.0
        shaped, _ = self.baseline.shift(r)
        final = self.config.credit == "final"
        for obs, nxt, action, done in steps:
            scaled = self.model.policy.scale_action(action)  # type: ignore[union-attr]
            self.model.replay_buffer.add(obs[None], nxt[None], scaled[None],  # type: ignore[union-attr]
                                         np.array([shaped if done or final else 0.0]), np.array([done or final]),
                                         [{}])
        self.episodes += 1
        self.noise.reset()
        self.model.num_timesteps += len(steps)
        if self.episodes > self.config.warmup_episodes:
            self.model.train(gradient_steps=len(steps), batch_size=self.config.batch_size)

    def run(self, progress: Callable[[Progress], None] | None = None,
            on_episode: Callable[[dict, dict | None], None] | None = None) -> SearchResult:
        seen = {"first": -1, "feasible": 0}

        def each(row: dict, best: dict | None) -> None:
            if on_episode is not None:
                on_episode(row, best)
            if progress is not None:
                if seen["first"] < 0:
                    seen["first"] = int(row["episode"])
                seen["feasible"] += bool(row["feasible"])  # this run's (earlier ones are not re-read)
                done = int(row["episode"]) + 1
                progress(Progress(done, self.config.episodes, seen["feasible"], done - seen["first"],
                                  None if best is None else float(best["reward"]), seen["first"]))

        return run_agent(self.evaluator, self.config, self.run_dir, on_episode=each, resume=self.resume,
                         seed_policies=self.seed_policies)


def _demo_actions(env: PruningEnv, policies: Sequence[Mapping[str, float]], warmup: int) -> list[np.ndarray]:
    """The per-step actions that play ``policies`` as episodes, as many as fit in the warm-up."""
    return [a for p in policies[:warmup] for a in env.actions_of(dict(p))]


def _result_from_row(row: dict) -> Result:
    policy = {k[2:]: float(v) for k, v in row.items() if k.startswith("r:")}
    lat = row.get("latency")
    return Result(policy, float(row["accuracy"]), float(row["size"]), float(row["macs"]), float(row["params"]),
                  None if lat is None or (isinstance(lat, float) and math.isnan(lat)) else float(lat),
                  float(row["reward"]), bool(row["feasible"]), str(row.get("reason") or ""),
                  float(row["seconds"]))


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
    """Search with the AMC agent until ``config.episodes`` episodes are done in total.
    ``seed_policies`` (for instance the uniform and the sensitivity-picked policies) are played as
    the first warm-up episodes, so the agent's replay buffer and its best policy start from them;
    as many as fit in the warm-up are used."""
    t0 = time.perf_counter()
    run = Path(run_dir) if run_dir is not None else None
    env = PruningEnv(evaluator, fill=config.fill_budget)
    n_layers = len(env.names)
    state = None
    if run is not None and resume and (run / "state.json").exists():
        try:
            state = json.loads((run / "state.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read agent state {run / 'state.json'}: {e}") from None
    done = int(state["episodes"]) if state else 0
    wrapper = RewardBaseline(env, config.baseline_alpha, state["baseline"] if state else None)
    noise = DecayingTruncatedNormal(config.sigma, config.sigma_decay, config.warmup_episodes,
                                    episodes=state["noise_episodes"] if state else 0, seed=config.seed)
    cls = ALGOS[config.algo]
    if state is not None:
        assert run is not None
        agent_zip, replay = _own_file(run, "agent.zip"), _own_file(run, "replay.pkl")
        try:
            model = cls.load(agent_zip, env=wrapper, device=config.device)
            model.load_replay_buffer(replay)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot resume the agent from {run}: {e}") from None
        model.action_noise = noise
        model.credit = config.credit
    else:
        model = _make_model(config, wrapper, n_layers, noise)
    model.actor_lr, model.critic_lr = config.actor_lr, config.critic_lr
    # on resume: the ones not yet played
    model.demo_actions = _demo_actions(env, seed_policies, config.warmup_episodes)[done * n_layers:]
    rows: list[dict] = []
    best = None
    if state is not None and run is not None and (run / "episodes.csv").exists():
        rows = pd.read_csv(run / "episodes.csv").head(done).to_dict("records")
        if state.get("best"):
            best = (state["best"]["reward"], state["best"]["policy"], state["best"]["row"])
    logger = SearchLogger(run, noise, wrapper, config.checkpoint_every, rows, done, best, on_episode)
    remaining = config.episodes - done
    if remaining > 0:
        model.learn(total_timesteps=remaining * n_layers, callback=logger, reset_num_timesteps=state is None)
        if run is not None:
            logger.write_csv()
            if config.checkpoint_every:
                logger.checkpoint()
    best_result = logger.best_result
    if best_result is None and logger.best is not None:
        best_result = _result_from_row(logger.best[2])
    return SearchResult(None if logger.best is None else logger.best[1], best_result, logger.frame(),
                        time.perf_counter() - t0, done, extra={"config": asdict(config)}, agent=model)
