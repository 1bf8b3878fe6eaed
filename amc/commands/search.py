"""``amc search CHECKPOINT``: search per-layer pruning ratios under a budget with the AMC agent or
Optuna, with a live progress line (best reward, share feasible, episodes per second) and a result
table at the end. Writes ``best_policy.yaml``, ``episodes.csv`` and ``summary.json`` to ``--out``
(plus the agent's checkpoints, or the Optuna study database, so a rerun resumes). When the reward saw
a subset of the held-out images or a short finetune, the top ``--rerank`` policies are re-scored on
every held-out image after the recovery on other batches, and the best of those is kept
(``rerank.csv``): the single best of hundreds of noisy rewards is biased upwards.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from amc.commands.common import add_data_args, add_model_args, load_model_arg, load_splits, progress
from amc.commands.options import LiveChoices, add_option_flags, config_from_args
from amc.errors import AmcError
from amc.search.base import reranks
from amc.search.registry import SEARCHERS

SCREEN_CALIB = 256  # calibration images of a --screen-images screen (reports/reward_cost.md: 256 keep the ranking)


def add_parser(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser("search", help="search per-layer ratios under a budget (AMC agent or Optuna)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_data_args(p)
    # the options of amc.options.CompressConfig this command takes; a search runs the searchers alone
    # (no "sensitivity" method), channel pruning and the AMC agent by default, longer
    add_option_flags(p, only=("method", "budget", "granularity", "episodes", "seed"), choices={"method": _searchers},
                     defaults={"method": "amc", "granularity": "channel", "episodes": 300})
    p.add_argument("--out", default="runs/search", help="run folder (resumes what it finds there)")
    p.add_argument("--no-resume", action="store_true", help="refuse to reuse an existing run folder")
    e = p.add_argument_group("evaluator")
    add_option_flags(e, only=("reward", "recovery", "recovery_steps", "calib_images", "eval_images", "score_on"))
    add_option_flags(e, only=("rerank",))
    e.add_argument("--rerank-seeds", default="1,2", help="recovery seeds of the re-rank (the search's is 0)")
    add_option_flags(e, only=("lower", "upper"))
    e.add_argument("--around", default=None, metavar="POLICY",
                   help="search a box of --radius around this policy file's ratios (and start from it)")
    e.add_argument("--radius", type=float, default=0.2, help="half-width of the --around box")
    add_option_flags(e, only=("criterion", "round_to"))
    e.add_argument("--lut", default=None, metavar="CSV", help="latency lookup table (for --budget latency=...)")
    a = p.add_argument_group("AMC agent")
    a.add_argument("--algo", choices=("ddpg", "td3"), default="ddpg")
    add_option_flags(a, only=("warmup",))
    a.add_argument("--checkpoint-every", type=int, default=25)
    o = p.add_argument_group("Optuna")
    add_option_flags(o, only=("study", "storage"), defaults={"study": "amc-search"})
    o.add_argument("--sampler", choices=LiveChoices(_samplers, "sampler"), default="tpe")
    o.add_argument("--sens-ratios", default="0.2,0.4,0.6,0.8",
                   help="ratios scanned per layer for the sensitivity-picked first trial ('' to skip it)")
    o.add_argument("--screen-images", type=int, default=None, metavar="N",
                   help="multi-fidelity: score each trial first on N held-out images after BN recalibration on "
                        "at most 256 train images; Optuna's successive halving keeps the best 1/--screen-eta of "
                        "them for the full reward (only fully scored trials can be the best)")
    o.add_argument("--screen-eta", type=int, default=3, help="successive halving's reduction factor")
    p.set_defaults(func=run)


def _searchers() -> list[str]:
    return list(SEARCHERS)


def _samplers() -> list[str]:
    from amc.search.samplers import SAMPLERS

    return list(SAMPLERS)


def _evaluator(args: argparse.Namespace, model, splits, reference: dict[str, float] | None = None):
    from amc.pipeline import build_evaluator

    config = config_from_args(args)
    if config.parsed_budget.kind == "latency" and args.lut is None:
        raise AmcError("a latency budget needs --lut CSV (the per-layer latency lookup table)")
    box = None
    if reference is not None:  # the search box: --radius around the reference policy's ratios
        from amc.budget import bounds_around

        box = bounds_around(reference, args.radius, config.lower, config.resolved_upper)
    return build_evaluator(model, splits, config, latency_table=args.lut, bounds=box)


def _screens(args: argparse.Namespace, model, splits, ev) -> tuple:
    """The cheaper evaluator of ``--screen-images`` (none without it): BN recalibration only, on fewer
    calibration and held-out images, same budget, layers and search box as ``ev``."""
    if args.screen_images is None:
        return ()
    if args.screen_images < 1:
        raise AmcError(f"--screen-images must be >= 1, got {args.screen_images}")
    if args.method != "optuna":
        raise AmcError("--screen-images (multi-fidelity screening) needs --method optuna")
    from dataclasses import replace

    from amc.evaluator import Evaluator

    cfg = replace(ev.config, recovery="bn", eval_images=args.screen_images,
                  calib_images=min(ev.config.calib_images, SCREEN_CALIB))
    return (Evaluator(model, splits, ev.budget, cfg, latency_table=ev.latency_table),)


def _heuristic_seeds(args: argparse.Namespace, model, ev) -> dict[str, dict[str, float]]:
    """Known policies both searchers start from besides the uniform (or ``--around``) one: for
    fine-grained pruning to a size budget, one global magnitude threshold and LAMP at that size
    (cheap to compute, and often hard to beat)."""
    if args.granularity != "fine" or ev.budget.kind != "size":
        return {}
    from amc.errors import PolicyError
    from amc.pruners.finegrained import global_policy, lamp_policy

    try:
        return {"global": global_policy(model, ev.budget.fraction, ev.names),
                "lamp": lamp_policy(model, ev.budget.fraction, ev.names)}
    except PolicyError:  # the size cannot be reached by these layers alone: the projection decides
        return {}


def _info(best: float | None, feasible: int, counted: int, ran: int, t0: float) -> str:
    """``feasible`` of ``counted`` trials were feasible; ``ran`` trials since ``t0``."""
    rate = ran / max(time.perf_counter() - t0, 1e-9)
    b = "-" if best is None else f"{best:.4f}"
    return f"best {b} | feasible {feasible / max(counted, 1):.0%} | {rate:.2f} ep/s"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.no_resume and out.exists() and any(out.iterdir()):
        raise AmcError(f"run folder {out} is not empty and --no-resume was given")
    config_from_args(args)  # every option checked before the model and the data are read
    rerank_seeds, ratios = _lists(args)
    reference = None
    if args.around is not None:  # the searchers start from it: AMC's first episode, an enqueued trial
        from amc.policy import load_policy_file

        reference = load_policy_file(args.around)
    model = load_model_arg(args)
    splits = load_splits(args)
    t0 = time.perf_counter()
    ev = _evaluator(args, model, splits, reference)
    screens = _screens(args, model, splits, ev)
    seeds = _heuristic_seeds(args, model, ev)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    # the first trials: the --around policy (else the uniform one), then the heuristics' policies
    start = ({"around": reference} if reference else {"uniform": ev.uniform_policy()}) | seeds
    res = _search(args, ev, start, ratios, screens, out, t1)
    frame, best_policy, best = res.trials, res.best_policy, res.best_result
    from amc.io import atomic_path, atomic_write_text
    from amc.policy import save_policy_file

    with atomic_path(out / "episodes.csv") as tmp:  # one row per episode / trial (the agent's as it wrote it)
        frame.to_csv(tmp, index=False)
    search_s = time.perf_counter() - t1
    if best_policy is None or best is None:
        raise AmcError("the search found no feasible policy; raise --upper or the budget")
    reranked = None
    if args.rerank and reranks(ev):  # a reward on a subset of the held-out images, or after a finetune
        reranked, winner = _rerank(args, ev, frame, rerank_seeds, out, first=len(start))
        if winner is not None:
            best_policy, best = winner
    save_policy_file(best_policy, out / "best_policy.yaml")
    summary = {"checkpoint": str(args.checkpoint), "method": args.method, "budget": args.budget,
               "granularity": args.granularity, "criterion": args.criterion, "episodes": len(frame),
               "best": best.row(),
               "seed_policies": ["around" if reference else "uniform", *seeds],
               "rerank": None if reranked is None else {k: v for k, v in reranked.items() if k != "ranked"} |
               {"winner_search_rank": reranked["ranked"][0]["rank"] if reranked["ranked"] else None},
               "setup_s": setup_s, "search_s": search_s, "evaluator_calls": ev.calls,
               "screen_calls": [sc.calls for sc in screens],
               "pruned_trials": int((frame["state"] == "PRUNED").sum()) if "state" in frame else 0}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    _print_table(args, best, best_policy, frame, search_s, reranked)
    return 0


def _lists(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``--rerank-seeds`` and ``--sens-ratios``, checked before any work."""
    if args.rerank < 0:
        raise AmcError("--rerank must be >= 0")
    try:
        rerank_seeds = tuple(int(x) for x in args.rerank_seeds.split(",") if x.strip())
    except ValueError:
        raise AmcError(f"--rerank-seeds must be comma-separated integers, got {args.rerank_seeds!r}") from None
    try:
        ratios = tuple(float(x) for x in args.sens_ratios.split(",") if x.strip())
    except ValueError:
        raise AmcError(f"--sens-ratios must be comma-separated numbers, got {args.sens_ratios!r}") from None
    return rerank_seeds, ratios


