"""Benchmark: the pruning methods of issue 19 against magnitude pruning, on ResNet-20 / CIFAR-10.

Tasks: fine-grained to ``size=0.1`` of the dense size, and channel pruning to ``macs=0.3`` of the
dense MACs (uniform ratio, rounded to 8 channels). Every pruned model gets THE SAME short finetune
(CPU budget): one pass over a fixed slice of ``--train-images`` training images, batch 128, SGD
lr 0.01 cosine, masks held; test accuracy on the first ``--test-images`` (shuffled) test images.
Seeds change the finetune's data order and the criteria's image batches.

Rows (most informative first): magnitude vs each criterion at both tasks (seed 0), then the
procedures (seed 0): network slimming vs the same training without the penalty, the channel
``macs=0.3`` architecture trained from scratch (same steps, lr 0.1) vs pruned-and-finetuned, the
lottery ticket (2 rounds, late rewinding to 10 steps into training from the dense checkpoint) vs
its random-reinit control at sizes 0.5 / 0.2 / 0.1, and the searched policy with the best one-shot
criterion of each task (Optuna over per-layer ratios, rewarded on the held-out split carved from
the training set, never on the test images; the best criterion read from the cached one-shot rows);
then all of it again for seed 1.
Each row is cached in ``runs/methods/<key>.json``; a rerun resumes; ``--report-only`` writes
``reports/methods.{md,json}`` from the cache (PARTIAL while rows are missing).

    nice -n 19 python benchmarks/methods.py            # run / resume, then write the report
    nice -n 19 python benchmarks/methods.py --diagnose # the size=0.1 OBD / SynFlow diagnosis rows (diag__*.json)
    python benchmarks/methods.py --report-only          # report from the cache
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from benchmarks.harness import MODELS, Cache, machine_info, parser, write_report

FINE_SIZE = 0.1
CHANNEL_MACS = 0.3
FINE_CRITERIA = ("magnitude", "obd", "synflow")
CHANNEL_CRITERIA = ("l2", "obd", "apoz")
LOTTERY_SIZES = (0.5, 0.2, 0.1)
SEEDS = (0, 1)
SLIM_PENALTY = 5e-2
SYNFLOW_ROUNDS = 20
SEARCH_METHOD = "optuna search (best criterion)"
SEARCH_TRIALS = 24  # complete Optuna trials per search (the 2-core CPU)
SEARCH_EVAL_IMAGES = 1000  # held-out images per trial's reward
SEARCH_CALIB_IMAGES = 512  # training images per trial's BN recalibration


def row_keys(seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    keys: list[tuple[str, str, dict[str, Any]]] = []
    for c in FINE_CRITERIA:
        keys.append((c, f"fine size={FINE_SIZE}", {"kind": "fine", "criterion": c}))
    for c in CHANNEL_CRITERIA:
        keys.append((c if c != "l2" else "magnitude (l2)", f"channel macs={CHANNEL_MACS}",
                     {"kind": "channel", "criterion": c}))
    keys.append(("slimming", f"channel macs={CHANNEL_MACS}", {"kind": "slim", "penalty": SLIM_PENALTY}))
    keys.append(("slimming control (no penalty)", f"channel macs={CHANNEL_MACS}", {"kind": "slim", "penalty": 0.0}))
    keys.append(("scratch (l2 architecture)", f"channel macs={CHANNEL_MACS}", {"kind": "scratch"}))
    for s in LOTTERY_SIZES:
        keys.append(("lottery ticket", f"fine size={s}", {"kind": "lottery", "size": s}))
        keys.append(("lottery random reinit", f"fine size={s}", {"kind": "lottery_reinit", "size": s}))
    keys.append((SEARCH_METHOD, f"fine size={FINE_SIZE}", {"kind": "search", "granularity": "fine"}))
    keys.append((SEARCH_METHOD, f"channel macs={CHANNEL_MACS}", {"kind": "search", "granularity": "channel"}))
    return keys


def best_criterion(cache: Path, granularity: str) -> str:
    """The one-shot criterion of the best mean cached test accuracy for a task (fine: magnitude,
    obd, synflow; channel: l2, obd, apoz), or magnitude / l2 when none of those rows is cached."""
    task = f"fine size={FINE_SIZE}" if granularity == "fine" else f"channel macs={CHANNEL_MACS}"
    names = ({c: c for c in FINE_CRITERIA} if granularity == "fine" else
             {("magnitude (l2)" if c == "l2" else c): c for c in CHANNEL_CRITERIA})
    means = {}
    for method, crit in names.items():
        accs = [json.loads(p.read_text())["test_accuracy"] for seed in SEEDS
                if (p := cache / f"{slug(method, task, seed)}.json").exists()]
        if accs:
            means[crit] = sum(accs) / len(accs)
    if not means:
        return "magnitude" if granularity == "fine" else "l2"
    return max(means, key=lambda c: means[c])


def slug(method: str, task: str, seed: int) -> str:
    s = f"{method}__{task}__s{seed}"
    return "".join(ch if ch.isalnum() or ch in "._=-" else "_" for ch in s)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from amc.data import load_cifar10, make_splits
        from amc.models import load_model

        self.args = args
        data = load_cifar10(args.data)
        self.splits = make_splits(data, heldout=5000)
        self.dense = load_model("resnet20", args.checkpoint)
        self.test = self.splits.loader("test", 500, limit=args.test_images)
        self.train_limit = args.train_images

    def train_loader(self, seed: int):  # type: ignore[no-untyped-def]
        return self.splits.loader("train", 128, seed=seed, limit=self.train_limit)

    def crit_loader(self, seed: int) -> list:
        ld = self.splits.loader("heldout", 64, shuffle=True, seed=seed)
        out = []
        for i, b in enumerate(ld):
            if i >= 4:
                break
            out.append(b)
        return out

    def cfg(self, lr: float = 0.01):  # type: ignore[no-untyped-def]
        from amc.train import FinetuneConfig

        return FinetuneConfig(epochs=1.0, lr=lr)

    def finish(self, model, masks, seed: int, lr: float = 0.01) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        from amc.train import evaluate, finetune

        before = evaluate(model, self.test)
        torch.manual_seed(seed)
        finetune(model, self.train_loader(seed), self.cfg(lr), masks=masks or None)
        return before, evaluate(model, self.test)

    def run(self, spec: dict[str, Any], seed: int) -> dict[str, Any]:
        import amc.pruners.channel as ch
        from amc.layers import count_macs
        from amc.metrics import size_fraction

        kind = spec["kind"]
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out: dict[str, Any] = {}
        model = copy.deepcopy(self.dense)
        dense_macs = count_macs(self.dense)[0]
        masks: dict[str, torch.Tensor] = {}
        lr = 0.01
        if kind == "fine":
            from amc.importance import prune_by_criterion

            masks, _ = prune_by_criterion(model, FINE_SIZE, spec["criterion"], loader=self.crit_loader(seed),
                                          rounds=SYNFLOW_ROUNDS)
            out["size_fraction"] = size_fraction(model)
        elif kind in ("channel", "scratch"):
            table = ch.channel_table(model)
            ratio = ch.find_uniform_ratio(table, CHANNEL_MACS, 8)
            crit = spec.get("criterion", "l2")
            plan = ch.plan_channels(model, ch.uniform_policy(table, ratio), crit, 8,
                                    loader=self.crit_loader(seed) if ch.needs_data(crit) else None)
            model = ch.prune_channels(model, plan)
            if kind == "scratch":
                from amc.procedures import reinitialise

                reinitialise(model, seed)
                lr = 0.1
            out["macs_fraction"] = count_macs(model)[0] / dense_macs
        elif kind == "slim":
            from amc.procedures import slim_plan, slim_train

            torch.manual_seed(seed)
            st = slim_train(model, self.train_loader(seed + 100), self.cfg(), spec["penalty"])
            out["mean_abs_gamma_after_training"] = st.get("mean_abs_gamma")
            model = ch.prune_channels(model, slim_plan(model, CHANNEL_MACS, 8))
            out["macs_fraction"] = count_macs(model)[0] / dense_macs
        elif kind in ("lottery", "lottery_reinit"):
            from amc.procedures import lottery, random_reinit

            cache = Path(self.args.cache) / f"ticket_size{spec['size']}_s{seed}.pt"
            if cache.exists():  # the ticket is shared by the ticket row and its control
                saved = torch.load(cache, weights_only=True)
                model.load_state_dict(saved["state"])
                masks = saved["masks"]
            else:
                torch.manual_seed(seed)
                res = lottery(model, self.train_loader(seed + 100), spec["size"], rounds=2, rewind_steps=10,
                              cfg=self.cfg())
                model, masks = res.ticket, res.masks
                tmp = cache.with_suffix(".tmp")
                torch.save({"state": model.state_dict(), "masks": masks}, tmp)
                tmp.replace(cache)
            if kind == "lottery_reinit":
                model = random_reinit(model, masks, seed)
            out["size_fraction"] = size_fraction(model)
        elif kind == "search":
            model, masks = self.search(spec["granularity"], seed, out)
            if spec["granularity"] == "fine":
                out["size_fraction"] = size_fraction(model)
            else:
                out["macs_fraction"] = count_macs(model)[0] / dense_macs
        before, after = self.finish(model, masks, seed, lr)
        out.update({"test_accuracy_before_finetune": before, "test_accuracy": after,
                    "seconds": time.perf_counter() - t0, "finetune_lr": lr})
        return out


    def search(self, granularity: str, seed: int, out: dict[str, Any]):  # type: ignore[no-untyped-def]
        """Optuna (TPE) over per-layer ratios with the task's best one-shot criterion; the reward is
        the accuracy after BN recalibration on the held-out split. Returns the pruned copy of the
        dense model and its masks (fine) for the common finetune."""
        import amc
        from amc.train import apply_masks

        crit = best_criterion(Path(self.args.cache), granularity)
        if granularity == "fine":
            budget, upper = amc.Budget("size", FINE_SIZE), 0.99
        else:
            budget, upper = amc.Budget("macs", CHANNEL_MACS), 0.9
        cfg = amc.EvalConfig(granularity=granularity, criterion=crit, calib_images=SEARCH_CALIB_IMAGES,
                             eval_images=SEARCH_EVAL_IMAGES, batch_size=256, upper=upper, round_to=8)
        ev = amc.Evaluator(self.dense, self.splits, budget, cfg)
        start = {"uniform": ev.uniform_policy()}
        if granularity == "fine":  # the one-shot policy (one global |w| threshold) is the second trial
            from amc.pruners.finegrained import global_policy

            start["sensitivity"] = ev.projector.project(global_policy(self.dense, FINE_SIZE, ev.names))
        options = {"study": f"methods-{granularity}-s{seed}", "enqueue_sensitivity": granularity == "fine"}
        folder = Path(self.args.cache) / f"search_{granularity}_s{seed}"  # study.db: a killed search resumes
        found = amc.make_searcher("optuna", ev, amc.SearchSpec(SEARCH_TRIALS, seed, start=start, options=options),
                                  folder).run()
        if found.best_policy is None or found.best_result is None:
            raise RuntimeError(f"the {granularity} search found no feasible policy")
        out.update({"criterion": crit, "search_trials": len(found.trials), "search_seconds": found.seconds,
                    "search_reward": found.best_result.reward, "search_heldout_accuracy": found.best_result.accuracy,
                    "search_eval_images": SEARCH_EVAL_IMAGES, "policy": dict(found.best_policy)})
        policy = ev.check(found.best_policy)
        model = copy.deepcopy(self.dense)
        if granularity == "fine":
            masks = ev.fine_masks(policy)
            apply_masks(model, masks)
            return model, masks
        import amc.pruners.channel as ch

        return ch.prune_channels(model, ev.plan(policy)), {}


# -- why OBD and SynFlow are low at size 0.1: each diagnosis separates one possible cause (seed 0) ----------------
DIAGNOSES = (
    ("magnitude (global |w|), the reference", "magnitude"),
    ("obd per-layer ratios, |w| inside each layer", "obd_ratios_mag_inside"),
    ("magnitude per-layer ratios, obd inside each layer", "mag_ratios_obd_inside"),
    ("obd, Fisher of 2048 held-out images (32 batches)", "obd_2048"),
    ("obd, Fisher of 256 test images outside the reported ones", "obd_test_images"),
    ("synflow, 100 rounds", "synflow_100"),
    ("magnitude, BN recalibrated before the finetune", "magnitude_bn_first"),
    ("magnitude at size 0.5", "magnitude_05"),
    ("obd at size 0.5", "obd_05"),
    ("synflow at size 0.5 (20 rounds)", "synflow_05"),
)


def _rank_masks(scores: dict[str, torch.Tensor], policy: dict[str, float]) -> dict[str, torch.Tensor]:
    """Per layer, remove the round(ratio * numel) lowest scores (the evaluator's stable rule)."""
    out = {}
    for n, sc in scores.items():
        k = round(policy[n] * sc.numel())
        keep = torch.ones(sc.numel(), dtype=torch.bool)
        keep[torch.argsort(sc.flatten().float(), stable=True)[:k]] = False
        out[n] = keep.view_as(sc)
    return out


def diagnose(bench: Bench, cache: Cache) -> None:
    """Fine size=0.1, seed 0: the masks of each DIAGNOSES entry, then the benchmark's finetune;
    also the accuracy after BN recalibration alone (no weight change) and the per-layer densities."""
    from amc.importance import masks_from_scores, obd_scores, prune_by_criterion, synflow_masks
    from amc.layers import layer_weight, prunable_names
    from amc.pruners.finegrained import global_policy
    from amc.train import apply_masks, evaluate, recalibrate_bn

    dense, seed = bench.dense, 0
    names = prunable_names(dense)
    calib = bench.splits.loader("train", 256, shuffle=False, augment=False, limit=bench.train_limit)
    for title, key in DIAGNOSES:
        if cache.get(f"diag__{key}") is not None:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] diagnosis: {title}", flush=True)
        t0 = time.perf_counter()
        mag = {n: layer_weight(dense, n).detach().abs().float() for n in names}
        size = 0.5 if key.endswith("_05") else FINE_SIZE
        if key in ("magnitude", "magnitude_bn_first", "magnitude_05"):
            masks = _rank_masks(mag, global_policy(dense, size, names))
        elif key in ("obd_05", "synflow_05"):
            masks, _ = prune_by_criterion(copy.deepcopy(dense), size, key[:-3], names, bench.crit_loader(seed),
                                          rounds=SYNFLOW_ROUNDS)
        elif key in ("obd_ratios_mag_inside", "mag_ratios_obd_inside", "obd_2048", "obd_test_images"):
            if key == "obd_2048":
                ld = bench.splits.loader("heldout", 64, shuffle=True, seed=seed)
                batches = [b for _, b in zip(range(32), ld, strict=False)]
            elif key == "obd_test_images":  # test images 5120-5375 (the report uses the first 1000)
                ld = bench.splits.loader("test", 64)
                batches = [b for i, b in zip(range(84), ld, strict=False) if i >= 80]
            else:
                batches = bench.crit_loader(seed)
            with torch.enable_grad():
                obd = obd_scores(dense, batches, len(batches), names)
            by_obd = masks_from_scores(dense, obd, size=FINE_SIZE)
            obd_pol = {n: 1.0 - int(m.sum()) / m.numel() for n, m in by_obd.items()}
            masks = (_rank_masks(mag, obd_pol) if key == "obd_ratios_mag_inside" else
                     _rank_masks(obd, global_policy(dense, FINE_SIZE, names)) if key == "mag_ratios_obd_inside"
                     else by_obd)
        else:
            with torch.enable_grad():
                masks = synflow_masks(dense, FINE_SIZE, names, rounds=100)
        model = copy.deepcopy(dense)
        apply_masks(model, masks)
        probe = copy.deepcopy(model)
        recalibrate_bn(probe, calib)
        bn_only = evaluate(probe, bench.test)
        if key == "magnitude_bn_first":
            model = probe
        before, after = bench.finish(model, masks, seed)
        row = {"title": title, "key": key, "size": size, "test_accuracy_before_finetune": before,
               "test_accuracy_bn_recalibrated": bn_only, "test_accuracy": after,
               "density": {n: float(m.float().mean()) for n, m in masks.items()},
               "seconds": time.perf_counter() - t0}
        cache.put(f"diag__{key}", row)
        print(f"   -> bn only {bn_only:.2%}, finetuned {after:.2%}", flush=True)


