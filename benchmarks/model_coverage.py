"""Model coverage: every torchvision classifier and a list of timm models, channel-pruned one-shot.

Each model is built with random weights (nothing is downloaded), run on one random image (64x64,
else 128 or 224 where the model needs more), pruned to ``--budget`` (default ``macs=0.5``) by
``amc.pruners.oneshot.prune_to_budget`` and run again. Columns: built / forward ok / output shape
unchanged / MACs fraction / within budget / seconds / error.

Resumable: each model's row is cached as JSON under ``--cache`` and skipped on the next run
(``--redo-failed`` reruns the failures). Each model runs in a forked child with a time limit.

    .venv/bin/python benchmarks/model_coverage.py --quick          # a few models, minutes
    nice -n 10 .venv/bin/python benchmarks/model_coverage.py        # all; writes reports/model_coverage.*
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from benchmarks.harness import ROOT, Cache, parser, write_json, write_text

TIMM_MODELS = [
    # residual CNNs
    "resnet10t", "resnet18", "resnet50", "resnet50d", "resnext50_32x4d", "seresnet50", "wide_resnet50_2",
    "cspresnet50", "dla34", "densenet121", "hrnet_w18_small", "xception41", "inception_v3", "repvgg_a0",
    "mobileone_s0",
    # mobile / NAS CNNs
    "efficientnet_b0", "efficientnet_lite0", "tf_efficientnetv2_b0", "mobilenetv2_100", "mobilenetv3_large_100",
    "mobilenetv3_small_100", "mnasnet_100", "ghostnet_100", "rexnet_100", "mixnet_s", "lcnet_050",
    # modern CNNs
    "convnext_atto", "convnext_tiny", "convnextv2_atto", "regnetx_002", "regnety_002", "regnety_016",
    "edgenext_xx_small", "fastvit_t8", "poolformer_s12",
    # transformers and MLPs
    "vit_tiny_patch16_224", "vit_small_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224", "mixer_s16_224", "resmlp_12_224", "levit_128s", "mobilevit_xs",
    "efficientformer_l1", "efficientvit_b0",
]
QUICK = ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:shufflenet_v2_x0_5",
         "torchvision:vit_b_16", "timm:convnext_atto"]
SIZES = (64, 128, 224)  # tried in order: the first the model builds and runs at
NUM_CLASSES = 10


def all_refs() -> list[str]:
    import torchvision

    tv = [f"torchvision:{n}" for n in sorted(torchvision.models.list_models(module=torchvision.models))]
    return tv + [f"timm:{n}" for n in TIMM_MODELS]


def _error_line(e: BaseException) -> str:
    from amc import AmcError

    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, AmcError):
        return msg[:400]
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}{where}: {msg}"[:400]


def run_one(ref: str, budget: str) -> dict[str, Any]:
    """Build, run, prune and rerun one model; a row of plain values (never raises)."""
    import torch

    from amc import prune_to_budget
    from amc.models import resolve_model

    torch.manual_seed(0)
    source, name = ref.split(":", 1)
    row: dict[str, Any] = {"source": source, "name": name, "ok": False, "built": False, "forward_ok": False,
                           "shape_ok": False, "within_budget": False, "macs_fraction": None, "size": None,
                           "error": "", "seconds": 0.0}
    t0 = time.perf_counter()
    model, x, y = None, None, None
    first_error = ""
    for size in SIZES:
        try:
            model = resolve_model(ref, num_classes=NUM_CLASSES, input_size=(3, size, size)).eval()
            row["built"] = True
            x = torch.randn(1, 3, size, size)
            with torch.no_grad():
                y = model(x)
            row["size"] = size
            break
        except Exception as e:
            first_error = first_error or _error_line(e)
            model = None
    if model is None or x is None or not isinstance(y, torch.Tensor):
        row["error"] = first_error or "the output is not one tensor"
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return row
    row["forward_ok"] = True
    row["params"] = sum(p.numel() for p in model.parameters())
    try:
        pruned, info = prune_to_budget(model, x, budget)
        with torch.no_grad():
            y2 = pruned.eval()(x)
        row["shape_ok"] = tuple(y2.shape) == tuple(y.shape)
        row["macs_fraction"] = round(info.macs_fraction, 4)
        row["params_fraction"] = round(info.params_fraction, 4)
        row["within_budget"] = info.met
        row["dense_macs"] = info.dense_macs
        row["ratio"] = round(info.ratio, 4)
        row["held"] = len(info.held)
        row["ok"] = bool(row["shape_ok"]) and bool(torch.isfinite(y2).all())
        if not row["shape_ok"]:
            row["error"] = f"output shape changed: {tuple(y.shape)} -> {tuple(y2.shape)}"
        elif not info.met:
            row["error"] = info.notes[-1] if info.notes else "budget not met"
    except Exception as e:
        row["error"] = _error_line(e)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _child(ref: str, budget: str, threads: int, q: Any) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")  # torch-pruning's notes on unwrapped parameters, timm's deprecations
    torch.set_num_threads(threads)
    q.put(run_one(ref, budget))


def run_limited(ref: str, budget: str, limit_s: float, threads: int) -> dict[str, Any]:
    """``run_one`` in a forked child, killed after ``limit_s`` seconds."""
    from benchmarks.harness import run_in_child

    row, seconds, exitcode = run_in_child(_child, (ref, budget, threads), limit_s)
    if row is None:
        source, name = ref.split(":", 1)
        why = f"time limit: not done after {limit_s:.0f} s" if exitcode in (None, -9) or \
            seconds >= limit_s else f"the child process died (exit code {exitcode})"
        row = {"source": source, "name": name, "ok": False, "built": False, "forward_ok": False, "shape_ok": False,
               "within_budget": False, "macs_fraction": None, "size": None, "error": why,
               "seconds": round(seconds, 2)}
    return row


def write_report(rows: list[dict[str, Any]], stem: Path, budget: str, expected: int, limit_s: float,
                 note: str = "") -> None:
    from benchmarks.harness import machine_info

    partial = len(rows) < expected
    totals: dict[str, dict[str, int]] = {}
    for r in rows:
        t = totals.setdefault(r["source"], {"models": 0, "ok": 0, "within_budget": 0, "forward_ok": 0})
        t["models"] += 1
        t["ok"] += int(r["ok"])
        t["within_budget"] += int(r["ok"] and r["within_budget"])
        t["forward_ok"] += int(r["forward_ok"])
    doc: dict[str, Any] = {"budget": budget, "partial": partial, "expected_models": expected, "time_limit_s": limit_s,
                           "note": note, "machine": machine_info(), "totals": totals, "rows": rows}
    write_json(stem.with_suffix(".json"), doc, default=None)
    lines = [f"# Model coverage: one-shot channel pruning to {budget}{' (PARTIAL)' if partial else ''}", ""]
    if partial:
        lines += [f"**PARTIAL**: {len(rows)} of {expected} models done.", ""]
    m = doc["machine"]
    lines += [
        f"Every torchvision classifier (`torchvision.models.list_models(module=torchvision.models)`) and "
        f"{len(TIMM_MODELS)} timm models, random weights, {NUM_CLASSES} classes, one random image at the first "
        f"of {', '.join(map(str, SIZES))} px the model runs at, pruned by "
        f"`amc.pruners.oneshot.prune_to_budget(model, x, "
        f"{budget!r})` (uniform ratio over the prunable groups, L2, round_to 8) and run again. "
        f"Time limit {limit_s:.0f} s per model (a row's own `limit_s` where it has one). "
        f"{note + ' ' if note else ''}Machine: {m['cpu']} ({m['cpu_capability']}), "
        f"torch {m['torch']}, {m['threads']} threads. Script: `benchmarks/model_coverage.py`.", "",
        "| source | models | forward ok | pruned and run | within budget |", "| --- | --- | --- | --- | --- |"]
    for src, t in totals.items():
        lines.append(f"| {src} | {t['models']} | {t['forward_ok']} | {t['ok']} | {t['within_budget']} |")
    lines += ["", "| source | model | px | built | forward | shape | MACs fraction | within budget | s | error |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def yn(v: object) -> str:
        return "yes" if v else "no"

    for r in rows:
        mf = "" if r.get("macs_fraction") is None else f"{r['macs_fraction']:.3f}"
        err = str(r.get("error", "")).replace("|", "\\|")
        lines.append(f"| {r['source']} | {r['name']} | {r.get('size') or ''} | {yn(r['built'])} | "
                     f"{yn(r['forward_ok'])} | {yn(r['shape_ok'])} | {mf} | {yn(r['within_budget'])} | "
                     f"{r['seconds']:.1f} | {err} |")
    write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> int:
    ap = parser(__doc__, cache="runs/model_coverage", data=False, out=None, device=False, threads=1,
                quick=f"only {', '.join(QUICK)}")
    ap.add_argument("--budget", default="macs=0.5")
    ap.add_argument("--models", default=None, help="comma-separated references (source:name) to run")
    ap.add_argument("--limit-s", type=float, default=300.0, help="time limit per model")
    ap.add_argument("--redo-failed", action="store_true", help="rerun the cached rows that failed")
    ap.add_argument("--redo", action="store_true", help="rerun everything")
    ap.add_argument("--stem", default=str(ROOT / "reports" / "model_coverage"))
    ap.add_argument("--note", default="", help="a sentence for the report on how the cache was filled")
    args = ap.parse_args()
    refs = QUICK if args.quick else args.models.split(",") if args.models else all_refs()
    cache = Cache(args.cache, indent=None, default=None)  # <source>__<name>.json
    for ref in [] if args.report_only else refs:
        key = ref.replace(":", "__")
        if (row := cache.get(key)) is not None and not args.redo:
            if not (args.redo_failed and not (row["ok"] and row["within_budget"])):
                continue
        row = run_limited(ref, args.budget, args.limit_s, args.threads)
        row["limit_s"] = args.limit_s
        cache.put(key, row)
        status = "ok" if row["ok"] and row["within_budget"] else "FAIL"
        print(f"{ref:45s} {status:4s} {row['seconds']:7.1f}s macs {row.get('macs_fraction')} {row['error'][:150]}",
              flush=True)
    if (args.quick or args.models) and not args.report_only:
        return 0
    every = all_refs()
    rows = list(cache.rows(ref.replace(":", "__") for ref in every).values())
    write_report(rows, Path(args.stem), args.budget, len(every), args.limit_s, args.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