def _search(args: argparse.Namespace, ev, start: dict, ratios: tuple[float, ...], screens: tuple, out: Path,
            t1: float):
    """The searcher of ``--method`` run to ``--episodes`` (resuming what ``out`` holds), with a progress line."""
    from amc.search.base import Progress
    from amc.search.registry import SearchSpec, make_searcher

    spec = SearchSpec(args.episodes, args.seed, start=start, resume=not args.no_resume, options={
        "algo": args.algo, "warmup": args.warmup, "checkpoint_every": args.checkpoint_every,  # the agent's
        "study": args.study, "storage": args.storage, "sampler": args.sampler,  # Optuna's
        "enqueue_sensitivity": bool(ratios), "sensitivity_ratios": ratios or (0.5,),
        "screen_eta": args.screen_eta}, screens=screens)
    searcher = make_searcher(args.method, ev, spec, out)
    with progress(f"search ({args.method})", total=args.episodes) as advance:
        def on_progress(p: Progress) -> None:
            advance(completed=p.done, info=_info(p.best_reward, p.feasible, p.counted, p.done - p.resumed_from, t1))

        return searcher.run(progress=on_progress)


def _rerank(args: argparse.Namespace, ev, frame, seeds: tuple[int, ...], out: Path,
            first: int = 0) -> tuple[dict, tuple | None]:
    """The top ``--rerank`` policies and the ``first`` (starting) ones re-scored on every held-out image after
    the recovery on other batches; writes rerank.csv. Returns the record for summary.json and the feasible
    winner's (policy, result)."""
    import pandas as pd

    from amc.io import atomic_path
    from amc.search.base import final_choice

    t2 = time.perf_counter()
    ranked = final_choice(ev, frame, args.rerank, seeds, first=first)
    reranked = {"k": args.rerank, "seeds": list(seeds), "seconds": time.perf_counter() - t2,
                "ranked": [{"rank": r.rank, "search_reward": r.search_reward, "score": r.score,
                            "policy": r.policy} for r in ranked]}
    with atomic_path(out / "rerank.csv") as tmp:
        pd.DataFrame([{k: v for k, v in r.items() if k != "policy"} | {f"r:{n}": x for n, x in r["policy"].items()}
                      for r in reranked["ranked"]]).to_csv(tmp, index=False)
    # the first re-rank evaluator's measurement (every held-out image)
    winner = (ranked[0].policy, ranked[0].results[0]) if ranked and ranked[0].feasible else None
    return reranked, winner


def _print_table(args, best, policy, frame, seconds: float, reranked: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"amc search: {args.method} / {args.granularity} / {args.budget}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    feas = frame["feasible"].fillna(False).astype(bool).mean() if "feasible" in frame else float("nan")
    for k, v in [("episodes", f"{len(frame)}"), ("share feasible", f"{feas:.0%}"),
                 ("best reward", f"{best.reward:.4f}"), ("held-out accuracy", f"{best.accuracy:.2%}"),
                 ("size", f"{best.size:.2%}"), ("MACs", f"{best.macs:.2%}"), ("params", f"{best.params:.2%}"),
                 ("latency", "-" if best.latency is None or math.isnan(best.latency) else f"{best.latency:.2%}"),
                 ("search wall time", f"{seconds:.1f} s")]:
        t.add_row(k, v)
    if reranked and reranked["ranked"]:
        top = reranked["ranked"][0]
        t.add_row(f"re-rank of the top {reranked['k']}", f"search's #{top['rank']}, score {top['score']:.4f}")
    layers = Table(title="best policy")
    layers.add_column("layer")
    layers.add_column("ratio", justify="right")
    for n, r in policy.items():
        layers.add_row(n, f"{r:.3f}")
    console = Console()
    console.print(t)
    console.print(layers)
