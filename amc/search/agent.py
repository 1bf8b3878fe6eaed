"""The AMC agent: stable-baselines3 DDPG (or TD3) over ``amc.envs.PruningEnv`` with AMC's settings.

AMC's settings (He et al. 2018; mit-han-lab/amc ``amc_search.py``, ``lib/agent.py``): actor and
critic of two 300-unit layers, actor learning rate 1e-4 and critic 1e-3, soft target updates tau
0.01, batch 64, no discount (the only reward is the episode's last), 800 episodes of which the
first 100 are uniformly random (no noise), then the actor's action inside a truncated normal of
width 1.0 on [-1, 1] (AMC's 0.5 on [0, 1]) decayed by 0.95 per episode, a replay buffer of the last
100 episodes, every transition of an episode stored with the episode's reward (``credit="final"``),
the rewards of every sampled batch centred (``baseline="batch"``), one gradient step per transition
after each episode (``gradient_steps``). The learner is ``amc.search.ddpg`` (how each of these is
hooked into SB3).

Where it deviates from AMC, and why: its width never decays under ``sigma_min`` (0.2), and every
other learning episode (``exploit_every``) perturbs the best episode so far instead of the actor's
actions (on ResNet-20 at macs=0.3, AMC's decay left the actor replaying one policy, under the uniform
policy's reward, from about 100 episodes after the warm-up on; see ``reports/agent.md``);
``seed_policies`` (the uniform and the sensitivity-picked
policies, say) are played as the first warm-up episodes, as Optuna enqueues them as its first
trials; each episode's policy is filled to spend the whole budget (``AgentConfig.fill_budget``,
``Projector.fill``), since AMC's projection only ever raises ratios, and the stored transitions are
then those of the episode that plays the filled policy (``PruningEnv.trajectory``), so the critic
learns the actions that were scored; AMC centres batches on a moving average of batch means, this
agent on the batch's own mean.

Every run writes its diagnostics (``agent_diagnostics``): per episode in ``episodes.csv`` the
share of the agent's actions exactly at a bound of [-1, 1] (``at_bound``), the share of the scored
ratios at a layer's bound (``ratio_at_bound``), the exploration width and the best reward so far;
in ``agent_diagnostics.json`` the learning curve (best and mean reward per window of episodes), the
rewards with their moving best, and the actor's own (noise-free) policy at the end of the warm-up
and at the end, so a user sees whether the agent learned or searched at random.

Lifecycle: ``AgentConfig(...)`` -> ``run_agent(evaluator, config, run_dir)`` -> ``SearchResult``;
or, with the searcher interface every searcher shares, ``AmcSearcher(evaluator, config, run_dir=...)``
-> ``run(progress)`` (the same as ``run_agent``), or ``propose() -> Policy`` -> ``evaluator.evaluate``
-> ``observe(policy, result)``, repeated (ask and tell: no checkpoints; the same exploration and
warm-up as ``run``, so the same seed proposes the same warm-up).
Inside ``run``: the one search loop (``amc.search.loop``) calls the agent's ``start`` (resume),
``drive`` (SB3's ``learn()`` plays the episodes in the env) and ``finish`` (the last checkpoint and
the diagnostics) hooks; ``SearchLogger`` (an SB3 callback) records every episode with the loop,
which logs it to ``run_dir/episodes.csv`` (atomic) and tracks the best feasible policy, and every
``checkpoint_every`` episodes saves the agent (``agent.zip``), its replay buffer (``replay.pkl``)
and ``state.json`` (episodes done, best). A new ``run_agent`` on the same ``run_dir`` resumes from
them (``DDPG.load``, ``load_replay_buffer``) and continues to ``episodes`` in total; episodes
logged after the last checkpoint are dropped and run again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from stable_baselines3.common.callbacks import BaseCallback

from amc.budget import Policy
from amc.envs import PruningEnv
from amc.errors import AmcError, CheckpointError
from amc.evaluator import Evaluator, Result
from amc.io import atomic_path, atomic_write_text
from amc.search.base import Progress, Proposals, Searcher, SearchResult
from amc.search.ddpg import ALGOS, BASELINES, CREDITS, AmcDDPG, AmcReplayBuffer, AmcTD3, exploration_sigma
from amc.search.loop import SearchRun, run_search

AT_BOUND = 1e-6  # an action within this of -1 or 1 (a ratio within it of its bound) counts as on the bound
DIAGNOSTICS = "agent_diagnostics.json"


@dataclass(frozen=True)
class AgentConfig:
    algo: str = "ddpg"  # "ddpg" or "td3"
    episodes: int = 800  # total, warm-up included (AMC's train_episode)
    warmup_episodes: int = 100  # AMC: 100 episodes of uniformly random actions before learning
    sigma: float = 1.0  # exploration width: AMC's 0.5 on actions in [0, 1] is 1.0 on [-1, 1]
    sigma_decay: float = 0.95  # per episode after the warm-up (AMC's delta_decay)
    sigma_min: float = 0.2  # the width never decays under this (AMC: no floor)
    exploit_every: int = 2  # every this many learning episodes, one perturbs the best episode's actions (0: never)
    actor_lr: float = 1e-4  # AMC lra
    critic_lr: float = 1e-3  # AMC lrc
    tau: float = 0.01  # AMC soft target update
    batch_size: int = 64  # AMC bsize
    gamma: float = 1.0  # AMC: no discount; the episode's only reward is its last
    baseline: str = "batch"  # "batch": each sampled batch's rewards centred on its mean; "none"
    gradient_steps: int = 1  # gradient steps per stored transition, after each episode (AMC: 1)
    fill_budget: bool = True  # each episode's policy spends the whole budget (Projector.fill)
    credit: str = "final"  # "final": every step stored with the episode's reward (AMC's code); "td": last only
    buffer_episodes: int | None = 100  # replay buffer: the last this many episodes (AMC rmsize; None: the whole run)
    net_arch: tuple[int, ...] = (300, 300)  # AMC hidden1, hidden2 for the actor and the critic
    checkpoint_every: int = 25  # episodes between agent + replay-buffer checkpoints (0: never)
    window: int = 0  # episodes per window of the learning curve (0: a tenth of the episodes, at least 1)
    seed: int = 0
    device: str = "cpu"  # the 300x300 networks are faster on the CPU than a GPU round trip

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise AmcError(f"unknown agent {self.algo!r}; known: {', '.join(ALGOS)}")
        if self.credit not in CREDITS:
            raise AmcError(f"unknown credit {self.credit!r}; known: {', '.join(CREDITS)}")
        if self.baseline not in BASELINES:
            raise AmcError(f"unknown reward baseline {self.baseline!r}; known: {', '.join(BASELINES)}")
        if self.episodes < 1 or self.warmup_episodes < 0:
            raise AmcError("episodes must be >= 1 and warm-up episodes >= 0")
        if self.gradient_steps < 1 or self.sigma < 0 or not 0 < self.sigma_decay <= 1:
            raise AmcError("the agent needs gradient_steps >= 1, sigma >= 0 and a sigma decay in (0, 1]")
        if self.sigma_min < 0 or self.exploit_every < 0:
            raise AmcError("the agent needs sigma_min >= 0 and exploit_every >= 0")


def _make_model(config: AgentConfig, env, n_layers: int) -> AmcDDPG | AmcTD3:
    buffer = (config.buffer_episodes or config.episodes) * n_layers
    model = ALGOS[config.algo](
        "MlpPolicy", env, learning_rate=config.critic_lr, buffer_size=buffer,
        learning_starts=config.warmup_episodes * n_layers, batch_size=config.batch_size, tau=config.tau,
        gamma=config.gamma, train_freq=(1, "episode"), gradient_steps=config.gradient_steps * n_layers,
        action_noise=None, replay_buffer_class=AmcReplayBuffer, replay_buffer_kwargs={"baseline": config.baseline},
        seed=config.seed, device=config.device,
        policy_kwargs={"net_arch": {"pi": list(config.net_arch), "qf": list(config.net_arch)}})
    return model


def _configure(model: AmcDDPG | AmcTD3, config: AgentConfig, env: PruningEnv) -> None:
    """The settings the learner reads from the config and the environment (new or loaded)."""
    model.actor_lr, model.critic_lr = config.actor_lr, config.critic_lr
    model.n_layers, model.credit, model.explore_seed = len(env.names), config.credit, config.seed
    model.sigma0, model.sigma_decay, model.sigma_min = config.sigma, config.sigma_decay, config.sigma_min
    model.exploit_every = config.exploit_every
    model.trajectory = env.trajectory
    model.gradient_steps = config.gradient_steps * len(env.names)


def actor_policy(model: AmcDDPG | AmcTD3, env: PruningEnv) -> Policy:
    """The actor's own policy: one noise-free episode of its actions (projected and filled as the
    search's episodes are), played on ``env`` (an ``evaluate=False`` env of its own)."""
    obs, _ = env.reset()
    info: dict[str, Any] = {}
    for _ in env.names:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, _, _, info = env.step(action)
    return dict(info["policy"])


