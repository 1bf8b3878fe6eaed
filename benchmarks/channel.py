"""Benchmark CH-50: channel pruning to <= 50% of dense MACs, every method side by side in one run.

For ``--model vgg8`` or ``resnet56`` (from ``../shared/models/<model>_dense.pt``):

* the seed lab's uniform 30% (L2 of the next layer's input slice, no rounding);
* Torch-Pruning's own ``MagnitudePruner`` (group L2, ``round_to=8``), uniform and global, its
  ``pruning_ratio`` bisected to the largest MACs <= the target, as a user of that library would;
* our sensitivity-picked per-layer policy (greedy on held-out accuracy drop per MAC saved, after
  BN recalibration) at each ``--round-to`` multiple (1 = no rounding);
* the same picker with a latency objective: drop per unit of *predicted* latency saved, from
  per-layer lookup tables measured on this machine (CPU 1 thread batch 1, plus GPU batch 256 on
  CUDA), still subject to the MACs target.

Each: test accuracy before / after BN recalibration / after ``--epochs`` finetune epochs, params,
MACs, file bytes, latency (CPU 1 thread batch 1 in PyTorch and onnxruntime; GPU batch 256 bf16
with CUDA events), speedups = dense / pruned measured in this process. Also the lookup tables'
prediction error. With ``--reconstruct N`` (default 1024), every variant built from our channel
plans is also refitted by least squares on N train images (``amc.pruners.reconstruct``, AMC's recovery
step) and finetuned the same way (with distillation when ``--distill`` > 0).
Writes ``channel_<model>.md`` / ``.json`` (+ the latency tables as CSV) to --out.

    python benchmarks/channel.py --model vgg8 --device cuda --out reports/
    python benchmarks/channel.py --model vgg8 --device cpu --quick --out /tmp/ch   # smoke test
"""

from __future__ import annotations

import copy
import io
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from amc.data import load_cifar10, make_splits, subset
from amc.errors import BudgetError
from amc.latency import LatencyTable, describe_target, measure
from amc.layers import count_macs, count_params
from amc.models import load_model
from amc.pruners.channel import (
    ChannelPlan,
    channel_table,
    plan_channels,
    plan_cost,
    policy_counts,
    prune_channels,
)
from amc.pruners.reconstruct import reconstruct
from amc.sensitivity import pick_channel_policy, scan_sensitivity
from amc.train import FinetuneConfig, evaluate, finetune, recalibrate_bn
from benchmarks.harness import MODELS, machine_info, parser, write_report