def diagnosis_lines(cache: Path) -> tuple[list[str], list[dict[str, Any]]]:
    rows = [json.loads(p.read_text()) for _, key in DIAGNOSES if (p := cache / f"diag__{key}.json").exists()]
    if not rows:
        return [], []
    lines = [f"## Why OBD and SynFlow are low at size {FINE_SIZE} (checked, seed 0)", "",
             "Each row changes one thing against the one-shot rows above (the same finetune; `BN only` = the "
             "pruned model after BatchNorm recalibration on the finetune's images, no weight change).", "",
             "| masks | BN only | finetuned | densest / sparsest layer |", "| --- | --- | --- | --- |"]
    for r in rows:
        d = r["density"]
        hi, lo = max(d, key=lambda n: d[n]), min(d, key=lambda n: d[n])
        lines.append(f"| {r['title']} | {r['test_accuracy_bn_recalibrated']:.2%} | {r['test_accuracy']:.2%} | "
                     f"{hi} {d[hi]:.3f} / {lo} {d[lo]:.3f} |")
    lines.append("")
    return lines, rows


def search_origins(cache: Path, granularity: str, seed: int) -> dict[str, Any] | None:
    """From a search row's stored Optuna study: where its best feasible trial came from (an
    enqueued start policy, or ``tpe``) and the best reward of the sampler's own trials."""
    db = cache / f"search_{granularity}_s{seed}" / "study.db"
    if not db.exists():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=f"methods-{granularity}-s{seed}", storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.values and t.user_attrs.get("result", {}).get("feasible")]
    if not done:
        return None
    best = max(done, key=lambda t: t.values[0])
    own = [t.values[0] for t in done if "origin" not in t.user_attrs]
    return {"best_origin": best.user_attrs.get("origin", "tpe"), "best_reward": best.values[0],
            "best_own_reward": max(own) if own else None, "trials": len(study.trials)}


