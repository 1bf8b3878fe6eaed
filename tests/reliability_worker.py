"""A search worker process for the reliability tests (killed with SIGKILL, run side by side).

    python -m tests.reliability_worker optuna --storage URL --study NAME --trials N --seed S --log FILE
    python -m tests.reliability_worker agent --run DIR --episodes N --log FILE

Both search a tiny VGG on a small synthetic CIFAR-shaped data set (no shared files needed) with
the real ``Evaluator``, ``OptunaSearcher`` and ``run_agent``. ``--delay`` sleeps inside every
evaluation so a test can kill the worker in the middle of one. ``--log`` gets one JSON line per
finished trial or episode (appended and flushed at once: what the worker saw as done before it
died); the tests compare it with what the study or the run folder kept.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from amc.budget import Budget
from amc.data import Cifar10, Splits, make_splits
from amc.evaluator import EvalConfig, Evaluator, Result
from amc.models import VGG

TRAIN, TEST, HELDOUT = 256, 64, 128  # synthetic images: enough for BN recalibration and a score
CALIB = 128  # BN recalibration images per evaluation


def tiny_model() -> VGG:
    import torch

    torch.manual_seed(0)
    return VGG((8, "M", 16, "M", 16, "M"), num_classes=10).eval()  # widths 8/16, as conftest's tiny VGG


def synthetic_splits(seed: int = 0, train: int = TRAIN) -> Splits:
    """Random images with labels that depend on the mean colour, so accuracy varies with pruning.
    ``train`` images in all, ``HELDOUT`` of them held out."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(train + TEST, 32, 32, 3), dtype=np.uint8)  # CIFAR's HWC uint8 shape
    y = (x.reshape(len(x), -1, 3).mean(1).argmax(1) * 3 + rng.integers(0, 3, len(x))).clip(0, 9)
    data = Cifar10(x[:train], y[:train].astype(np.int64), x[train:], y[train:].astype(np.int64))
    return make_splits(data, heldout=HELDOUT)


class SlowEvaluator(Evaluator):
    """The real evaluator with ``delay`` seconds of sleep first (a window to kill the worker in)."""

    def __init__(self, *args, delay: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay

    def evaluate(self, policy: Mapping[str, float]) -> Result:
        time.sleep(self.delay)
        return super().evaluate(policy)


def make_evaluator(delay: float, budget: str = "size=0.5", **config) -> SlowEvaluator:
    return SlowEvaluator(tiny_model(), synthetic_splits(), Budget.parse(budget),
                         EvalConfig(calib_images=CALIB, **config), delay=delay)


def _append(log: Path, record: dict) -> None:
    with open(log, "a") as f:  # one line per finished unit, flushed before the next starts
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_optuna(args: argparse.Namespace) -> None:
    from amc.search.optuna import OptunaConfig, OptunaSearcher

    ev = make_evaluator(args.delay)
    cfg = OptunaConfig(study=args.study, storage=args.storage, seed=args.seed, n_trials=args.trials,
                       sensitivity_ratios=(0.5,), n_startup_trials=2,  # a 1-point scan; 2 random trials
                       heartbeat_interval=args.heartbeat, grace_period=args.grace)
    searcher = OptunaSearcher(ev, cfg)

    def on_trial(trial, completed: int) -> None:
        _append(args.log, {"pid": os.getpid(), "number": trial.number, "state": trial.state.name,
                           "value": trial.value if trial.values else None,
                           "params": trial.params})

    if args.ready is not None:  # tell the test this worker has joined the study ...
        args.ready.touch()
    while args.go is not None and not args.go.exists():  # ... and start trials when it says so
        time.sleep(0.05)  # poll every 50 ms
    searcher.run(on_trial=on_trial)


def run_amc(args: argparse.Namespace) -> None:
    from amc.search.agent import AgentConfig, run_agent

    ev = make_evaluator(args.delay)
    cfg = AgentConfig(episodes=args.episodes, warmup_episodes=1, batch_size=4, net_arch=(16, 16),
                      checkpoint_every=1, seed=0)  # tiny actor/critic; a checkpoint after every episode

    def on_episode(row: dict, best: dict | None) -> None:
        _append(args.log, {"pid": os.getpid(), "episode": int(row["episode"]), "reward": row["reward"]})

    run_agent(ev, cfg, args.run, on_episode=on_episode)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="reliability_worker")
    sub = p.add_subparsers(dest="what", required=True)
    o = sub.add_parser("optuna")
    o.add_argument("--storage", required=True)
    o.add_argument("--study", required=True)
    o.add_argument("--trials", type=int, required=True)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--heartbeat", type=int, default=1)  # seconds between heartbeats
    o.add_argument("--grace", type=int, default=2)  # seconds without one before a trial is stale
    o.add_argument("--ready", type=Path, default=None, help="touched once the study is opened")
    o.add_argument("--go", type=Path, default=None, help="wait for this file before the first trial")
    a = sub.add_parser("agent")
    a.add_argument("--run", type=Path, required=True)
    a.add_argument("--episodes", type=int, required=True)
    for q in (o, a):
        q.add_argument("--delay", type=float, default=0.0)
        q.add_argument("--log", type=Path, required=True)
    args = p.parse_args(argv)
    (run_optuna if args.what == "optuna" else run_amc)(args)


if __name__ == "__main__":
    main()
