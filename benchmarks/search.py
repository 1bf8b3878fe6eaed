"""Benchmark: the AMC agent and Optuna TPE against the uniform, the sensitivity-picked and
Torch-Pruning's global policies, side by side in one run, each finetuned and tested.

Tasks: CH-50 (channel pruning to <= 50% of dense MACs, L2, channels rounded to 8) and FG-25
(fine-grained pruning to <= 25% of dense size). Per task: one evaluator (BN recalibration on
5,120 train images, reward = held-out accuracy on 5,000 images), the per-reward cost measured by
phase, the AMC agent (DDPG, >= 300 episodes, 100 warm-up) and Optuna TPE (>= 200 trials; the
uniform, sensitivity-picked and global-baseline policies are its first trials), then every
candidate policy built (the physically smaller model for channel pruning, the masked model for
fine-grained), BatchNorm
recalibrated, finetuned ``--epochs`` epochs and tested on the 10,000 test images. The baseline
for FG-25 is one global magnitude threshold (``amc.pruners.finegrained.global_prune``); for CH-50 Torch-
Pruning's ``MagnitudePruner(global_pruning=True)``, L2, round_to 8, ratio bisected to <= 50% MACs.

Writes ``search.md``, ``search.json`` and PNG plots into ``--out``.

    python benchmarks/search.py --model vgg8 --device cuda --out /tmp/search          # H100
    python benchmarks/search.py --model vgg8 --device cuda --out /tmp/search --tasks fg25 --merge
    python benchmarks/search.py --model resnet20 --device cpu --out /tmp/search-cpu   # no GPU
    python benchmarks/search.py --device cpu --quick --out /tmp/search-quick          # smoke test
"""

from __future__ import annotations

import copy
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from amc import EvalConfig, Evaluator
from amc.budget import Budget, bounds_around
from amc.data import load_cifar10, make_splits, subset
from amc.io import atomic_path
from amc.layers import count_macs, count_params, layer_table, prunable_names
from amc.metrics import size_fraction
from amc.models import load_model
from amc.pruners.finegrained import global_prune, global_sparsity_for_size, lamp_policy
from amc.search.agent import AgentConfig, run_agent
from amc.search.base import rerank, rerank_evaluators, score
from amc.search.optuna import OptunaConfig, OptunaSearcher
from amc.train import FinetuneConfig, evaluate, finetune, recalibrate_bn
from benchmarks.harness import MODELS, machine_info, parser, write_json, write_text

TASKS = {  # name -> (granularity, budget)
    "ch50": ("channel", "macs=0.5"),
    "fg25": ("fine", "size=0.25"),
}
SENS_RATIOS = (0.2, 0.4, 0.6, 0.8, 0.9)  # per-layer sensitivity scan for the sensitivity-picked policy
TP_BISECT = 12  # bisection steps on Torch-Pruning's global ratio (2^-12 of a ratio)


def finetune_runs(model: torch.nn.Module, masks, splits, seeds: list[int], ft: FinetuneConfig, batch_size: int,
                  test) -> tuple[list[float], list[float]]:
    """The same (pruned, BN-recalibrated) model finetuned once per seed, each on that seed's batch
    order with ``masks`` held: test accuracy and seconds of each run (the spread of the finetune).
    The last run finetunes ``model`` itself."""
    dev = next(model.parameters()).device
    runs, secs = [], []
    for i, seed in enumerate(seeds):
        m = copy.deepcopy(model) if i < len(seeds) - 1 else model
        _sync(dev)
        t = time.perf_counter()
        finetune(m, splits.loader("train", batch_size, seed=seed), ft, masks=masks)
        _sync(dev)
        secs.append(time.perf_counter() - t)
        runs.append(evaluate(m, test))
    return runs, secs


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def tp_global(dense: torch.nn.Module, macs_fraction: float, round_to: int, example: torch.Tensor):
    """Torch-Pruning's global L2 magnitude pruner at the largest ratio whose MACs <= target."""
    import torch_pruning as tp

    dense_macs = count_macs(dense)[0]
    last_linear = [dense.get_submodule(n) for n in prunable_names(dense)
                   if isinstance(dense.get_submodule(n), torch.nn.Linear)][-1:]

    def prune_at(r: float) -> torch.nn.Module:
        m = copy.deepcopy(dense).eval()
        ignored = [m.get_submodule(n) for n in prunable_names(dense) if dense.get_submodule(n) in last_linear]
        pruner = tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(p=2),
                                           global_pruning=True, pruning_ratio=r, round_to=round_to,
                                           ignored_layers=ignored)
        pruner.step()
        return m

    lo, hi = 0.0, 0.95  # 0.95: the largest global ratio tried
    best = None
    for _ in range(TP_BISECT):
        mid = 0.5 * (lo + hi)
        m = prune_at(mid)
        if count_macs(m)[0] / dense_macs <= macs_fraction:
            hi, best = mid, m
        else:
            lo = mid
    if best is None:
        best = prune_at(hi)
    return best, hi