def diagnosis_reading(rows: list[dict[str, Any]], diag: list[dict[str, Any]]) -> str:
    """The reading of the diagnosis rows, each sentence computed from them."""
    d = {r["key"]: r for r in diag}
    acc = {k: r["test_accuracy"] for k, r in d.items()}
    table = {r["method"]: r["test_accuracy"].get("seed0") for r in rows if r["task"] == f"fine size={FINE_SIZE}"}
    out = ["Checked in the code: both criteria score the dense model before any weight is removed "
           "(`prune_by_criterion` scores, then prunes), only the conv / linear weights (BN and biases are never "
           "scored), and higher scores are kept; SynFlow linearises the network as its paper does (absolute "
           "values of every parameter, here also of the BN buffers, BN in eval mode, double precision, an "
           "all-ones input)."]
    if {"magnitude_05", "obd_05", "synflow_05"} <= set(acc):
        out.append(f"At size 0.5 the same code gives obd {acc['obd_05']:.2%} and synflow {acc['synflow_05']:.2%} "
                   f"against magnitude {acc['magnitude_05']:.2%}: where pruning is mild the criteria work, which "
                   "rules out a sign error or scores on the wrong weights.")
    if {"magnitude", "obd_ratios_mag_inside", "mag_ratios_obd_inside"} <= set(acc):
        bn = {k: r["test_accuracy_bn_recalibrated"] for k, r in d.items()}
        r, a, b = bn["magnitude"], bn["obd_ratios_mag_inside"], bn["mag_ratios_obd_inside"]
        where = ("which weights OBD keeps inside each layer, more than how it spreads the budget across layers"
                 if abs(a - r) < abs(b - r) else "how OBD spreads the budget across layers, more than which weights "
                 "it keeps inside a layer")
        out.append(f"At size {FINE_SIZE}, OBD's per-layer densities with |w| inside each layer give {a:.2%} after "
                   f"BN recalibration alone ({acc['obd_ratios_mag_inside']:.2%} finetuned), magnitude's densities "
                   f"with OBD's choice inside each layer {b:.2%} ({acc['mag_ratios_obd_inside']:.2%}), magnitude "
                   f"{r:.2%} ({acc['magnitude']:.2%}): judged without the SGD steps' noise, the loss comes from "
                   f"{where}.")
    o = table.get("obd")
    if o is not None and "obd_2048" in acc:
        c = acc["obd_2048"]
        out.append(f"A Fisher of 2048 instead of 256 images gives {c:.2%} (256: {o:.2%}), "
                   + ("so the estimate's noise is not the cause" if c - o < 0.05 else "so part of the gap is the "
                      "estimate's noise") + ("" if "obd_test_images" not in acc else
                                             f"; a Fisher of test images the checkpoint never trained on gives "
                                             f"{acc['obd_test_images']:.2%}, so neither is the held-out split's "
                                             "memorisation by the checkpoint") + ".")
    sf = table.get("synflow")
    if sf is not None and "synflow_100" in d:
        dens = d["synflow_100"]["density"]
        empty = [n for n, v in dens.items() if v < 0.005]
        out.append(f"SynFlow with 100 rounds instead of {SYNFLOW_ROUNDS} gives {acc['synflow_100']:.2%} "
                   f"({SYNFLOW_ROUNDS} rounds: {sf:.2%})" + (f"; it empties {', '.join(empty)} (a shortcut, so the "
                                                             "network stays connected)" if empty else "") + ".")
    if "magnitude_bn_first" in acc and "magnitude" in acc:
        out.append(f"BatchNorm statistics dominate this short finetune: magnitude with the BN statistics "
                   f"re-estimated before the same finetune reaches {acc['magnitude_bn_first']:.2%} instead of "
                   f"{acc['magnitude']:.2%}.")
    out.append("Reading: no bug found; the low figures are the methods under this protocol. OBD's saliency is the "
               "second-order loss change of removing one weight alone, and one-shot removal of 90% of the weights "
               "is far outside that approximation; SynFlow is a data-free score meant for pruning at "
               "initialisation, blind to what the trained weights compute. A 20-step finetune rewards the "
               "criterion whose pruned network stays closest to the dense function, which is magnitude; with the "
               "long retraining both methods were designed for the gap would likely shrink (not measured here).")
    return " ".join(out)


