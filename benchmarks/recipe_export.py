"""Benchmark: recipes that re-apply bit for bit, exports that are really small, one-shot vs. AGP.

Part A, VGG8 fine-grained to <= 10% of dense size (FG-10; a global-magnitude policy): make the
recipe, rebuild it twice from the dense checkpoint (bit-identical?), finetune one-shot for
``--epochs`` vs. AGP iterative pruning over the same total epochs, then export the finetuned model
as compact sparse safetensors (fp32 and fp16) and report real bytes on disk beside the lab's count.
Part B, ResNet-56 channel pruning to <= 50% of dense MACs (uniform L2, round to 8): recipe, rebuild
twice, finetune, export as safetensors + config and ONNX, reload (identical outputs?), latency of
dense vs. pruned on the CPU (1 thread, batch 1) and, on CUDA, batch 256 bf16.
Writes ``recipe_export.md`` / ``.json`` and PNG plots into ``--out``.

    python benchmarks/recipe_export.py --device cuda --out reports/
    python benchmarks/recipe_export.py --device cpu --quick --out /tmp/re   # smoke test
"""

from __future__ import annotations

import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from amc.data import load_cifar10, make_splits, subset
from amc.export.files import load_pruned, load_sparse, save_pruned, save_sparse
from amc.export.onnx import export_onnx
from amc.latency import describe_target, measure
from amc.layers import count_macs, count_params, prunable_names
from amc.metrics import layer_sparsity, size_fraction
from amc.models import load_model
from amc.pruners.channel import find_uniform_ratio, plan_channels, uniform_policy
from amc.pruners.finegrained import global_prune, global_sparsity_for_size
from amc.pruners.schedule import IterativeSchedule
from amc.recipe import FinetuneSpec, SearchInfo, apply_recipe, load_recipe, make_recipe, save_recipe
from amc.report import AccuracyVsBudget, PolicyBars, Table, Text, write_report
from amc.train import evaluate
from benchmarks.harness import MODELS, machine_info, parser, write_json

NAME = "recipe_export"


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def fg_policy(dense: torch.nn.Module, size: float) -> dict[str, float]:
    """Per-layer sparsities of one global magnitude threshold that brings the model to ``size`` of dense
    (the non-prunable BatchNorm parameters stay, so the prunable weights go a little further)."""
    names = prunable_names(dense)
    work = copy.deepcopy(dense)
    global_prune(work, global_sparsity_for_size(dense, size, names), names)
    return layer_sparsity(work, names)