def at_bound(actions: Sequence[float]) -> float:
    """The share of ``actions`` (in [-1, 1]) within ``AT_BOUND`` of a bound."""
    a = np.abs(np.asarray(actions, dtype=np.float64).reshape(-1))
    return float((a >= 1.0 - AT_BOUND).mean()) if a.size else float("nan")


def ratios_at_bound(policy: Mapping[str, float], bounds: Mapping[str, tuple[float, float]]) -> float:
    """The share of ``policy``'s ratios within ``AT_BOUND`` of their layer's lower or upper bound."""
    hits = [min(abs(r - bounds[n][0]), abs(r - bounds[n][1])) <= AT_BOUND for n, r in policy.items()]
    return float(np.mean(hits)) if hits else float("nan")


def agent_diagnostics(frame: pd.DataFrame, warmup: int, window: int = 0,
                      actor: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What shows whether the agent learned: from a run's episode log (``episodes.csv``), the share of
    actions and ratios at a bound (warm-up and learning episodes apart), the reward per episode with
    its moving best, the best and mean reward per window of episodes (the learning curve), plus
    ``actor`` (its policies at the end of the warm-up and at the end)."""
    n = len(frame)
    reward = frame["reward"].astype(float).where(frame["feasible"].fillna(False).astype(bool)) if n else pd.Series([])
    best = reward.cummax().ffill().tolist() if n else []
    window = window or max(1, n // 10)
    windows = []
    for lo in range(0, n, window):
        r = reward.iloc[lo:lo + window].dropna()
        windows.append({"episodes": [lo, min(n, lo + window) - 1], "best": float(r.max()) if len(r) else None,
                        "mean": float(r.mean()) if len(r) else None})
    warm = frame["episode"] < warmup if n else pd.Series([], dtype=bool)

    def share(col: str, rows) -> float | None:
        if col not in frame or not rows.any():
            return None
        return float(frame.loc[rows, col].astype(float).mean())

    learn = ~warm
    return {"episodes": n, "warmup_episodes": int(min(warmup, n)),
            "at_bound": {"all": share("at_bound", warm | learn), "warmup": share("at_bound", warm),
                         "learning": share("at_bound", learn)},
            "ratio_at_bound": {"all": share("ratio_at_bound", warm | learn), "warmup": share("ratio_at_bound", warm),
                               "learning": share("ratio_at_bound", learn)},
            "best_reward": None if reward.dropna().empty else float(reward.max()),
            "best_episode": None if reward.dropna().empty else int(reward.idxmax()),
            "best_in_warmup": None if reward[warm].dropna().empty else float(reward[warm].max()),
            "best_after_warmup": None if reward[learn].dropna().empty else float(reward[learn].max()),
            "window": window, "curve": windows,
            "rewards": [None if math.isnan(x) else float(x) for x in reward.tolist()],
            "moving_best": [None if math.isnan(x) else float(x) for x in best],
            "actor": dict(actor or {})}


class SearchLogger(BaseCallback):
    """The agent's side of the search loop inside SB3's ``learn()``: hands every finished episode to
    the loop (``SearchRun.record``: the trials log, the best, progress) with the agent's own columns,
    records the actor's policy when the warm-up ends, and every ``checkpoint_every`` episodes saves
    the agent, its replay buffer and ``state.json``."""

    def __init__(self, searcher: AmcSearcher, run: SearchRun, checkpoint_every: int = 0) -> None:
        super().__init__()
        self.searcher, self.run = searcher, run
        self.checkpoint_every = checkpoint_every
        prior = run.rows[-1].get("wall") if run.rows else None  # a resumed run: its wall clock goes on
        self.t0 = time.perf_counter() - (float(prior) if prior is not None and math.isfinite(float(prior)) else 0.0)
        self.actions: list[float] = []  # the episode's actions so far, as the agent took them

    @property
    def episodes(self) -> int:
        return self.run.done

    def _on_step(self) -> bool:
        actions = self.locals.get("actions")
        if actions is not None:
            self.actions.extend(np.asarray(actions, dtype=np.float64).reshape(-1).tolist())
        for info in self.locals.get("infos", []):
            if "result" not in info:
                continue
            res: Result = info["result"]
            warm = self.episodes < self.searcher.config.warmup_episodes
            self.run.record(res, self.searcher.episode_columns(self.episodes, self.actions, res, warm,
                                                               time.perf_counter() - self.t0))
            self.actions = []
            if self.episodes == self.searcher.config.warmup_episodes:
                self.searcher.note_actor("warmup")
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
        state = {"episodes": self.episodes, "timesteps": int(self.num_timesteps), "actor": self.searcher.actor,
                 "best": None if best is None else {"reward": best[0], "policy": best[1], "row": best[2]}}
        atomic_write_text(run_dir / "state.json", json.dumps(state, indent=1, default=str))


class AmcSearcher(Searcher):
    """The AMC agent behind the searcher interface.

    ``run(progress)`` (and ``run_agent``): the search loop with the ``drive`` hook: SB3's ``learn()``
    plays the episodes in a ``PruningEnv`` that scores each episode's policy, and ``SearchLogger``
    records every episode with the loop and checkpoints; ``start`` resumes the agent and its replay
    buffer from the run folder's last checkpoint (``state.json``); ``finish`` writes the last
    checkpoint and ``agent_diagnostics.json``. ``seed_policies`` are played as the first warm-up
    episodes.

    ``propose()`` / ``observe(policy, result)`` (ask and tell, no checkpoints; an agent of their own,
    built on first use): ``propose()`` rolls the learner's exploration (``AmcDDPG.explore``: the
    seed policies, then uniform random actions during the warm-up, then the actor inside a truncated
    normal) over the layers and returns the projected, filled policy; ``observe`` stores the episode
    that plays it with its reward and, after the warm-up, takes ``gradient_steps`` gradient steps per
    transition. The same settings, networks and random numbers as ``run``."""

    def __init__(self, evaluator: Evaluator, config: AgentConfig = AgentConfig(),
                 seed_policies: Sequence[Mapping[str, float]] = (), run_dir: str | Path | None = None,
                 resume: bool = True) -> None:
        self.evaluator, self.config, self.total = evaluator, config, config.episodes
        # a starting policy over the budget is tightened, its shape kept, before it is played; one under it
        # spends the whole budget (``Projector.spend``)
        proj = evaluator.projector
        self.seed_policies, self.resume = [proj.spend(proj.meet(p)) for p in seed_policies], resume
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._ask: tuple[PruningEnv, AmcDDPG | AmcTD3] | None = None  # the ask/tell agent, built on first use
        self.episodes = 0  # ask/tell episodes observed
        self._pending: Proposals[list[float]] = Proposals()
        self.learner: AmcDDPG | AmcTD3 | None = None  # run()'s agent (resumed from the run folder)
        self._fresh = True
        self._logger: SearchLogger | None = None
        self._played = False  # run() played episodes (so it ends with a checkpoint)
        self.actor: dict[str, Policy] = {}  # the actor's own policy: "warmup" (end of the warm-up), "final"

    # -- ask and tell ------------------------------------------------------------------------------------
    def _ask_tell(self) -> tuple[PruningEnv, AmcDDPG | AmcTD3]:
        if self._ask is None:
            from stable_baselines3.common.logger import configure

            config = self.config
            env = PruningEnv(self.evaluator, evaluate=False, fill=config.fill_budget)
            model = _make_model(config, env, len(env.names))
            _configure(model, config, env)
            model.set_logger(configure(None, [""]))  # train() logs; no output wanted
            model.demo_actions = _demo_actions(env, self.seed_policies, config.warmup_episodes)
            self._ask = (env, model)
        return self._ask

    @property
    def env(self) -> PruningEnv:
        return self._ask_tell()[0]

    @property
    def model(self) -> AmcDDPG | AmcTD3:
        return self._ask_tell()[1]

    def propose(self) -> Policy:
        env, model = self._ask_tell()
        obs, _ = env.reset(seed=self.config.seed + self.episodes)
        actions, done, info = [], False, {}
        while not done:
            action = model.explore(obs[None])
            model.num_timesteps += 1
            obs, _, done, _, info = env.step(action.reshape(-1))
            actions.append(float(action.reshape(-1)[0]))
        policy = info["policy"]
        self._pending.add(policy, actions)
        return policy

    def observe(self, policy: Policy, result: Result) -> None:
        _, model = self._ask_tell()
        steps = self._pending.take(policy)
        r = result.reward if math.isfinite(result.reward) else 0.0
        model.add_episode(model.episode_transitions(dict(policy), r, []))
        self.episodes += 1
        if self.episodes > self.config.warmup_episodes:
            model.train(gradient_steps=len(steps) * self.config.gradient_steps, batch_size=self.config.batch_size)

    # -- what every run logs ---------------------------------------------------------------------------
    def episode_columns(self, episode: int, actions: Sequence[float], result: Result, warm: bool,
                        wall: float) -> dict[str, Any]:
        """The agent's own columns of an episode's log row: the exploration width it was played with,
        the share of its actions and ratios at a bound, the best reward so far."""
        after = episode - self.config.warmup_episodes
        sigma = exploration_sigma(self.config.sigma, self.config.sigma_decay, after, self.config.sigma_min)
        best = self._best_so_far
        if result.feasible and math.isfinite(result.reward) and (best is None or result.reward > best):
            best = result.reward
        self._best_so_far = best
        k = self.config.exploit_every
        exploit = not warm and k > 0 and after % k == k - 1 and (episode > 0 or self._best_so_far is not None)
        return {"episode": episode, "sigma": sigma, "warmup": warm, "exploit": exploit, "at_bound": at_bound(actions),
                "ratio_at_bound": ratios_at_bound(result.policy, self.evaluator.bounds),
                "best_so_far": float("nan") if best is None else best, "wall": wall}

    _best_so_far: float | None = None

    def note_actor(self, when: str) -> None:
        """Keep the actor's own noise-free policy now (``when``: "warmup" or "final")."""
        if self.learner is not None:
            env = PruningEnv(self.evaluator, evaluate=False, fill=self.config.fill_budget)
            self.actor[when] = actor_policy(self.learner, env)

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
        if state is not None:
            assert run is not None
            agent_zip, replay = _own_file(run, "agent.zip"), _own_file(run, "replay.pkl")
            try:
                model = ALGOS[config.algo].load(agent_zip, env=env, device=config.device)
                model.load_replay_buffer(replay)
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"cannot resume the agent from {run}: {e}") from None
            if not isinstance(model.replay_buffer, AmcReplayBuffer):
                raise CheckpointError(f"cannot resume the agent from {run}: its checkpoint is an older agent's "
                                      "(a reward baseline frozen in its replay buffer); start a new run folder")
            model.replay_buffer.baseline = config.baseline
            self.actor = dict(state.get("actor") or {})
            best = state.get("best")
            self._best_so_far = None if best is None else float(best["reward"])
        else:
            model = _make_model(config, env, n_layers)
        _configure(model, config, env)
        model.demo_actions = _demo_actions(env, self.seed_policies, config.warmup_episodes)[done * n_layers:]
        self.learner, self._fresh = model, state is None
        if done == config.warmup_episodes == 0 or (done >= config.warmup_episodes and "warmup" not in self.actor):
            self.note_actor("warmup")
        return done

    def drive(self, run: SearchRun) -> bool:
        """SB3's ``learn()`` plays the episodes left; ``SearchLogger`` records each with ``run``."""
        assert self.learner is not None, "start() builds the agent"
        self._logger = SearchLogger(self, run, self.config.checkpoint_every)
        remaining = self.total - run.done
        self._played = remaining > 0
        if remaining > 0:
            self.learner.learn(total_timesteps=remaining * self.learner.n_layers, callback=self._logger,
                               reset_num_timesteps=self._fresh)
        return True

    def finish(self, result: SearchResult) -> SearchResult:
        self.note_actor("final")
        if self.run_dir is not None and self._played and self.config.checkpoint_every and self._logger is not None:
            self._logger.checkpoint(self.run_dir)
        diag = agent_diagnostics(result.trials, self.config.warmup_episodes, self.config.window, self.actor)
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / DIAGNOSTICS, json.dumps(diag, indent=1))
        result.extra["diagnostics"] = diag
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