def collect(cache: Path) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    for seed in SEEDS:
        for method, task, _spec in row_keys(seed):
            p = cache / f"{slug(method, task, seed)}.json"
            if (method, task) not in rows:
                rows[(method, task)] = {"method": method, "task": task, "test_accuracy": {}, "seconds": {}}
                order.append((method, task))
            if p.exists():
                r = json.loads(p.read_text())
                row = rows[(method, task)]
                row["test_accuracy"][f"seed{seed}"] = r["test_accuracy"]
                row["seconds"][f"seed{seed}"] = r["seconds"]
                row.setdefault("test_accuracy_before_finetune", {})[f"seed{seed}"] = r["test_accuracy_before_finetune"]
                for k in ("size_fraction", "macs_fraction", "mean_abs_gamma_after_training", "criterion"):
                    if r.get(k) is not None:
                        row[k] = r[k]
                if _spec["kind"] == "search":
                    row.setdefault("search", {})[f"seed{seed}"] = search_origins(cache, _spec["granularity"], seed)
    out = []
    for key in order:
        row = rows[key]
        accs = list(row["test_accuracy"].values())
        if not accs:
            continue
        row["test_accuracy"]["mean"] = sum(accs) / len(accs)
        row["seeds"] = len(accs)
        out.append(row)
    return out


