"""The latency fit's verdict against later measurements: does reading a candidate more than once
(``LatencyOptions.latency_confirm``), or fitting to a budget a few percent under the user's, keep
fitted policies within the budget on this shared machine?

For each model (the shared ResNet-20 and MobileNetV2, eager PyTorch, 1 thread, batch 1), ``--policies``
starting policies: the uniform one, then random shapes (each group's ratio drawn between 0 and 0.6 of its
upper bound) met to the budget on the calibrated table (``Projector.meet`` / ``fill``). Each is fitted to
``latency=B`` by ``amc.latency.fit.fit_measured`` (fill, the pipeline's 4 rounds, paired readings of 5
rounds x 50 forwards, as ``amc.compress`` reads) once per ``--settings`` entry (``c<confirm>``, or
``c<confirm>u<U>``: fitted to the budget U% under the one judged), the settings' order
alternating from policy to policy; then the kept policy is built afresh and read ``--verify`` times more,
the median of those readings its later measurement. A fit is over when that later measurement exceeds
the budget by more than 1% (latency_trained's noise allowance). The table (``amc.latency.latency_problem``)
is calibrated once per process; its entries are cached.

Beside a running latency_trained process: ``--pause-pids <its pid> --pause-cache <its model's cache>``
stops it during each reading here (logged in its pause log, so it takes the time out of its own) and names
this process in its pause registry, so its readings stop this one.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/latency_fit_noise.py            # resumes from its cache

Cached per (model, policy, setting) in ``runs/latency_fit_noise``; report
``reports/latency_fit_noise.{md,json}``.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from amc.options import LatencyOptions
from benchmarks.harness import MODELS, Cache, ints, markdown_table, parser, write_report

CHECKPOINTS = {"resnet20": "resnet20_dense.pt", "mobilenetv2": "mobilenetv2_cifar_dense.pt"}
NOISE = 0.01  # over: a later measurement above budget x (1 + NOISE)
FIT_ROUNDS, RUNS = LatencyOptions().latency_fit_rounds, LatencyOptions().latency_runs  # the library's defaults
PAIRED_ROUNDS = 5  # the pipeline's paired readings of a fit (``amc.pipeline._paired_fraction``)


def dense_model(name: str, models: Path):
    if name == "mobilenetv2":
        from benchmarks.latency_trained import build_mobilenetv2

        return build_mobilenetv2(str(models / CHECKPOINTS[name]))
    from amc.models import load_model

    return load_model(name, str(models / CHECKPOINTS[name])).eval()


def start_policy(projector, i: int) -> dict[str, float]:
    """Policy ``i``: 0 the uniform one, else a random shape met to the budget on the table."""
    import numpy as np

    if i == 0:
        return projector.uniform()
    rng = np.random.default_rng(1000 + i)
    raw = {n: float(rng.uniform(0.0, 0.6 * projector.upper[n])) for n in projector.names}
    pol = projector.meet(raw)
    return pol if projector.cost.fraction(pol) >= projector.budget.fraction * 0.99 else projector.fill(pol)


def setting(text: str) -> tuple[int, float]:
    """``c2`` -> (2, 0.0); ``c2u4`` -> (2, 0.04): the confirm of a ``--settings`` entry and how far under the
    judged budget its fit aims."""
    if not re.fullmatch(r"c\d+(u\d+(\.\d+)?)?", text):
        raise SystemExit(f"bad setting {text!r}: c<confirm> or c<confirm>u<percent under>, e.g. c2 or c2u4")
    c, _, u = text[1:].partition("u")
    return int(c), float(u) / 100 if u else 0.0


def one(problem, policy: dict[str, float], name: str, verify: int, pause) -> dict[str, Any]:
    from amc.latency.fit import fit_measured

    def fraction(model) -> float:
        with pause:
            return problem.fraction(model)

    from amc.budget import Budget

    confirm, under = setting(name)
    proj = problem.projector
    if under:
        proj = proj.under(Budget("latency", proj.budget.fraction * (1 - under)))
    seen0, t = len(problem.seen), time.perf_counter()
    fit = fit_measured(policy, proj, problem.build, fraction, rounds=FIT_ROUNDS, fill=True, confirm=confirm)
    fit_s, readings = time.perf_counter() - t, len(problem.seen) - seen0
    later = [fraction(problem.build(fit.policy)) for _ in range(verify)]
    return {"setting": name, "confirm": confirm, "under": under, "fit_measured": fit.measured,
            "fit_predicted": fit.predicted, "fit_within": fit.within,
            "fit_readings": readings, "fit_s": fit_s, "fit_steps": fit.steps, "later": later,
            "later_median": statistics.median(later), "start_predicted": problem.projector.cost.fraction(policy)}


def calibrated(name: str, args, pause):
    """``name``'s latency problem at ``--budget``, its table calibrated afresh up to 3 times while a load change
    during the calibration leaves the budget out of the table's reach (its floor over the budget)."""
    import torch

    from amc.errors import BudgetError
    from amc.latency import Target, latency_problem

    lut = Path(args.cache) / f"{name}_lut.csv"
    for attempt in range(3):
        print(f"[{name}] calibrating the table", flush=True)
        try:
            with pause:
                return latency_problem(dense_model(name, Path(args.models)), torch.zeros(1, 3, 32, 32),
                                       f"latency={args.budget}", Target(input_shape=(3, 32, 32)),
                                       paired_rounds=PAIRED_ROUNDS, runs=RUNS, table_path=lut)
        except BudgetError as e:
            if attempt == 2:
                raise
            print(f"[{name}] {e}: calibrating again", flush=True)
            lut.unlink(missing_ok=True)