def _policy_of_physical(dense: torch.nn.Module, small: torch.nn.Module, names: list[str]) -> dict[str, float]:
    """Removed output-channel share of each searched root layer in a physically pruned model."""
    return {n: 1.0 - small.get_submodule(n).weight.shape[0] / dense.get_submodule(n).weight.shape[0]
            for n in names}


def run_task(name: str, args, dense, splits, dev, run_root: Path) -> dict:
    gran, budget_s = TASKS[name]
    budget = Budget.parse(budget_s)
    out: dict = {"granularity": gran, "budget": budget_s, "times_s": {}}
    times = out["times_s"]
    t = time.perf_counter()
    cfg = EvalConfig(granularity=gran, calib_images=args.calib_images, eval_images=args.eval_images,
                     reward=args.reward, round_to=8, criterion="l2", upper=0.9 if gran == "channel" else 0.98,
                     profile=True)
    base = Evaluator(dense, splits, budget, cfg)  # BN recalibration, every layer's whole range: the baselines
    _sync(dev)
    times["evaluator setup"] = time.perf_counter() - t
    out["searched_layers"] = base.names

    cands: dict[str, dict] = {}
    t = time.perf_counter()
    uniform = base.uniform_policy()
    times["uniform policy"] = time.perf_counter() - t
    cands["uniform"] = {"policy": uniform}
    t = time.perf_counter()
    curves = base.sensitivity(args.sens_ratios)
    sens = base.sensitivity_policy(curves)
    times["sensitivity scan + pick"] = time.perf_counter() - t
    cands["sensitivity"] = {"policy": sens}

    # the global baseline first: both searchers start from it too
    example = torch.zeros(1, 3, 32, 32, device=dev)
    if gran == "channel":
        t = time.perf_counter()
        small, ratio = tp_global(dense, budget.fraction, 8, example)
        times["Torch-Pruning global"] = time.perf_counter() - t
        cands["tp_global"] = {"policy": _policy_of_physical(dense, small, base.names), "tp_ratio": ratio}
        global_built = ("tp_global", (small, None))
    else:
        m = copy.deepcopy(dense)
        s = global_sparsity_for_size(m, budget.fraction)
        masks = global_prune(m, min(max(s, 0.0), 0.999))  # 0.999: global_prune needs sparsity < 1
        table = {n: 1.0 - float(masks[n].float().mean()) for n in masks}
        cands["global_magnitude"] = {"policy": {n: table[n] for n in base.names}, "sparsity": s}
        global_built = ("global_magnitude", (m, masks))
    global_key = global_built[0]
    if gran == "fine":  # LAMP: layer-adaptive magnitude scores under one global threshold
        cands["lamp"] = {"policy": lamp_policy(dense, budget.fraction, base.names)}
    seed_keys = ["uniform", "sensitivity", global_key] + (["lamp"] if gran == "fine" else [])
    out["seeds"] = seed_keys

    # the searchers' evaluator: the asked recovery, and the search box (--around: a box of --radius
    # around the global policy, or around the seed policy with the best reward under the search's own
    # recovery; every layer's whole range with none)
    scfg = replace(cfg, recovery=args.recovery, recovery_steps=args.recovery_steps)
    center, seed_rewards = None, None
    if args.around == "global":
        center = global_key
    elif args.around == "best":
        probe = base if scfg == cfg else Evaluator(dense, splits, budget, scfg)
        seed_rewards = {}
        for k in seed_keys:
            r = probe.evaluate(cands[k]["policy"])
            seed_rewards[k] = r.reward if r.feasible else float("-inf")
        center = max(seed_rewards, key=seed_rewards.__getitem__)  # the first of equal rewards
        print(f"[{name}] search box around {center} (seed rewards: "
              f"{', '.join(f'{k} {v:.4f}' for k, v in seed_rewards.items())})", flush=True)
    box = bounds_around(cands[center]["policy"], args.radius, cfg.lower, cfg.upper) if center else None
    scfg = replace(scfg, bounds=box)
    ev = base if scfg == cfg else Evaluator(dense, splits, budget, scfg)
    out["search_space"] = {"recovery": args.recovery, "recovery_steps": args.recovery_steps if
                           args.recovery == "finetune" else 0, "around": center or "none",
                           "around_rule": args.around, "seed_rewards": seed_rewards,
                           "radius": args.radius if box else None, "eval_images": args.eval_images,
                           "reward": args.reward, "calib_images": args.calib_images,
                           "optuna_fill": OptunaConfig.fill}

    # the per-reward cost: a few warm evaluations first (cuDNN autotuning), then timed ones
    for _ in range(3):
        ev.evaluate(ev.uniform_policy())
    ev.timings.clear()
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for _ in range(args.timing_evals):
        ev.evaluate(ev.projector.project({n: float(torch.rand((), generator=g)) for n in ev.names}))
    times["timed rewards"] = time.perf_counter() - t
    phases = {k: 1000 * statistics.median(tm[k] for tm in ev.timings) for k in ev.timings[0]}
    out["reward_ms"] = phases
    print(f"[{name}] one reward: {phases['total']:.1f} ms median "
          f"({', '.join(f'{k} {v:.1f}' for k, v in phases.items() if k != 'total')})", flush=True)

    # the AMC agent (its first warm-up episodes play the seed policies: uniform, sensitivity-picked,
    # global and, for fine-grained pruning, LAMP)
    warm = min(args.warmup, args.episodes - 1) if args.episodes > 1 else 0
    t = time.perf_counter()
    seeds = [cands[k]["policy"] for k in seed_keys]
    amc = run_agent(ev, AgentConfig(episodes=args.episodes, warmup_episodes=warm, seed=args.seed,
                                    checkpoint_every=0), run_root / f"{name}-amc", seed_policies=seeds)
    times["AMC search"] = time.perf_counter() - t
    out["amc"] = {"episodes": len(amc.episodes), "warmup": warm, "wall_s": times["AMC search"],
                  "feasible_share": float(amc.episodes.feasible.mean()),
                  "rewards": [float(x) for x in amc.episodes.raw_reward]}
    print(f"[{name}] AMC: {len(amc.episodes)} episodes in {times['AMC search']:.1f} s, best "
          f"{amc.best_result.reward if amc.best_result else float('nan'):.4f}", flush=True)
    if amc.best_policy is not None:
        cands["amc"] = {"policy": amc.best_policy}

    # Optuna TPE (its first trials: the same seed policies)
    t = time.perf_counter()
    searcher = OptunaSearcher(ev, OptunaConfig(study=f"{name}", n_trials=args.trials, seed=args.seed),
                              run_root / f"{name}-optuna", sensitivity_policy=sens,
                              extra_policies={k: cands[k]["policy"] for k in seed_keys[2:]})
    ores = searcher.run()
    times["Optuna search"] = time.perf_counter() - t
    frame = ores.trials
    out["optuna"] = {"trials": int((frame.state == "COMPLETE").sum()), "wall_s": times["Optuna search"],
                     "feasible_share": float(frame.feasible.fillna(False).astype(bool).mean()),
                     "rewards": [float(x) for x in frame.reward]}
    print(f"[{name}] Optuna: {out['optuna']['trials']} trials in {times['Optuna search']:.1f} s, best "
          f"{ores.best_result.reward if ores.best_result else float('nan'):.4f}", flush=True)
    if ores.best_policy is not None:
        cands["optuna"] = {"policy": ores.best_policy}

    # the final choice: each searcher's top --rerank policies re-scored on every held-out image after
    # the recovery on other batches (--rerank-seeds), the baselines scored the same way for comparison
    if args.rerank:
        t = time.perf_counter()
        rev = rerank_evaluators(ev, args.rerank_seeds)
        out["rerank"] = {"k": args.rerank, "seeds": list(args.rerank_seeds), "evaluators": len(rev)}
        for key, log in (("amc", amc.episodes), ("optuna", frame)):
            ranked = rerank(rev, log, args.rerank)
            out["rerank"][key] = [{"rank": r.rank, "search_reward": r.search_reward, "score": r.score}
                                  for r in ranked]
            if ranked and ranked[0].feasible:
                cands[key] = {"policy": ranked[0].policy, "search_rank": ranked[0].rank,
                              "rerank_score": ranked[0].score, "search_reward": ranked[0].search_reward}
        for c in cands.values():
            if "rerank_score" not in c:
                c["rerank_score"] = score(rev, c["policy"])[0]
        times["re-rank"] = time.perf_counter() - t
        print(f"[{name}] re-rank: " + ", ".join(f"{k} {c['rerank_score']:.4f}" for k, c in cands.items()),
              flush=True)

    # every candidate: held-out reward, build, recalibrate, test, finetune, test
    calib = splits.loader("train", 512, limit=args.calib_images, shuffle=False, augment=False)
    test = splits.loader("test", 1000)
    ft = FinetuneConfig(epochs=args.epochs)
    built: dict[str, tuple[torch.nn.Module, object]] = {}
    for key, c in cands.items():
        res = ev.evaluate(c["policy"])  # the global baseline too: its per-layer ratios, scored the search's way
        c.update({"heldout_acc": res.accuracy, "feasible": res.feasible, "reward_macs": res.macs,
                  "reward_size": res.size})
        if key == global_key:
            continue
        t = time.perf_counter()
        built[key] = ev.build(c["policy"])
        c["build_s"] = time.perf_counter() - t
    built[global_key] = global_built[1]
    dense_macs = count_macs(dense)[0]
    for key, (model, masks) in built.items():
        c = cands[key]
        model = model.to(dev)
        if gran == "channel":
            c["macs"] = count_macs(model)[0] / dense_macs
            c["params"] = count_params(model) / count_params(dense)
        c["size"] = size_fraction(model, count_params(dense) * 32)
        recalibrate_bn(model, calib)
        c["test_before"] = evaluate(model, test)
        runs, secs = finetune_runs(model, masks, splits, [args.seed + s for s in range(args.ft_seeds)], ft,
                                   args.batch_size, test)
        c["finetune_s"] = statistics.mean(secs)
        c["test_after_runs"] = runs
        c["test_after"] = statistics.mean(runs)
        if gran == "fine":
            c["size_after"] = size_fraction(model, count_params(dense) * 32)
        print(f"[{name}] {key}: test {c['test_before']:.4f} -> {c['test_after']:.4f} after {args.epochs:g} ep "
              f"({', '.join(f'{r:.4f}' for r in runs)})", flush=True)
    out["candidates"] = cands
    out["sensitivity_curves"] = curves.to_dict("records")
    _plots(name, out, ev.names, amc.episodes, frame, Path(args.out), args.stem)
    return out