def advice(rows: list[dict[str, Any]]) -> str:
    """A paragraph computed from the measured means: best one-shot criterion per task, and the
    differences each procedure made against its control."""
    acc = {(r["method"], r["task"]): r["test_accuracy"]["mean"] for r in rows}
    fine, chan = f"fine size={FINE_SIZE}", f"channel macs={CHANNEL_MACS}"

    def best(task: str, methods: tuple[str, ...]) -> tuple[str, float]:
        got = [(m, acc[(m, task)]) for m in methods if (m, task) in acc]
        return max(got, key=lambda x: x[1])

    bf = best(fine, FINE_CRITERIA)
    bc = best(chan, ("magnitude (l2)", "obd", "apoz"))
    out = [f"One-shot at size {FINE_SIZE}: {bf[0]} ({bf[1]:.2%}) is the best fine-grained criterion here; "
           f"at {CHANNEL_MACS:.0%} of the MACs, {bc[0]} ({bc[1]:.2%}) is the best channel criterion."]
    gaps = [(s, acc[("lottery ticket", f"fine size={s}")] - acc[("lottery random reinit", f"fine size={s}")])
            for s in LOTTERY_SIZES if ("lottery ticket", f"fine size={s}") in acc
            and ("lottery random reinit", f"fine size={s}") in acc]
    if gaps:
        out.append("The lottery ticket beats its random-reinit control by " + ", ".join(
            f"{g * 100:+.1f} points at size {s}" for s, g in gaps) + " (the control starts from fresh weights "
            "and gets the same short training, so this mostly measures what the trained weights are worth).")
    lt = acc.get(("lottery ticket", fine))
    if lt is not None:
        out.append(f"At size {FINE_SIZE} the ticket ({lt:.2%}) {'beats' if lt > bf[1] else 'does not beat'} "
                   f"one-shot {bf[0]} ({bf[1]:.2%}), at about three times the training (2 rounds + the final one).")
    sl, sc = acc.get(("slimming", chan)), acc.get(("slimming control (no penalty)", chan))
    if sl is not None and sc is not None:
        out.append(f"Slimming (lambda {SLIM_PENALTY}) gives {sl:.2%} against {sc:.2%} for the same training "
                   f"without the penalty ({(sl - sc) * 100:+.1f} points) and {bc[1]:.2%} for {bc[0]}.")
    sr, pf = acc.get(("scratch (l2 architecture)", chan)), acc.get(("magnitude (l2)", chan))
    if sr is not None and pf is not None:
        out.append(f"The l2-pruned architecture trained from scratch reaches {sr:.2%} against {pf:.2%} pruned and "
                   f"finetuned ({(pf - sr) * 100:+.1f} points for keeping the weights) on this schedule.")
    crit = {(r["method"], r["task"]): r.get("criterion") for r in rows}
    origins = {r["task"]: r.get("search", {}) for r in rows if r["method"] == SEARCH_METHOD}
    pick = {}
    for task, one in ((fine, bf), (chan, bc)):
        searched = acc.get((SEARCH_METHOD, task))
        pick[task] = f"{one[0]} one-shot"
        if searched is None:
            continue
        c = crit.get((SEARCH_METHOD, task)) or "?"
        gap = (searched - one[1]) * 100
        out.append(f"The Optuna-searched per-layer policy with {c} ({SEARCH_TRIALS} trials rewarded on "
                   f"{SEARCH_EVAL_IMAGES} held-out images) reaches {searched:.2%} at {task} against {one[1]:.2%} "
                   f"for one-shot {one[0]} ({gap:+.1f} points).")
        info = [v for v in origins.get(task, {}).values() if v]
        starts = [v for v in info if v["best_origin"] != "tpe"]
        if info and len(starts) == len(info):
            own = [v["best_own_reward"] for v in info if v["best_own_reward"] is not None]
            what = {"uniform": "the uniform policy", "sensitivity": "the one-global-threshold policy (clipped to "
                    "the 0.99 per-layer bound and projected back onto the budget)"}
            names = sorted({what.get(v["best_origin"], v["best_origin"]) for v in starts})
            out.append(f"In every seed its best was a start policy, {' / '.join(names)} (held-out reward "
                       f"{max(v['best_reward'] for v in info):.3f}); the sampler's own trials reached at most "
                       f"{max(own):.3f}: {SEARCH_TRIALS} trials over the per-layer ratios found nothing better.")
        if gap > 0.5:
            pick[task] = f"the searched policy with {c}"
        elif gap > -0.5:
            pick[task] = f"{one[0]} one-shot (the search gives about the same at a much higher cost)"
    lottery_note = " (or the lottery procedure when several trainings are affordable)" if (
        lt is not None and lt > bf[1]) else ""
    out.append(f"So, on this evidence: for a fine-grained budget use {pick[fine]}{lottery_note}, for a channel "
               f"budget use {pick[chan]}; the schedule is far shorter than a real finetune, so rerun with longer "
               "finetunes before trusting small gaps.")
    return " ".join(out)