def run(args) -> None:
    import torch

    from benchmarks.search_hard import PAUSE_LOG, PAUSE_REGISTRY, Pause, register

    torch.set_num_threads(1)
    cache = Cache(args.cache)
    other = Path(args.pause_cache) if args.pause_cache else None
    pause = Pause(args.pause_pids, other / PAUSE_LOG if other else None)
    with register(other / PAUSE_REGISTRY) if other else contextlib.nullcontext():
        for name in args.models_run:
            problem = None
            for i in range(args.policies):
                order = args.settings if i % 2 == 0 else args.settings[::-1]
                for c in order:
                    key = f"{name}__p{i}__{c}"
                    if cache.get(key) is not None:
                        continue
                    if problem is None:
                        problem = calibrated(name, args, pause)
                    row = cache.put(key, {"model": name, "policy": i, **one(problem, start_policy(problem.projector, i),
                                                                             c, args.verify, pause)})
                    print(f"[{name}] p{i} {c}: fit {row['fit_measured']:.3f} ({row['fit_readings']} readings, "
                          f"{row['fit_s']:.0f} s), later {row['later_median']:.3f}", flush=True)


def summary(rows: list[dict], budget: float) -> dict[str, Any]:
    later = [r["later_median"] for r in rows]
    return {"fits": len(rows), "over": sum(x > budget * (1 + NOISE) for x in later),
            "over_share": sum(x > budget * (1 + NOISE) for x in later) / len(rows),
            "fit_within_share": sum(bool(r["fit_within"]) for r in rows) / len(rows),
            "later_median": statistics.median(later), "later_mean": statistics.fmean(later),
            "later_max": max(later), "fit_measured_mean": statistics.fmean(r["fit_measured"] for r in rows),
            "readings_mean": statistics.fmean(r["fit_readings"] for r in rows),
            "fit_s_mean": statistics.fmean(r["fit_s"] for r in rows)}