ANCHORS = {  # DESIGN.md, measured on this data (H100): accuracy after 5 epochs, CPU and H100 speedups
    "vgg8": {"dense": 91.61, "lab uniform 30%": (90.24, 1.65, 0.85), "TP uniform": (90.05, 2.06, 1.21),
             "TP global": (90.40, 2.16, 1.01)},
    "resnet56": {"dense": 89.71, "TP uniform": (86.38, 1.04, 0.76), "TP global": (87.68, 1.38, 0.59)},
}
TARGETS = {"vgg8": "CPU >= 2.2x, H100 >= 1.5x, accuracy within 0.8 pt of dense after 5 epochs",
           "resnet56": "accuracy within 1.0 pt of dense, not slower than dense anywhere"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def final_layer(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def tp_prune(dense: nn.Module, macs_fraction: float, global_pruning: bool, example: torch.Tensor,
             round_to: int = 8, step: float = 0.025) -> tuple[nn.Module, float]:
    """Torch-Pruning's MagnitudePruner (group L2) at the pruning_ratio, on a ``step`` grid, whose MACs
    come closest to the target from below (MACs are not monotone in the ratio once round_to bites:
    on ResNet-56, 16 channels at ratio 0.9 round to no pruning at all)."""
    import torch_pruning as tp

    dense_macs = count_macs(dense)[0]
    target = macs_fraction * dense_macs

    def run(ratio: float) -> nn.Module:
        m = copy.deepcopy(dense).eval()
        pruner = tp.pruner.MagnitudePruner(
            m, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
            global_pruning=global_pruning, round_to=round_to, ignored_layers=[final_layer(m)])
        pruner.step()
        return m

    best: tuple[int, float] | None = None
    for i in range(1, int(0.7 / step + 1e-9) + 1):  # ratios step ... 0.7
        ratio = step * i
        macs = count_macs(run(ratio))[0]
        if macs <= target and (best is None or macs > best[0]):
            best = (macs, ratio)
    if best is None:
        raise RuntimeError(f"Torch-Pruning reaches no ratio with <= {macs_fraction:.0%} of dense MACs")
    return run(best[1]), best[1]


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def file_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getbuffer().nbytes


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def main() -> None:
    ap = parser(__doc__, quick="tiny slice, a fraction of an epoch (smoke test)")
    ap.add_argument("--model", choices=("vgg8", "resnet56", "resnet20"), default="vgg8")
    ap.add_argument("--checkpoint", default=None, help="default ../shared/models/<model>_dense.pt")
    ap.add_argument("--macs", type=float, default=0.5, help="MACs target as a fraction of dense")
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    ap.add_argument("--criterion", default="l2", help="criterion of the sensitivity-picked policies")
    ap.add_argument("--round-to", default=None,
                    help="roundings of the sensitivity-picked (MACs) policies (default vgg8 1,32; resnet 1,8)")
    ap.add_argument("--lat-round-to", default=None,
                    help="roundings of the latency-aware policies, '' to skip them (default vgg8 32; resnet 8)")
    ap.add_argument("--speed-goals", default="cpu=2.3,gpu=1.6",
                    help="predicted speedups the sens_speed policies must reach on top of the MACs budget, per "
                         "target with a lookup table (cpu: 1 thread batch 1; gpu: batch 256); '' to skip them")
    ap.add_argument("--scan-ratios", default=None,
                    help="ratios of the per-group scan (default vgg8 0.1 ... 0.9; resnet 0.25,0.5,0.75)")
    ap.add_argument("--cpu-runs", type=int, default=30, help="timed CPU runs per round")
    ap.add_argument("--gpu-runs", type=int, default=50, help="timed GPU runs per round")
    ap.add_argument("--rounds", type=int, default=2,
                    help="latency rounds, round-robin over all models (median of the rounds' medians)")
    ap.add_argument("--distill", type=float, default=0.5,
                    help="knowledge-distillation weight of a second finetune of every variant (0 = CE only)")
    ap.add_argument("--reconstruct", type=int, default=1024,
                    help="also refit each variant of our plans by least squares on this many train images, "
                         "then finetune it (0 = off)")
    ap.add_argument("--extra-lrs", default="", help="also finetune the sensitivity-picked models at these lrs "
                                                   "(reported on held-out and test, side table)")
    ap.add_argument("--tp-grid", type=float, default=None,
                    help="Torch-Pruning pruning_ratio grid step (default vgg8 0.025; resnet 0.05)")
    ap.add_argument("--variants", default=None, help="comma-separated subset of variant names to run")
    args = ap.parse_args()
    # defaults per model: the settings of the measured H100 runs (about 100 s for vgg8, 210 s for
    # resnet56). Multiples of 32 are what made VGG8 faster on the H100; ResNet widths 16/32/64 only
    # allow 8 (16 or 32 would leave layer1 / layer2 whole).
    vgg = args.model == "vgg8"
    args.round_to = args.round_to if args.round_to is not None else ("1,32" if vgg else "1,8")
    args.lat_round_to = args.lat_round_to if args.lat_round_to is not None else ("32" if vgg else "8")
    args.scan_ratios = args.scan_ratios or ("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9" if vgg else "0.25,0.5,0.75")
    args.tp_grid = args.tp_grid or (0.025 if vgg else 0.05)
    out = Path(args.out)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    ckpt = args.checkpoint or str(MODELS / f"{args.model}_dense.pt")
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    data = load_cifar10(args.data)
    if args.quick:
        data = subset(data, train=2000, test=200)
        args.epochs = min(args.epochs, 0.02)
        args.cpu_runs, args.gpu_runs, args.rounds = min(args.cpu_runs, 3), min(args.gpu_runs, 10), 1
        args.scan_ratios = "0.5"
    splits = make_splits(data, heldout=100 if args.quick else 5000, device=dev)
    test = splits.loader("test", 1000)
    heldout = splits.loader("heldout", 1000)  # policy picking: never the test set
    # BN recalibration: 5,120 train images, no augmentation (about 40 ms on an H100)
    recal = splits.loader("train", 512, shuffle=False, augment=False, limit=128 if args.quick else 5120)
    times["load data"] = time.perf_counter() - t

    dense = load_model(args.model, ckpt).to(dev).eval()
    example = torch.randn(1, 3, 32, 32, device=dev)
    table = channel_table(dense, example)
    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr)
    rounds = [int(r) for r in args.round_to.split(",") if r]
    lat_rounds = [int(r) for r in args.lat_round_to.split(",") if r]
    try:
        goals = {k.strip(): float(v) for k, v in (g.split("=") for g in args.speed_goals.split(",") if g.strip())}
    except ValueError:
        raise SystemExit(f"--speed-goals must look like cpu=2.3,gpu=1.6, got {args.speed_goals!r}") from None
    if not set(goals) <= {"cpu", "gpu"} or not all(v > 0 for v in goals.values()):
        raise SystemExit(f"--speed-goals takes cpu= and gpu= with positive speedups, got {args.speed_goals!r}")
    scan_ratios = tuple(float(r) for r in args.scan_ratios.split(","))
    wanted = set(args.variants.split(",")) if args.variants else None

    def latencies(model: nn.Module) -> dict[str, float]:
        res = {"cpu_torch_ms": measure(model, "cpu", 1, 1, "torch", warmup=5, runs=args.cpu_runs),
               "cpu_ort_ms": measure(model, "cpu", 1, 1, "onnxruntime", warmup=5, runs=args.cpu_runs)}
        if cuda:
            res["gpu_ms"] = measure(model, dev, 256, 1, "torch", warmup=10, runs=args.gpu_runs)
            try:
                res["gpu_graph_ms"] = measure(model, dev, 256, 1, "torch", warmup=10, runs=args.gpu_runs,
                                              cuda_graph=True)
            except RuntimeError as e:
                log(f"CUDA graph timing failed: {e}")
        return res

    rep: dict = {"model": args.model, "checkpoint": ckpt, "device": str(dev), "macs_target": args.macs,
                 "speed_goals": goals,
                 "finetune": {"epochs": args.epochs, "lr": args.lr, "schedule": cfg.schedule,
                              "distill_weight": args.distill, "distill_temperature": cfg.distill_temperature},
                 "reconstruct_images": args.reconstruct,
                 "quick": args.quick, "host": platform.node(), "cpu": describe_target("cpu", 1),
                 "gpu": describe_target(dev) if cuda else None, "torch": torch.__version__, "variants": {},
                 "machine": machine_info()}
    def save() -> None:  # after every stage: a run cut short still leaves its numbers
        rep["times_s"] = times
        write_report(out, f"channel_{args.model}", rep, render(rep), stamp=False)

    t = time.perf_counter()
    dense_acc = evaluate(dense, test)
    rep["dense"] = {"acc": dense_acc, "acc_heldout": evaluate(dense, heldout), "macs": table.dense_macs,
                    "params": table.dense_params, "file_bytes": file_bytes(dense), "widths": conv_widths(dense)}
    times["dense"] = time.perf_counter() - t
    log(f"dense: acc {dense_acc:.2%}, {table.dense_macs / 1e6:.1f}M MACs")
    save()
    extra_lrs = [float(v) for v in args.extra_lrs.split(",") if v]

    def finish(name: str, model: nn.Module, info: dict, plan: ChannelPlan | None = None) -> None:
        t0 = time.perf_counter()
        model = model.to(dev).eval()
        rc_model = copy.deepcopy(model) if plan is not None and args.reconstruct > 0 else None
        macs, params = count_macs(model)[0], count_params(model)
        before = evaluate(model, test)
        recal_model = copy.deepcopy(model)
        recalibrate_bn(recal_model, recal)
        after_recal = evaluate(recal_model, test)
        start = copy.deepcopy(model) if extra_lrs and name.startswith("sens") else None
        kd_model = copy.deepcopy(model) if args.distill > 0 else None
        ft = finetune(model, splits.loader("train", 256, seed=1), cfg)
        after = evaluate(model, test)
        row = {**info, "macs": macs, "params": params, "macs_fraction": macs / table.dense_macs,
               "params_fraction": params / table.dense_params, "file_bytes": file_bytes(model),
               "acc_before": before, "acc_recal": after_recal, "acc_after": after,
               "acc_after_heldout": evaluate(model, heldout), "delta_pt": 100 * (after - dense_acc),
               "finetune_s": ft["seconds"], "widths": conv_widths(model)}
        if kd_model is not None:  # the same finetune (batches, schedule) with the dense model as teacher
            finetune(kd_model, splits.loader("train", 256, seed=1), replace(cfg, distill_weight=args.distill),
                     teacher=dense)
            row["acc_after_kd"] = evaluate(kd_model, test)
            row["delta_pt_kd"] = 100 * (row["acc_after_kd"] - dense_acc)
        if rc_model is not None and plan is not None:  # AMC's least-squares recovery, then the same finetune
            t1 = time.perf_counter()
            rc = reconstruct(dense, rc_model, plan, recal, images=args.reconstruct)
            row["reconstruct_s"] = time.perf_counter() - t1
            row["acc_rc"] = evaluate(rc_model, test)
            row["rc_rel_error"] = {k: list(v) for k, v in rc.layers.items()}
            finetune(rc_model, splits.loader("train", 256, seed=1), replace(cfg, distill_weight=args.distill),
                     teacher=dense if args.distill > 0 else None)
            row["acc_after_rc"] = evaluate(rc_model, test)
            row["delta_pt_rc"] = 100 * (row["acc_after_rc"] - dense_acc)
        for lr in extra_lrs if start is not None else []:
            m2 = copy.deepcopy(start)
            finetune(m2, splits.loader("train", 256, seed=1), FinetuneConfig(epochs=args.epochs, lr=lr))
            row.setdefault("extra_lrs", {})[str(lr)] = {"heldout": evaluate(m2, heldout), "test": evaluate(m2, test)}
        rep["variants"][name] = row
        models[name] = model
        times[name] = time.perf_counter() - t0
        log(f"{name}: MACs {row['macs_fraction']:.1%}, acc {before:.2%} -> recal {after_recal:.2%} -> "
            f"{after:.2%} ({row['delta_pt']:+.2f} pt) {row.get('extra_lrs', '')} [{times[name]:.0f}s]")
        save()

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    models: dict[str, nn.Module] = {}
    # 1. the lab's uniform 30%, L2 of the next layer's input slice, no rounding; the lab pruned the
    # convs followed by a conv, not the last one (whose next layer is the classifier): 50.4% MACs
    if want("lab_uniform30"):
        last = final_layer(dense)
        lab = {n: 0.3 for n in table.prunable_layers()
               if any(c != _name_of(dense, last) for c in table.group(n).consumers)}
        plan = plan_channels(dense, lab, "l2_next", round_to=1)
        finish("lab_uniform30", prune_channels(dense, plan, example),
               {"method": "lab uniform 30% (L2 of next input, no rounding)", "round_to": 1}, plan)
    # 2. Torch-Pruning's MagnitudePruner as its users run it
    for glob in (False, True):
        name = "tp_global" if glob else "tp_uniform"
        if want(name):
            t0 = time.perf_counter()
            m, ratio = tp_prune(dense, args.macs, glob, example, step=args.tp_grid)
            times[f"{name} bisect"] = time.perf_counter() - t0
            finish(name, m, {"method": f"Torch-Pruning MagnitudePruner L2 {'global' if glob else 'uniform'}",
                             "round_to": 8, "pruning_ratio": ratio})

    # 3. sensitivity-picked per-layer policies
    cache: dict = {}
    scans = {}
    t0 = time.perf_counter()
    for r in sorted(set(rounds) | set(lat_rounds)):
        if want(f"sens_macs_r{r}") or want(f"sens_lat_r{r}"):
            scans[r] = scan_sensitivity(dense, heldout, recal, args.criterion, r, scan_ratios, cache=cache)
    times["sensitivity scans"] = time.perf_counter() - t0
    log(f"sensitivity scans: {len(cache)} points in {times['sensitivity scans']:.0f}s")
    rep["scans"] = {str(r): s.to_dict() for r, s in scans.items()}

    def run_sens(name: str, r: int, cost: Callable | None, label: str, until: Callable | None = None) -> None:
        t1 = time.perf_counter()
        try:
            policy = pick_channel_policy(table, scans[r], args.macs, cost=cost, until=until)
        except BudgetError as e:  # a goal the scanned ratios cannot reach: say so, run the rest
            log(f"{name}: skipped, {e}")
            rep.setdefault("skipped", {})[name] = str(e)
            return
        times[f"{name} pick"] = time.perf_counter() - t1
        plan = plan_channels(dense, policy, args.criterion, round_to=r)
        assert plan_cost(table, plan)["macs"] <= args.macs * table.dense_macs
        finish(name, prune_channels(dense, plan, example),
               {"method": label, "round_to": r, "criterion": args.criterion, "policy": policy,
                "kept": policy_counts(table, policy, r)}, plan)

    for r in rounds:
        if want(f"sens_macs_r{r}"):
            run_sens(f"sens_macs_r{r}", r, None, f"sensitivity-picked, accuracy drop per MAC (round {r})")

    luts: list[LatencyTable] = []
    if lat_rounds and any(want(f"sens_lat_r{r}") or want(f"sens_speed_r{r}") for r in lat_rounds):
        luts.append(LatencyTable(out / "latency_lut_cpu.csv", "cpu", 1, 1, warmup=3, runs=15 if not args.quick else 3))
        if cuda:
            luts.append(LatencyTable(out / "latency_lut_gpu.csv", dev, 256, 1, warmup=5, runs=20))
        fns = [lut.counts_cost(table) for lut in luts]
        base = [f({}) for f in fns]

        def lat_cost(counts) -> float:  # mean over targets of predicted latency / dense prediction
            return sum(f(counts) / b for f, b in zip(fns, base, strict=True)) / len(fns)

        for r in lat_rounds:
            if want(f"sens_lat_r{r}"):
                run_sens(f"sens_lat_r{r}", r, lat_cost,
                         f"sensitivity-picked, accuracy drop per predicted latency ({'CPU+GPU' if cuda else 'CPU'}; "
                         f"round {r})")
        # the same ordering, but picked on until every target's predicted speedup reaches its goal
        kinds = ["cpu"] + (["gpu"] if cuda else [])
        goal = [goals.get(k) for k in kinds]

        def fast_enough(counts) -> bool:  # every target with a goal: predicted dense / pruned >= its goal
            return all(b / f(counts) >= g for f, b, g in zip(fns, base, goal, strict=True) if g)

        if any(goal):
            words = " and ".join(f"{k.upper()} {g:g}x" for k, g in zip(kinds, goal, strict=True) if g)
            for r in lat_rounds:
                if want(f"sens_speed_r{r}"):
                    run_sens(f"sens_speed_r{r}", r, lat_cost,
                             f"sensitivity-picked per predicted latency until the predicted speedup reaches "
                             f"{words} (round {r})", until=fast_enough)
        for lut in luts:
            lut.save()

    # 4. latency: every model, round-robin, so that drift of the machine hits all alike
    t0 = time.perf_counter()
    everyone = {"dense": dense, **models}
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in everyone}
    for rnd in range(args.rounds):
        for n, m in everyone.items():
            for k, v in latencies(m).items():
                samples[n].setdefault(k, []).append(v)
        log(f"latency round {rnd + 1}/{args.rounds} done")
    for n, ks in samples.items():
        row = rep["dense"] if n == "dense" else rep["variants"][n]
        for k, vs in ks.items():
            row[k] = statistics.median(vs)
            row[k.removesuffix("_ms") + "_rounds"] = vs
    for n, row in rep["variants"].items():
        for k in samples["dense"]:
            if k in row:
                row[k.removesuffix("_ms") + "_speedup"] = rep["dense"][k] / row[k]
        log(f"{n}: " + ", ".join(f"{k} {row[k]:.3f} ({row[k.removesuffix('_ms') + '_speedup']:.2f}x)"
                                 for k in samples["dense"] if k in row))
    times["latency"] = time.perf_counter() - t0
    save()

    # 5. lookup-table validation: per-layer sums vs the end-to-end medians measured above
    t0 = time.perf_counter()
    val_luts = luts or [LatencyTable(out / "latency_lut_cpu.csv", "cpu", 1, 1, warmup=3, runs=10)]
    rep["lut_validation"] = {}
    for lut in val_luts:
        key = ("gpu_graph_ms" if lut.cuda_graph else "gpu_ms") if lut.device.type == "cuda" else "cpu_torch_ms"
        if key not in rep["dense"]:
            continue
        rows = []
        all_models = {"dense": dense, **models}
        scale = rep["dense"][key] / lut.predict(dense)  # calibration: the dense model's measured/predicted
        for name, m in all_models.items():
            meas = rep["dense"][key] if name == "dense" else rep["variants"][name][key]
            pred = lut.predict(m)
            rows.append({"model": name, "measured_ms": meas, "predicted_ms": pred, "error": pred / meas - 1,
                         "calibrated_ms": pred * scale, "calibrated_error": pred * scale / meas - 1})
        lut.save()
        rep["lut_validation"][lut.name + f" batch {lut.batch}"] = rows
    times["lut validation"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_all
    save()
    log(f"wrote {out / f'channel_{args.model}.md'} and .json in {times['total']:.0f}s")


def _fmt_lat(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    sp = row.get(f"{key.removesuffix('_ms')}_speedup")
    return f"{row[key]:.3f}" + (f" ({sp:.2f}x)" if sp is not None else "")


def render(rep: dict) -> str:
    d = rep["dense"]
    gpu = rep.get("gpu")
    kd = any("acc_after_kd" in v for v in rep["variants"].values())
    lines = [f"# CH-50: channel pruning of {rep['model']} to <= {rep['macs_target']:.0%} of dense MACs", ""]
    if rep["quick"]:
        lines += ["**Quick smoke run (tiny data slice, a fraction of an epoch): numbers are not results.**", ""]
    lines += [
        f"One run of `benchmarks/channel.py` on {rep['device']} ({gpu or 'no GPU'}; CPU: {rep['cpu']}), "
        f"torch {rep['torch']}. Checkpoint `{Path(rep['checkpoint']).name}`. Finetune: {rep['finetune']['epochs']:g} "
        f"epochs, SGD lr {rep['finetune']['lr']:g} {rep['finetune']['schedule']}"
        + (f"; 'KD' is the same finetune with distillation from the dense model (weight "
           f"{rep['finetune']['distill_weight']:g}, temperature {rep['finetune']['distill_temperature']:g})"
           if kd else "")
        + ". Accuracy on the 10,000 test images; "
        "policies picked on the 5,000-image held-out split of train. Latency: median ms; CPU 1 thread batch 1 "
        "(PyTorch eager, onnxruntime); GPU batch 256 bf16 channels_last, CUDA events, cuDNN autotuning. "
        "Speedup = dense / pruned, same process.",
        "",
        "| variant | round | MACs | params | file MiB | acc before | after BN recal | after finetune | Δ pt "
        + ("| after finetune + KD | Δ pt KD " if kd else "")
        + "| CPU torch ms | CPU ORT ms | GPU eager ms | GPU graph ms |",
        "| --- " * (13 + 2 * kd) + "|",
        f"| dense | - | {d['macs'] / 1e6:.1f}M | {d['params']:,} | {d['file_bytes'] / 2**20:.2f} "
        f"| {d['acc']:.2%} | | | {'| | ' if kd else ''}| {_fmt_lat(d, 'cpu_torch_ms')} | {_fmt_lat(d, 'cpu_ort_ms')} "
        f"| {_fmt_lat(d, 'gpu_ms')} | {_fmt_lat(d, 'gpu_graph_ms')} |",
    ]
    for name, v in rep["variants"].items():
        kd_cells = "" if not kd else (
            f"| {v['acc_after_kd']:.2%} | {v['delta_pt_kd']:+.2f} " if "acc_after_kd" in v else "| | ")
        lines.append(
            f"| **{name}**: {v['method']} | {v['round_to']} | {v['macs_fraction']:.1%} | {v['params_fraction']:.1%} "
            f"| {v['file_bytes'] / 2**20:.2f} | {v['acc_before']:.2%} | {v['acc_recal']:.2%} | {v['acc_after']:.2%} "
            f"| {v['delta_pt']:+.2f} {kd_cells}| {_fmt_lat(v, 'cpu_torch_ms')} | {_fmt_lat(v, 'cpu_ort_ms')} "
            f"| {_fmt_lat(v, 'gpu_ms')} | {_fmt_lat(v, 'gpu_graph_ms')} |")
    rc = {n: v for n, v in rep["variants"].items() if "acc_after_rc" in v}
    if rc:
        ft = "finetune + KD" if rep["finetune"]["distill_weight"] > 0 else "finetune"
        lines += ["", f"Least-squares reconstruction (AMC's recovery step, `amc.pruners.reconstruct`, "
                  f"{rep.get('reconstruct_images', '?')} train images) before the same {ft}:", "",
                  f"| variant | after BN recal | after reconstruction | after {ft} | Δ pt | without reconstruction |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for n, v in rc.items():
            plain = v.get("acc_after_kd", v["acc_after"]) if rep["finetune"]["distill_weight"] > 0 else v["acc_after"]
            lines.append(f"| {n} | {v['acc_recal']:.2%} | {v['acc_rc']:.2%} | {v['acc_after_rc']:.2%} "
                         f"| {v['delta_pt_rc']:+.2f} | {plain:.2%} |")
    extra = {n: v["extra_lrs"] for n, v in rep["variants"].items() if v.get("extra_lrs")}
    if extra:
        lrs = sorted({lr for e in extra.values() for lr in e}, key=float)
        lines += ["", f"Finetune learning rate (held-out / test accuracy after {rep['finetune']['epochs']:g} epochs; "
                  f"the table above uses lr {rep['finetune']['lr']:g}):", "",
                  "| variant | " + " | ".join(f"lr {lr}" for lr in [rep['finetune']['lr'], *lrs]) + " |",
                  "| --- |" + " --- |" * (len(lrs) + 1)]
        for n, e in extra.items():
            v = rep["variants"][n]
            cells = [f"{v['acc_after_heldout']:.2%} / {v['acc_after']:.2%}"]
            cells += [f"{e[lr]['heldout']:.2%} / {e[lr]['test']:.2%}" for lr in lrs]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Latency: median over {len(d.get('cpu_torch_rounds', [0]))} round-robin rounds of per-round "
              "medians. GPU eager = PyTorch eager (pays the host's kernel launches); GPU graph = the same "
              "forward captured in a CUDA graph and replayed (device time only).", ""]
    lines += ["Caveat: the dense checkpoints were trained on all 50,000 train images, the held-out split "
              "included, so held-out accuracy (about 98-100% after finetuning) measures fit rather than "
              "generalisation; the sensitivity scan still ranks groups by it, and the learning-rate table should "
              "be read on the test column.", ""]
    lines += [f"Targets (issue 3): {TARGETS.get(rep['model'], '-')}.", ""]
    for name, why in rep.get("skipped", {}).items():
        lines += [f"Not built: **{name}**: {why}.", ""]
    anchors = ANCHORS.get(rep["model"])
    if anchors:
        lines += ["Anchors (DESIGN.md, same data and checkpoints, one H100 run): "
                  + "; ".join(f"{k} {v}" if not isinstance(v, tuple) else
                              f"{k} {v[0]:.2f}% (CPU {v[1]:.2f}x, H100 {v[2]:.2f}x)" for k, v in anchors.items()), ""]
    lines += ["## Conv widths", "", "| variant | output channels of each conv |", "| --- | --- |",
              f"| dense | {_widths(d['widths'])} |"]
    lines += [f"| {n} | {_widths(v['widths'])} |" for n, v in rep["variants"].items()]
    for target, rows in rep.get("lut_validation", {}).items():
        errs = [abs(r["error"]) for r in rows]
        cal = [abs(r["calibrated_error"]) for r in rows if r["model"] != "dense"]
        lines += ["", f"## Latency lookup table: {target}", "",
                  "Prediction = sum of per-layer entries (conv+BN+ReLU block or Linear, measured alone on this "
                  "machine); calibrated = times the dense model's measured / predicted ratio (pools, adds and overhead "
                  "scale with the activations).", "",
                  "| model | measured ms | predicted ms | error | calibrated ms | calibrated error |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['model']} | {r['measured_ms']:.3f} | {r['predicted_ms']:.3f} | {r['error']:+.1%} "
                  f"| {r['calibrated_ms']:.3f} | {r['calibrated_error']:+.1%} |" for r in rows]
        lines += ["", f"Mean |error| {statistics.mean(errs):.1%}; calibrated, pruned models only: "
                  f"{statistics.mean(cal) if cal else float('nan'):.1%}."]
    lines += ["", "## Time (s)", "", " · ".join(f"{k} {v:.1f}" for k, v in rep.get("times_s", {}).items()), ""]
    return "\n".join(lines)


def _widths(ws: list[int]) -> str:
    out, prev, n = [], None, 0
    for w in [*ws, None]:
        if w == prev:
            n += 1
            continue
        if prev is not None:
            out.append(f"{prev}" + (f"×{n}" if n > 1 else ""))
        prev, n = w, 1
    return " ".join(out)


if __name__ == "__main__":
    main()