def report(args: argparse.Namespace) -> None:
    cache = Path(args.cache)
    rows = collect(cache)
    total = len(row_keys(0)) * len(SEEDS)
    done = sum(r["seeds"] for r in rows)
    partial = done < total
    meta = {"model": "resnet20", "checkpoint": str(args.checkpoint), "train_images": args.train_images,
            "test_images": args.test_images, "finetune": "1 pass over the train slice, batch 128, SGD lr 0.01 "
            "cosine, masks held (scratch: lr 0.1)", "synflow_rounds": SYNFLOW_ROUNDS,
            "slim_penalty": SLIM_PENALTY, "criteria_images": 256,
            "search": {"trials": SEARCH_TRIALS, "eval_images": SEARCH_EVAL_IMAGES, "calib_images": SEARCH_CALIB_IMAGES,
                       "reward": "acc (held-out split)", "sampler": "tpe"}, "seeds": list(SEEDS),
            "rows_done": done, "rows_total": total, "partial": partial, "machine": machine_info()}
    out = Path(args.out)
    diag_lines, diag_rows = diagnosis_lines(cache)
    lines = [f"# Pruning methods vs magnitude on ResNet-20 / CIFAR-10{' (PARTIAL)' if partial else ''}", "",
             f"{done} of {total} (method, task, seed) runs measured; machine: {meta['machine']['cpu']}, "
             f"{meta['machine']['threads']} thread(s), torch {meta['machine']['torch']}.", "",
             f"Short schedule for the 2-core CPU, the same for every row: one pass over {args.train_images} "
             f"training images (batch 128, SGD lr 0.01 cosine, masks held); accuracy on the first "
             f"{args.test_images} shuffled test images. These are far from converged finetunes: read the "
             "differences between rows, not the absolute numbers. Dense ResNet-20: 88.34% (full test set).", "",
             "| method | task | fraction | acc. before finetune (seed 0) | test acc. per seed | mean "
             "| seconds (seed 0) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        frac = (f"size {r['size_fraction']:.3f}" if "size_fraction" in r else
                f"MACs {r['macs_fraction']:.3f}" if "macs_fraction" in r else "")
        per = ", ".join(f"{k}: {v:.2%}" for k, v in r["test_accuracy"].items() if k != "mean")
        b0 = r.get("test_accuracy_before_finetune", {}).get("seed0")
        s0 = r["seconds"].get("seed0")
        name = f"{r['method']} [{r['criterion']}]" if r.get("criterion") else r["method"]
        lines.append(f"| {name} | {r['task']} | {frac} | {'' if b0 is None else f'{b0:.2%}'} | {per} | "
                     f"{r['test_accuracy']['mean']:.2%} | {'' if s0 is None else f'{s0:.0f}'} |")
    lines += ["", "Notes: `magnitude` (fine) is one global |w| threshold; channel rows use one uniform ratio "
              "rounded to 8 channels with the named criterion (`magnitude (l2)` = filter L2). OBD and APoZ "
              f"score on 4 batches of 64 held-out images; SynFlow runs {SYNFLOW_ROUNDS} rounds (data-free). "
              f"Slimming: one pass over a different slice order with lambda = {SLIM_PENALTY} on |gamma|, then "
              "one global |gamma| threshold to the MACs budget; its control is the same without the penalty. "
              "Lottery: starts from the dense checkpoint (no early checkpoint of the original training "
              "exists), 2 rounds of training + global magnitude pruning, rewinding to 10 steps in; the "
              "control puts the ticket's mask on fresh weights. "
              f"`{SEARCH_METHOD}`: Optuna TPE over per-layer ratios ({SEARCH_TRIALS} trials, the sampler seeded "
              "by the row's seed) with the task's best one-shot criterion of the rows above (read from the cache), "
              f"each trial rewarded by the accuracy on {SEARCH_EVAL_IMAGES} images of the held-out split carved "
              f"from the training set after BN recalibration on {SEARCH_CALIB_IMAGES} training images (the test "
              "images are never seen by the search); fine: the uniform and the one-global-threshold policies are "
              "its first trials, per-layer bound 0.99; channel: the uniform policy first, bound 0.9; then the "
              "common finetune. Its seconds include the search. Seconds are wall time on a CPU shared with other "
              "jobs (niced, 1 thread): the first rows ran under heavy contention, so compare them loosely.", ""]
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    lines += ["## What the measured rows say", ""]
    for task, rs in by_task.items():
        ranked = sorted(rs, key=lambda r: -r["test_accuracy"]["mean"])
        lines.append(f"- {task}: " + " > ".join(f"{r['method']} {r['test_accuracy']['mean']:.2%} ({r['seeds']} seed"
                                                 f"{'s' if r['seeds'] > 1 else ''})" for r in ranked))
    lines.append("")
    if partial:
        lines += ["PARTIAL: the benchmark is still running; the ranking above covers the rows measured so far "
                  "and no recommendation is drawn until all rows (2 seeds) are in.", ""]
    else:
        lines += ["## Which method to pick (from the rows above)", "", advice(rows), ""]
    lines += diag_lines
    if diag_rows:
        lines += [diagnosis_reading(rows, diag_rows), ""]
    write_report(out, "methods", {**meta, "rows": rows, "diagnosis": diag_rows}, "\n".join(lines), stamp=False,
                 indent=2, default=None)
    print(f"wrote {out / 'methods.md'} ({done}/{total} runs)")


def main() -> None:
    ap = parser(__doc__, cache="runs/methods", device=False, threads=1)
    ap.add_argument("--checkpoint", default=str(MODELS / "resnet20_dense.pt"))
    ap.add_argument("--train-images", type=int, default=2560)
    ap.add_argument("--test-images", type=int, default=1000)
    ap.add_argument("--diagnose", action="store_true", help="only the size=0.1 OBD / SynFlow diagnosis rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Cache(args.cache, indent=2, default=None)  # <method>__<task>__s<seed>.json, diag__<key>.json
    if args.report_only:
        report(args)
        return
    bench = Bench(args)
    if args.diagnose:
        diagnose(bench, cache)
        report(args)
        return
    for seed in SEEDS:
        for method, task, spec in row_keys(seed):
            key = slug(method, task, seed)
            if cache.get(key) is not None:
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {method} / {task} / seed {seed}", flush=True)
            r = bench.run(spec, seed)
            cache.put(key, {"method": method, "task": task, "seed": seed, **r})
            print(f"   -> {r['test_accuracy']:.2%} ({r['seconds']:.0f} s)", flush=True)
            report(args)
    report(args)


if __name__ == "__main__":
    main()