def main() -> None:
    ap = parser(__doc__, quick="tiny data slice, a sliver of an epoch (smoke test)")
    ap.add_argument("--models", default=str(MODELS))
    ap.add_argument("--epochs", type=float, default=5.0, help="finetune epochs per model (benchmark protocol: 5)")
    ap.add_argument("--agp-steps", type=int, default=4, help="AGP pruning steps; each and the final "
                    "finetune get epochs / (steps + 1) epochs, so the total matches one-shot")
    ap.add_argument("--fg-size", type=float, default=0.10, help="fine-grained size target (FG-10)")
    ap.add_argument("--ch-macs", type=float, default=0.50, help="channel MACs target (CH-50)")
    args = ap.parse_args()
    out = Path(args.out)
    dev = torch.device(args.device)
    epochs = 0.05 if args.quick else args.epochs  # quick: a few optimiser steps
    steps = 2 if args.quick else args.agp_steps
    lat_runs = (3, 10) if args.quick else (20, 200)  # (warm-up, timed) runs per latency measurement
    times: dict[str, float] = {}
    res: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else describe_target("cpu"),
                 "host": platform.node(), "torch": torch.__version__,
            "machine": machine_info(), "quick": args.quick, "epochs": epochs}

    t = time.perf_counter()
    data = load_cifar10(args.data)
    if args.quick:
        data = subset(data, train=1024, test=512)
    splits = make_splits(data, heldout=256 if args.quick else 5000, device=dev)
    test = splits.loader("test", 1000)  # batch size only affects speed of evaluation
    times["load data"] = time.perf_counter() - t

    # ------------------------------------------------------------------ A: VGG8 fine-grained
    ckpt = Path(args.models) / "vgg8_dense.pt"
    dense = load_model("vgg8", ckpt)
    res["vgg8_dense_accuracy"] = evaluate(dense.to(dev), test)
    dense = dense.cpu()
    t = time.perf_counter()
    policy = fg_policy(dense, args.fg_size)
    spec = FinetuneSpec(epochs=epochs)
    recipe = make_recipe("vgg8", ckpt, policy, budget=None, finetune=spec, search=SearchInfo("global-magnitude"))
    with tempfile.TemporaryDirectory() as d:
        path = save_recipe(recipe, Path(d) / "fg.yaml")
        recipe_bytes = path.stat().st_size
        loaded = load_recipe(path, checkpoint=ckpt)
    times["A: make + save + load recipe"] = time.perf_counter() - t
    t = time.perf_counter()
    m1, _ = apply_recipe(loaded, ckpt)
    times["A: rebuild from recipe"] = time.perf_counter() - t
    m2, _ = apply_recipe(loaded, ckpt)
    res["fg_rebuild_bit_identical"] = same_state(m1, m2)
    res["fg_size_fraction"] = size_fraction(m1)
    res["fg_recipe_bytes"] = recipe_bytes
    res["fg_accuracy_before_finetune"] = evaluate(m1.to(dev), test)
    del m1, m2

    train = splits.loader("train", spec.batch_size, seed=spec.seed)
    t = time.perf_counter()
    oneshot, _ = apply_recipe(loaded, ckpt, loader=train, device=dev)
    times["A: one-shot + finetune"] = time.perf_counter() - t
    res["fg_oneshot_accuracy"] = evaluate(oneshot, test)
    per = epochs / (steps + 1)
    agp_spec = FinetuneSpec(epochs=per, iterative=IterativeSchedule("agp", steps=steps, epochs_per_step=per))
    agp_recipe = make_recipe("vgg8", ckpt, policy, finetune=agp_spec, search=SearchInfo("global-magnitude"))
    t = time.perf_counter()
    agp, _ = apply_recipe(agp_recipe, ckpt, loader=train, device=dev)
    times[f"A: AGP {steps} steps + finetune"] = time.perf_counter() - t
    res["fg_agp_accuracy"] = evaluate(agp, test)
    res["fg_agp_size_fraction"] = size_fraction(agp)

    exports = []
    with tempfile.TemporaryDirectory() as d:
        dense_bytes = save_pruned(dense, "vgg8", Path(d) / "dense").weights.stat().st_size
        model = oneshot.cpu()
        for dtype in ("fp32", "fp16"):
            t = time.perf_counter()
            exp = save_sparse(model, Path(d) / f"fg_{dtype}.safetensors", dtype, arch="vgg8")
            times[f"A: export sparse {dtype}"] = time.perf_counter() - t
            back = load_sparse(exp.path)
            if dtype == "fp32":
                check = "bit-identical" if same_state(back, model) else "DIFFERS"
            else:  # fp16 values: equal to the fp16-rounded weights, nothing more lost
                rounded = copy.deepcopy(model).half().float()
                check = "= fp16-rounded weights" if same_state(back, rounded) else "DIFFERS"
            acc = evaluate(back.to(dev), test)
            counts: dict[str, int] = {}
            for enc in exp.encodings.values():
                counts[enc] = counts.get(enc, 0) + 1
            exports.append({"file": f"sparse {dtype}", "bytes on disk": exp.file_bytes,
                            "lab count (nnz x 32 bit) bytes": exp.lab_bytes, "dense fp32 file bytes": dense_bytes,
                            "file / dense": exp.file_bytes / dense_bytes, "reload": check,
                            "reloaded accuracy": acc, "encodings": ", ".join(f"{k} {v}" for k, v in counts.items())})
    res["fg_exports"] = exports
    res["fg_policy"] = policy

    # ------------------------------------------------------------------ B: ResNet-56 channel
    ckpt = Path(args.models) / "resnet56_dense.pt"
    dense = load_model("resnet56", ckpt)
    res["r56_dense_accuracy"] = evaluate(dense.to(dev), test)
    dense = dense.cpu()
    example = torch.zeros(1, 3, 32, 32)
    t = time.perf_counter()
    ratio = find_uniform_ratio(dense, args.ch_macs, round_to=8)
    ch_policy = uniform_policy(dense, ratio)
    plan = plan_channels(dense, ch_policy, "l2", 8, example)
    ch_recipe = make_recipe("resnet56", ckpt, ch_policy, "channel", "l2", kept=plan, round_to=8,
                            finetune=spec, search=SearchInfo("uniform"))
    with tempfile.TemporaryDirectory() as d:
        ch_loaded = load_recipe(save_recipe(ch_recipe, Path(d) / "ch.yaml"), checkpoint=ckpt)
    times["B: plan + recipe"] = time.perf_counter() - t
    t = time.perf_counter()
    c1, _ = apply_recipe(ch_loaded, ckpt)
    times["B: rebuild from recipe"] = time.perf_counter() - t
    c2, _ = apply_recipe(ch_loaded, ckpt)
    res["ch_uniform_ratio"] = ratio
    res["ch_rebuild_bit_identical"] = same_state(c1, c2)
    dense_macs, _ = count_macs(dense)
    res["ch_macs_fraction"] = count_macs(c1)[0] / dense_macs
    res["ch_params_fraction"] = count_params(c1) / count_params(dense)
    res["ch_accuracy_before_finetune"] = evaluate(c1.to(dev), test)
    del c2
    t = time.perf_counter()
    pruned, _ = apply_recipe(ch_loaded, ckpt, loader=train, device=dev)
    times["B: rebuild + finetune"] = time.perf_counter() - t
    res["ch_accuracy"] = evaluate(pruned, test)
    pruned = pruned.cpu()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        exp = save_pruned(pruned, "resnet56", Path(d) / "pruned")
        onnx_path = export_onnx(pruned, Path(d) / "pruned.onnx")
        times["B: export safetensors + ONNX"] = time.perf_counter() - t
        dense_exp = save_pruned(dense, "resnet56", Path(d) / "dense")
        back = load_pruned(exp.directory)
        x = torch.randn(8, 3, 32, 32)
        with torch.no_grad():
            res["ch_reload_identical_outputs"] = bool(torch.equal(back(x), pruned.eval()(x)))
        res["ch_files"] = {"pruned safetensors + config bytes": exp.file_bytes,
                           "dense safetensors + config bytes": dense_exp.file_bytes,
                           "pruned onnx bytes": onnx_path.stat().st_size}
    t = time.perf_counter()
    lat = {}
    for label, m in (("dense", dense), ("pruned", pruned)):
        lat[f"cpu 1 thread bs1 {label} ms"] = measure(m, "cpu", 1, 1, "torch", *lat_runs)
    lat["cpu speedup"] = lat["cpu 1 thread bs1 dense ms"] / lat["cpu 1 thread bs1 pruned ms"]
    if dev.type == "cuda":
        for label, m in (("dense", dense), ("pruned", pruned)):
            lat[f"{dev.type} bs256 bf16 {label} ms"] = measure(m, dev, 256, 1, "torch", *lat_runs)
        lat["gpu speedup"] = lat["cuda bs256 bf16 dense ms"] / lat["cuda bs256 bf16 pruned ms"]
    times["B: latency"] = time.perf_counter() - t
    res["ch_latency"] = lat
    res["times_s"] = times

    # ------------------------------------------------------------------ report
    acc = pd.DataFrame([
        {"model": "VGG8 dense", "accuracy": res["vgg8_dense_accuracy"], "size / MACs": "100% / 100%"},
        {"model": f"VGG8 FG-{round(100 * args.fg_size)}, rebuilt, before finetune",
         "accuracy": res["fg_accuracy_before_finetune"], "size / MACs": f"{res['fg_size_fraction']:.2%} size"},
        {"model": f"VGG8 one-shot + {epochs:g} epochs", "accuracy": res["fg_oneshot_accuracy"],
         "size / MACs": f"{res['fg_size_fraction']:.2%} size"},
        {"model": f"VGG8 AGP {steps} steps, {epochs:g} epochs in all", "accuracy": res["fg_agp_accuracy"],
         "size / MACs": f"{res['fg_agp_size_fraction']:.2%} size"},
        {"model": "ResNet-56 dense", "accuracy": res["r56_dense_accuracy"], "size / MACs": "100% / 100%"},
        {"model": f"ResNet-56 uniform L2 {ratio:.3f}, before finetune", "accuracy": res["ch_accuracy_before_finetune"],
         "size / MACs": f"{res['ch_params_fraction']:.2%} params / {res['ch_macs_fraction']:.2%} MACs"},
        {"model": f"ResNet-56 channel + {epochs:g} epochs", "accuracy": res["ch_accuracy"],
         "size / MACs": f"{res['ch_params_fraction']:.2%} params / {res['ch_macs_fraction']:.2%} MACs"},
    ])
    checks = pd.DataFrame([
        {"check": "VGG8 fine-grained recipe rebuilt twice: bit-identical", "result": res["fg_rebuild_bit_identical"]},
        {"check": "ResNet-56 channel recipe rebuilt twice: bit-identical", "result": res["ch_rebuild_bit_identical"]},
        {"check": "sparse fp32 file reloads bit-identical", "result": exports[0]["reload"] == "bit-identical"},
        {"check": "pruned safetensors + config reloads to identical outputs",
         "result": res["ch_reload_identical_outputs"]},
    ])
    files = pd.DataFrame([{"file": k, "bytes": v} for k, v in res["ch_files"].items()])
    lat_df = pd.DataFrame([{"measure": k, "value": v} for k, v in lat.items()])
    time_df = pd.DataFrame({"step": list(times), "seconds": list(times.values())})
    budget = pd.DataFrame([
        {"method": "one-shot", "budget": res["fg_size_fraction"], "accuracy": res["fg_oneshot_accuracy"],
         "dense_accuracy": res["vgg8_dense_accuracy"]},
        {"method": f"AGP x{steps}", "budget": res["fg_agp_size_fraction"], "accuracy": res["fg_agp_accuracy"],
         "dense_accuracy": res["vgg8_dense_accuracy"]},
    ])
    intro = (f"Device: {res['device']}; torch {torch.__version__}; finetune {epochs:g} epochs (SGD, cosine, lr "
             f"{spec.lr}); test set {len(splits.test_y)} images." + (" QUICK smoke run: not a result." if args.quick
                                                                    else ""))
    write_report(out, Table("Accuracy", acc),
                 Table("Replay and reload checks", checks),
                 Table("VGG8 FG exports: real bytes on disk vs. the lab's count", pd.DataFrame(exports)),
                 AccuracyVsBudget(budget, title="VGG8 one-shot vs. AGP at the same total epochs"),
                 PolicyBars({"global magnitude": policy}, title="VGG8 FG policy"),
                 Table("ResNet-56 channel-pruned files", files),
                 Table("ResNet-56 latency (median)", lat_df, floatfmt=".3f"),
                 Table("Wall time per step", time_df, floatfmt=".2f"),
                 Text("How to reproduce", "`python benchmarks/recipe_export.py --device cuda --out reports/`"),
                 title="Recipes, exports and iterative pruning", intro=intro, filename=f"{NAME}.md",
                 prefix=f"{NAME}_")
    write_json(out / f"{NAME}.json", res, indent=2, default=str)
    print(f"wrote {out / (NAME + '.md')}")


if __name__ == "__main__":
    main()