def _plots(name: str, res: dict, names: list[str], amc_frame, opt_frame, out: Path, stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, frame, col, title in ((axes[0], amc_frame, "raw_reward", "AMC agent (DDPG)"),
                                  (axes[1], opt_frame, "reward", "Optuna TPE")):
        r = frame[col].astype(float).to_numpy()
        feas = frame["feasible"].fillna(False).astype(bool).to_numpy()
        x = np.arange(len(r))
        if "warmup" in frame:
            w = frame["warmup"].astype(bool).to_numpy()
            ax.scatter(x[w], r[w], s=6, c="0.6", label="warm-up (random)")
            ax.scatter(x[~w], r[~w], s=6, c="C0", label="agent + noise")
        else:
            ax.scatter(x, r, s=6, c="C1", label="trial")
        best = np.maximum.accumulate(np.where(feas & np.isfinite(r), r, -np.inf))
        ax.plot(x, best, c="k", lw=1.2, label="best feasible")
        for key, style in (("uniform", "--"), ("sensitivity", ":")):
            acc = res["candidates"].get(key, {}).get("heldout_acc")
            if acc is not None:
                ax.axhline(acc, ls=style, c="C3", lw=1, label=f"{key} policy")
        ax.set_title(title)
        ax.set_xlabel("episode" if "warmup" in frame else "trial")
        finite = r[np.isfinite(r)]
        if finite.size:
            ax.set_ylim(max(0.0, np.quantile(finite, 0.05) - 0.05), finite.max() + 0.02)
    axes[0].set_ylabel("reward")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{name}: {res['granularity']}, {res['budget']}")
    with atomic_path(out / f"{stem}_{name}_rewards.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)

    keys = [k for k in res["candidates"] if res["candidates"][k].get("policy")]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) * len(keys) / 3), 3.6))
    w = 0.8 / max(len(keys), 1)
    x = np.arange(len(names))
    for i, k in enumerate(keys):
        pol = res["candidates"][k]["policy"]
        ax.bar(x + i * w, [pol.get(n, 0.0) for n in names], w, label=k)
    ax.set_xticks(x + 0.4 - w / 2, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ratio removed" if res["granularity"] == "channel" else "sparsity")
    ax.set_title(f"{name}: best policy per layer")
    ax.legend(fontsize=7)
    with atomic_path(out / f"{stem}_{name}_policy.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _space(report: dict, t: dict) -> dict:
    """A task's search settings (older reports kept them once, for the whole run)."""
    return t.get("search_space") or {"recovery": "bn", "recovery_steps": 0, "around": "none", "radius": None,
                                     "eval_images": report.get("eval_images"), "reward": report.get("reward", "acc"),
                                     "calib_images": report["calib_images"]}


def _recovery_words(sp: dict) -> str:
    bn = f"BN recalibration on {sp['calib_images']} train images"
    if sp["recovery"] == "finetune":
        return (f"{sp['recovery_steps']} SGD steps (batch 128, lr 0.01, the same batches for every policy) "
                f"then {bn}")
    return bn


def _markdown(report: dict) -> str:
    merged = report.get("merged_tasks") or []
    lines = ["# Search: AMC agent and Optuna vs uniform, sensitivity-picked and global baselines", "",
             f"Model **{report['model']}** on {report['device_name']} ({report['device']}), torch "
             f"{report['torch']}; {'QUICK smoke settings' if report['quick'] else 'full settings'}. "
             f"Data: {report['data']}. Finetune: {report['epochs']:g} epoch"
             f"{'' if report['epochs'] == 1 else 's'} per candidate. "
             + ("All numbers measured in this one run." if not merged else
                f"Each task's numbers were measured in one run; {', '.join(merged)} "
                f"{'comes' if len(merged) == 1 else 'come'} from an earlier run of this benchmark on the same "
                "model and device, kept with --merge (its settings are listed at the end)."), ""]
    if report["device"] == "cpu" and not report["quick"]:
        lines += [f"**CPU stand-in** (no GPU was lent to this run): {report['model']} on the CPU, each reward "
                  f"scored on {report.get('eval_images') or report['heldout']} held-out images, {report['epochs']:g} "
                  f"finetune epoch{'' if report['epochs'] == 1 else 's'} per candidate.", ""]
    lines += ["Rewards: acc is held-out accuracy; acc_loss is held-out accuracy minus 0.01 x held-out "
              "cross-entropy, a tie-breaker where accuracy saturates. The AMC agent's first warm-up episodes "
              "play the seed policies (uniform, sensitivity-picked, global and, for fine-grained pruning in newer "
              "runs, LAMP; each task lists its own), and every episode's policy is filled to spend the whole "
              "budget; Optuna's first trials are the same.",
              ""]
    label = {"uniform": "uniform", "sensitivity": "sensitivity-picked", "amc": "AMC agent (DDPG)",
             "optuna": "Optuna TPE", "tp_global": "Torch-Pruning global L2 (round_to 8)",
             "global_magnitude": "global magnitude threshold", "lamp": "LAMP (layer-adaptive magnitude)"}
    lines.append(f"Dense test accuracy: {report['dense']['test_accuracy']:.2%}.")
    lines.append("")
    for name, t in report["tasks"].items():
        cost = "MACs" if t["granularity"] == "channel" else "size"
        sp = _space(report, t)
        images = sp["eval_images"] or report["heldout"]
        lines += [f"## {name}: {t['granularity']} pruning, budget {t['budget']}", ""]
        box = ("every layer's whole ratio range" if sp["around"] == "none" else
               f"a box of +-{sp['radius']:g} around the {label.get(sp['around'], sp['around'])} policy's "
               "per-layer ratios")
        if sp.get("around_rule") == "best" and sp.get("seed_rewards"):
            box += (" (the seed policy with the best search reward: " + ", ".join(
                f"{label.get(k, k)} {_num(v)}" for k, v in sp["seed_rewards"].items()) + ")")
        if t.get("seeds"):
            box += (". Seed policies (AMC's first warm-up episodes, Optuna's first trials): "
                    + ", ".join(label.get(k, k) for k in t["seeds"]))
        filled = "projected, then filled to spend the budget" if sp.get("optuna_fill") else "projected"
        lines.append(f"Search reward: `{sp['reward']}` on {images} held-out images after {_recovery_words(sp)}. "
                     f"Search space: {box}. Optuna's proposals are {filled}.")
        ph = t["reward_ms"]
        recover = ("BN recalibration" if sp["recovery"] == "bn" else
                   f"{sp['recovery_steps']} finetune steps + BN recalibration")
        lines.append(f"One reward (median of {report['timing_evals']}): **{ph['total']:.1f} ms** = apply masks "
                     f"{ph['apply']:.1f} + {recover} {ph['recover']:.1f} + held-out evaluation on {images} images "
                     f"{ph['score']:.1f} + cost re-measure {ph['measure']:.1f} ms.")
        lines.append(f"AMC: {t['amc']['episodes']} episodes ({t['amc']['warmup']} warm-up) in "
                     f"**{t['amc']['wall_s']:.1f} s**, {t['amc']['feasible_share']:.0%} feasible. "
                     f"Optuna TPE: {t['optuna']['trials']} trials in **{t['optuna']['wall_s']:.1f} s**, "
                     f"{t['optuna']['feasible_share']:.0%} feasible.")
        lines.append(_provenance(t, len(t.get("seeds", [])) or report.get("n_seeds", 3)))
        rr = t.get("rerank")
        if rr:
            lines.append(_rerank_words(rr, sp, report["heldout"]))
        runs = max(len(c.get("test_after_runs", [0])) for c in t["candidates"].values())
        after = f"test acc. after {report['epochs']:g} ep" + (f" (mean of {runs} finetunes)" if runs > 1 else "")
        lines += ["", f"| policy | held-out acc. (search score) |{' re-rank score |' if rr else ''} {cost} | "
                  f"test acc. before FT (BN recal.) | {after} |{' runs |' if runs > 1 else ''} finetune s |",
                  "| --- " * (6 + bool(rr) + (runs > 1)) + "|"]
        for k, c in t["candidates"].items():
            v = c.get("macs") if cost == "MACs" else c.get("size")
            ho = c.get("heldout_acc")
            cells = [label.get(k, k), "-" if ho is None else f"{ho:.2%}"]
            if rr:
                cells.append(_num(c.get("rerank_score")))
            cells += ["-" if v is None else f"{v:.2%}", f"{c['test_before']:.2%}", f"{c['test_after']:.2%}"]
            if runs > 1:
                cells.append(", ".join(f"{r:.2%}" for r in c.get("test_after_runs", [])))
            cells.append(f"{c['finetune_s']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Held-out accuracy is the search's score (after {_recovery_words(sp)}) of each row's "
                  "per-layer ratios, scored by the search's evaluator (for the Torch-Pruning row: its per-layer "
                  "channel counts with our L2 channel choice). Test accuracies are of the model each row builds.",
                  ""]
        extra = {k: c["extra_runs"] for k, c in t["candidates"].items() if c.get("extra_runs")}
        if extra:  # finetunes on further batch orders, measured after the run (see "extra_runs_how")
            lines += [f"Further finetunes, measured after this run: {t.get('extra_runs_how', '')}", "",
                      "| policy | further runs (seed: test acc.) | mean of all runs |", "| --- | --- | --- |"]
            for k, e in extra.items():
                everything = [*t["candidates"][k].get("test_after_runs", []), *e.values()]
                lines.append(f"| {label.get(k, k)} | {', '.join(f'{s}: {a:.2%}' for s, a in e.items())} | "
                             f"{statistics.mean(everything):.2%} ({len(everything)} runs) |")
            lines.append("")
        lines += [f"![rewards]({report.get('stem', 'search')}_{name}_rewards.png)", "",
                  f"![policy]({report.get('stem', 'search')}_{name}_policy.png)", ""]
        lines += ["Wall time per step (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t["times_s"].items()), ""]
    lines += ["## Settings", "", "```", json.dumps(report["settings"], indent=1), "```", ""]
    for name in merged:
        old = report["tasks"][name].get("settings")
        if old:
            lines += [f"Settings of the run that measured {name}:", "", "```", json.dumps(old, indent=1), "```", ""]
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None or x != x else f"{x:.4f}"


def _rerank_words(rr: dict, sp: dict, heldout: int) -> str:
    seeds = rr["seeds"] if rr["evaluators"] > 1 else []
    how = (f"after the same recovery on other batches (seeds {', '.join(map(str, seeds))}; the search's is "
           f"0), mean of the {len(seeds)}" if seeds else "after the same recovery")
    out = [f"Final choice: each searcher's top {rr['k']} distinct feasible policies (by search reward) re-scored "
           f"on all {heldout} held-out images {how}; the baselines are scored the same way (re-rank score)."]
    for key, name in (("amc", "AMC"), ("optuna", "Optuna")):
        ranked = rr.get(key) or []
        if ranked:
            out.append(f"{name}'s re-ranked winner was its search's #{ranked[0]['rank']} (search reward "
                       f"{_num(ranked[0]['search_reward'])}, re-rank score {_num(ranked[0]['score'])}); the search's "
                       f"#1 re-scored {_num(next(r['score'] for r in ranked if r['rank'] == 1))}.")
    return " ".join(out)


def _provenance(t: dict, n_seeds: int) -> str:
    """Where each searcher's best policy came from: AMC's warm-up (a seeded or a random episode) or
    its learning phase; Optuna's enqueued first trials or TPE's own."""
    def finite(rewards: list) -> list[float]:  # NaN / None (JSON) never count as the best
        return [float("-inf") if r is None or r != r else r for r in rewards]

    out = []
    rewards = finite(t["amc"]["rewards"])
    if rewards:
        i = max(range(len(rewards)), key=rewards.__getitem__)
        warm = t["amc"]["warmup"]
        kind = ("a seeded episode" if i < min(n_seeds, warm) else "a random warm-up episode" if i < warm
                else "the learning phase")
        learned = rewards[warm:]
        tail = f"; learning-phase best {max(learned):.4f}" if learned else ""
        out.append(f"AMC's best reward {rewards[i]:.4f} came from episode {i} ({kind}){tail}.")
    rewards = finite(t["optuna"]["rewards"])
    if rewards:
        i = max(range(len(rewards)), key=rewards.__getitem__)
        kind = "an enqueued baseline" if i < n_seeds else "a TPE trial"
        out.append(f"Optuna's best reward {rewards[i]:.4f} came from trial {i} ({kind}).")
    return " ".join(out)


def main() -> None:
    ap = parser(__doc__, quick="tiny slice, few episodes (smoke test on CPU)")
    ap.add_argument("--model", default="vgg8")
    ap.add_argument("--checkpoint", default=None, help="default ../shared/models/<model>_dense.pt")
    ap.add_argument("--tasks", default="ch50,fg25", help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--episodes", type=int, default=300, help="AMC episodes")
    ap.add_argument("--warmup", type=int, default=100, help="AMC warm-up episodes")
    ap.add_argument("--trials", type=int, default=200, help="Optuna trials")
    ap.add_argument("--epochs", type=float, default=5.0, help="finetune epochs per candidate")
    ap.add_argument("--calib-images", type=int, default=5120)
    ap.add_argument("--heldout", type=int, default=5000, help="held-out split carved from train")
    ap.add_argument("--eval-images", type=int, default=None, help="held-out images per reward (default: all)")
    ap.add_argument("--reward", default="acc_loss", help="a key of amc.evaluator.REWARDS")
    ap.add_argument("--recovery", choices=("bn", "finetune"), default="bn",
                    help="the searchers' recovery before each reward (the baselines' scan keeps bn)")
    ap.add_argument("--recovery-steps", type=int, default=20, help="SGD steps with --recovery finetune")
    ap.add_argument("--around", choices=("none", "global", "best"), default="none",
                    help="search a box of --radius around the global baseline's ratios (global) or around the "
                         "seed policy with the best search reward (best) instead of every range")
    ap.add_argument("--radius", type=float, default=0.2)
    ap.add_argument("--rerank", type=int, default=5,
                    help="re-score each searcher's top K policies on every held-out image (0: take the best reward)")
    ap.add_argument("--rerank-seeds", default="1,2",
                    help="recovery seeds of the re-rank (with --recovery finetune; the search's is 0)")
    ap.add_argument("--ft-seeds", type=int, default=1,
                    help="finetune each candidate this many times (batch orders seed, seed+1, ...); report the mean")
    ap.add_argument("--stem", default="search", help="file name stem: STEM.md, STEM.json, STEM_<task>_*.png")
    ap.add_argument("--timing-evals", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merge", action="store_true",
                    help="keep the other tasks already in OUT/search.json (run the tasks in separate commands)")
    ap.add_argument("--render-only", action="store_true", help="rewrite OUT/STEM.md from OUT/STEM.json and stop")
    args = ap.parse_args()
    args.sens_ratios = SENS_RATIOS
    try:
        args.rerank_seeds = tuple(int(x) for x in args.rerank_seeds.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--rerank-seeds must be comma-separated integers, got {args.rerank_seeds!r}") from None
    if args.rerank < 0 or args.ft_seeds < 1:
        raise SystemExit("--rerank must be >= 0 and --ft-seeds >= 1")
    if args.render_only:
        path = Path(args.out) / f"{args.stem}.json"
        write_text(path.with_suffix(".md"), _markdown(json.loads(path.read_text())))
        return
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes during the search: autotune once
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_cifar10(args.data)
    if args.quick:
        data = subset(data, train=1200, test=300)
        args.heldout, args.calib_images = min(args.heldout, 200), min(args.calib_images, 128)
        args.episodes, args.warmup, args.trials = min(args.episodes, 4), min(args.warmup, 2), min(args.trials, 4)
        args.epochs, args.timing_evals = min(args.epochs, 0.05), min(args.timing_evals, 2)
        args.sens_ratios = (0.6,)
    splits = make_splits(data, heldout=args.heldout, device=dev)
    t_data = time.perf_counter() - t0
    ckpt = args.checkpoint or str(MODELS / f"{args.model}_dense.pt")
    dense = load_model(args.model, ckpt).to(dev).eval()
    if dev.type == "cuda":
        dense = dense.to(memory_format=torch.channels_last)
    report: dict = {
        "model": args.model, "checkpoint": ckpt, "device": str(dev), "quick": args.quick,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
            "machine": machine_info(), "data": f"{len(splits.train_y)} train / {len(splits.heldout_y)} held-out / "
                                           f"{len(splits.test_y)} test", "epochs": args.epochs,
        "calib_images": args.calib_images, "heldout": args.heldout, "timing_evals": args.timing_evals,
        "eval_images": args.eval_images, "reward": args.reward, "stem": args.stem,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "times_s": {"load data": t_data}, "tasks": {},
        "dense": {"test_accuracy": evaluate(dense, splits.loader("test", 1000)), "macs": count_macs(dense)[0],
                  "params": count_params(dense), "layers": len(layer_table(dense))},
    }
    prev = out / f"{args.stem}.json"
    if args.merge and prev.exists():
        old = json.loads(prev.read_text())
        if (old.get("model"), old.get("device"), old.get("quick")) == (args.model, str(dev), args.quick):
            kept = {k: v for k, v in old.get("tasks", {}).items() if k not in args.tasks.split(",")}
            for v in kept.values():
                v.setdefault("settings", old.get("settings"))
            report["tasks"].update(kept)
            report["merged_tasks"] = sorted(kept)
            report["times_s"].update({k: v for k, v in old.get("times_s", {}).items() if k in old.get("tasks", {})})
    with tempfile.TemporaryDirectory(prefix="amc-search-bench-") as tmp:
        for name in [s.strip() for s in args.tasks.split(",") if s.strip()]:
            if name not in TASKS:
                raise SystemExit(f"unknown task {name!r}; known: {', '.join(TASKS)}")
            t = time.perf_counter()
            report["tasks"][name] = run_task(name, args, dense, splits, dev, Path(tmp))
            report["times_s"][name] = time.perf_counter() - t
            write_json(out / f"{args.stem}.json", report, default=_json, newline=False)
    report["times_s"]["total"] = time.perf_counter() - t0
    write_json(out / f"{args.stem}.json", report, default=_json, newline=False)
    write_text(out / f"{args.stem}.md", _markdown(report))
    print(f"wrote {out / (args.stem + '.md')} in {report['times_s']['total']:.0f} s")


def _json(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    return str(o)


if __name__ == "__main__":
    main()