def write(args) -> None:
    cache = Cache(args.cache)
    got = {(name, i, c): {"setting": c, "under": setting(c)[1], **r}  # rows of before the settings: c<N> alone
           for name in args.models_run for i in range(args.policies) for c in args.settings
           if (r := cache.get(f"{name}__p{i}__{c}")) is not None}
    want = len(args.models_run) * args.policies * len(args.settings)
    per: dict[str, dict[str, Any]] = {}
    listed = []
    for name in args.models_run:  # per model and setting, every fit it has
        per[name] = {c: summary(fits, args.budget) for c in args.settings
                     if (fits := [got[name, i, c] for i in range(args.policies) if (name, i, c) in got])}
        listed += [(name, i, [got[name, i, c] for c in args.settings if (name, i, c) in got])
                   for i in range(args.policies) if any((name, i, c) in got for c in args.settings)]
    lines = [f"# The latency fit's verdict against later measurements (`latency={args.budget}`)", "",
             f"Each starting policy (the uniform one, then random shapes met to the budget on the table) fitted by "
             f"`fit_measured` (fill, {FIT_ROUNDS} rounds, paired readings of {PAIRED_ROUNDS} rounds x {RUNS} "
             f"forwards) with each setting: `c<N>`, a candidate within the budget read N times more and judged on "
             f"the median of its readings (`latency_confirm`); `u<U>`, fitted to a budget U% under the one judged "
             f"here. Then the kept policy built afresh and read "
             f"{args.verify} times more: `later` is the median of those. Over: later above the budget by more than "
             f"{NOISE:.0%}. Settings run in one process start from the same policies (the table calibrated once "
             f"there) and alternate their order from policy to policy; a process calibrates its table afresh, so "
             f"settings run in another start from the same random shapes met to the budget on another calibration. "
             f"Eager PyTorch, 1 thread, batch 1, this 2-core CPU.", ""]
    table = [[name, c, s["fits"], f"{s['over']} ({s['over_share']:.0%})", f"{s['fit_measured_mean']:.3f}",
              f"{s['later_mean']:.3f}", f"{s['later_median']:.3f}", f"{s['later_max']:.3f}",
              f"{s['readings_mean']:.1f}", f"{s['fit_s_mean']:.0f}"] for name, by in per.items() for c, s in by.items()]
    lines += markdown_table(["model", "setting", "fits", "over", "fit's verdict (mean)", "later (mean)",
                             "later (median)", "later (max)", "readings per fit", "fit s"], table)
    lines += ["", "Per policy (fit's verdict -> later median):", ""]
    lines += [f"- {name} p{i}: " + "; ".join(f"{g['setting']}: {g['fit_measured']:.3f} -> {g['later_median']:.3f}"
                                             for g in rows) for name, i, rows in listed]
    lines.append("")
    write_report(args.out, "latency_fit_noise", {"budget": args.budget, "noise": NOISE, "summary": per,
                                                 "rows": list(got.values()),
                                                 "settings": {k: v for k, v in vars(args).items()
                                                              if k not in ("out", "cache")}},
                 "\n".join(lines), partial=len(got) < want)


def main() -> None:
    ap = parser(__doc__, cache="runs/latency_fit_noise")
    ap.add_argument("--models", default=str(MODELS), help="folder of the dense checkpoints")
    ap.add_argument("--only", default="resnet20,mobilenetv2")
    ap.add_argument("--budget", type=float, default=0.6)
    ap.add_argument("--policies", type=int, default=10)
    ap.add_argument("--settings", default="c0,c2,c2u4",
                    help="the fits compared: c<confirm>, or c<confirm>u<U>: fitted U%% under the budget judged")
    ap.add_argument("--verify", type=int, default=5, help="later readings of each kept policy")
    ap.add_argument("--pause-pids", default="", help="comma-separated pids stopped during each reading here")
    ap.add_argument("--pause-cache", default="", help="the cache folder of those processes' benchmark (its pause "
                                                      "log and registry)")
    args = ap.parse_args()
    args.models_run = [m for m in args.only.split(",") if m]
    args.settings, args.pause_pids = [c for c in args.settings.split(",") if c], ints(args.pause_pids)
    for c in args.settings:
        setting(c)
    if bad := [m for m in args.models_run if m not in CHECKPOINTS]:
        raise SystemExit(f"unknown model {bad[0]!r}; known: {', '.join(CHECKPOINTS)}")
    if not args.report_only:
        run(args)
    write(args)


if __name__ == "__main__":
    main()
