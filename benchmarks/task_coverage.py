"""Task coverage: detectors, segmenters and YOLO models channel-pruned data-free to a MACs budget.

Each model is built with random weights (nothing is downloaded: ``weights=None,
weights_backbone=None``; the YOLO models from the model configuration files that the ``yolov5`` and
``ultralytics`` packages ship), put in eval mode, run on one random input at a CPU-feasible size,
pruned by ``amc.prune_to_budget(model, example_inputs, "macs=0.5")`` and run again. Columns: built /
ran (the pruned model's forward, every output tensor's shape unchanged where it does not depend on
the data) / within budget (the MACs fraction measured on the pruned model) / seconds / held layers /
error, and the ONNX export of the pruned model (``amc.export.onnx.export_onnx``: every output named)
with onnxruntime's agreement with PyTorch on the same input.

``yolov5`` and ``ultralytics`` are optional benchmark extras (``pip install -e .[detection]``, or
``scripts/setup-extras.sh``); without them their rows say so and the torchvision rows still run.

Resumable: each model's row is cached under ``--cache``. Each model runs in a forked child under
``--limit-s`` (the channel tracer gets most of it as its own ``TraceLimits``, so a run-away analysis
ends in one clear error; the child is killed past the limit as a last resort).

    nice -n 19 env OMP_NUM_THREADS=1 .venv-extras/bin/python benchmarks/task_coverage.py
    .venv-extras/bin/python benchmarks/task_coverage.py --models lraspp_mobilenet_v3_large --redo
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from benchmarks.harness import Cache, markdown_table, parser, write_report

NUM_CLASSES = 4
# name -> (family, input side in pixels); torchvision's detectors get min_size = max_size = the side,
# so their transform does not resize the image up to 800 px
MODELS: dict[str, tuple[str, int]] = {
    "lraspp_mobilenet_v3_large": ("segmentation", 320),
    "deeplabv3_mobilenet_v3_large": ("segmentation", 320),
    "fcn_resnet50": ("segmentation", 256),
    "ssdlite320_mobilenet_v3_large": ("detection", 320),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("detection", 320),
    "retinanet_resnet50_fpn_v2": ("detection", 256),
    "fcos_resnet50_fpn": ("detection", 256),
    "maskrcnn_resnet50_fpn": ("detection", 256),
    "keypointrcnn_resnet50_fpn": ("detection", 256),
    "yolov5n": ("yolov5", 320),
    "yolov8n": ("ultralytics", 320),
}


def error_line(e: BaseException) -> str:
    """An ``AmcError``'s message; any other exception's type, where it was raised and its first line."""
    from amc import AmcError

    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, AmcError):
        return f"{type(e).__name__}: {msg}"[:400]
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}{where}: {msg}"[:400]


def build(name: str) -> tuple[Any, Any, str]:
    """The model (random weights, eval mode), its example inputs and how it was built, in words."""
    import torch

    family, side = MODELS[name]
    torch.manual_seed(0)
    if family == "segmentation":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
        return model.eval(), torch.randn(1, 3, side, side), f"torchvision, {NUM_CLASSES} classes"
    if family == "detection":
        import torchvision

        kw: dict[str, Any] = {"weights": None, "weights_backbone": None}
        if name.startswith("keypointrcnn"):
            kw["num_classes"] = 2  # torchvision's keypoint R-CNN: background and person
        else:
            kw["num_classes"] = NUM_CLASSES
        if not name.startswith("ssdlite"):  # SSDlite's transform is fixed at 320
            kw.update(min_size=side, max_size=side)
        if name.startswith(("retinanet", "fcos")):  # their random heads score about 0.01 (a prior): keep boxes
            kw["score_thresh"] = 0.0
        model = torchvision.models.get_model(name, **kw)
        return model.eval(), ([torch.rand(3, side, side)],), f"torchvision, {kw['num_classes']} classes"
    if family == "yolov5":
        import logging
        from importlib.resources import files

        from yolov5.models.yolo import Model  # GPL-3.0: a benchmark extra, never imported by amc

        logging.getLogger("yolov5").setLevel(logging.WARNING)  # its layer-by-layer table of the model

        cfg = str(files("yolov5") / "models" / "yolov5n.yaml")
        model = Model(cfg, ch=3, nc=NUM_CLASSES)
        return model.eval(), torch.randn(1, 3, side, side), f"yolov5 package, models/yolov5n.yaml, nc={NUM_CLASSES}"
    if family == "ultralytics":
        from ultralytics.nn.tasks import DetectionModel  # AGPL-3.0: a benchmark extra, never imported by amc

        model = DetectionModel("yolov8n.yaml", nc=NUM_CLASSES, verbose=False)
        how = f"ultralytics DetectionModel('yolov8n.yaml', nc={NUM_CLASSES})"
        return model.eval(), torch.randn(1, 3, side, side), how
    raise ValueError(f"unknown model family {family!r}")


def _ort_diff(pruned: Any, path: Path, x: Any) -> str:
    """onnxruntime against PyTorch on the example inputs themselves (a detector's count of boxes depends
    on the input: another random input would compare different counts): the max difference, or why not."""
    import numpy as np
    import torch

    from amc.export.onnx import ort_session
    from amc.layers import call_model, flat_outputs

    with torch.no_grad():
        ref = [t.numpy() for t in flat_outputs(call_model(pruned, x))]
    if all(r.size == 0 for r in ref):
        return "not compared: every output is empty (no detection above the score threshold)"
    sess = ort_session(path)
    feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), flat_outputs(x), strict=True)}  # nested: in order
    outs = sess.run(None, feed)
    if len(outs) != len(ref):
        return f"{len(outs)} outputs, PyTorch {len(ref)}"
    for i, (o, r) in enumerate(zip(outs, ref, strict=True)):
        if o.shape != r.shape:
            return f"output {i}: shape {tuple(o.shape)}, PyTorch {tuple(r.shape)}"
    return f"max diff {max(float(np.abs(o - r).max()) if r.size else 0.0 for o, r in zip(outs, ref, strict=True)):.2g}"


def _onnx(pruned: Any, x: Any) -> tuple[str, str]:
    """The ONNX export of ``pruned`` (``ok`` or the error) and onnxruntime's agreement on ``x``."""
    from amc.export.onnx import export_onnx

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        try:
            export_onnx(pruned, path, example_inputs=x)
        except Exception as e:
            return error_line(e), "not exported"
        try:
            return "ok", _ort_diff(pruned, path, x)
        except Exception as e:
            return "ok", error_line(e)


def run_one(name: str, budget: str, trace_s: float) -> dict[str, Any]:
    """Build, run, prune, rerun and export one model; a row of plain values (never raises)."""
    import torch

    from amc import prune_to_budget
    from amc.layers import call_model, count_macs, flat_outputs, output_shapes, shape_change, stable_output_shapes
    from amc.pruners.channel import TraceLimits

    family, side = MODELS[name]
    row: dict[str, Any] = {"name": name, "family": family, "size": side, "built": False, "ran": False,
                           "within_budget": False, "macs_fraction": None, "held": None, "error": "",
                           "onnx": "", "onnx_check": "", "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        model, x, how = build(name)
        row["how"] = how
        with torch.no_grad():
            want = stable_output_shapes(model, x)
            dense_out = call_model(model, x)
        row["built"] = True
        row["outputs"] = len(flat_outputs(dense_out))
        row["output_shapes"] = [list(s) for s in want] if want is not None else None  # -1: depends on the data
        row["dense_output_shapes"] = [list(s) for s in output_shapes(dense_out)]
        row["params"] = sum(p.numel() for p in model.parameters())
        row["dense_macs"] = count_macs(model, example_inputs=x)[0]
    except ImportError as e:
        row["error"] = f"not installed: {e.name or e} (the detection extra)"
        return row
    except Exception as e:
        row["error"] = "build: " + error_line(e)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return row
    last = [time.perf_counter()]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            last[0] = now
            print(f"  {name}: {stage} {done}/{total} ({now - t0:.0f} s)", flush=True)

    t1 = time.perf_counter()
    try:
        pruned, info = prune_to_budget(model, x, budget, limits=TraceLimits(seconds=trace_s, progress=progress))
    except Exception as e:
        row["error"] = error_line(e)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return row
    row["prune_seconds"] = round(time.perf_counter() - t1, 2)
    row["macs_fraction"] = round(info.macs_fraction, 4)
    row["params_fraction"] = round(info.params_fraction, 4)
    row["within_budget"] = bool(info.met)
    row["held"] = len(info.held)
    row["held_layers"] = dict(info.held)
    row["prunable_layers"] = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    row["ratio"] = round(info.ratio, 4)
    try:
        with torch.no_grad():
            out = call_model(pruned.eval(), x)
        change = shape_change(want, output_shapes(out))
        row["pruned_output_shapes"] = [list(s) for s in output_shapes(out)]
        finite = all(bool(torch.isfinite(t.float()).all()) for t in flat_outputs(out) if t.numel())
        row["ran"] = change is None
        row["finite"] = finite
        if change is not None:
            row["error"] = f"output shape changed: {change}"
        elif not info.met:
            row["error"] = info.notes[-1] if info.notes else "budget not met"
    except Exception as e:
        row["error"] = "pruned forward: " + error_line(e)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    t2 = time.perf_counter()
    row["onnx"], row["onnx_check"] = _onnx(pruned.eval(), x)
    if row["onnx"] == "ok" and not row["onnx_check"].startswith(("max diff", "not compared")):
        row["onnx_check_dense"] = _onnx(model, x)[1]  # the dense model's own export, for comparison
    row["onnx_seconds"] = round(time.perf_counter() - t2, 2)
    return row


def _child(name: str, budget: str, trace_s: float, threads: int, q: Any) -> None:
    import os
    import warnings

    import torch

    os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no update checks
    warnings.filterwarnings("ignore")  # torch-pruning's notes on unwrapped parameters, deprecations
    torch.set_num_threads(threads)
    try:
        q.put(run_one(name, budget, trace_s))
    except BaseException as e:  # run_one catches; this is the last resort
        q.put({"name": name, "error": "child: " + error_line(e)})


def run_limited(name: str, budget: str, limit_s: float, threads: int) -> dict[str, Any]:
    """``run_one`` in a forked child, killed after ``limit_s`` seconds; the tracer's own limit is 3/4 of it."""
    from benchmarks.harness import run_in_child

    row, seconds, exitcode = run_in_child(_child, (name, budget, 0.75 * limit_s, threads), limit_s)
    if row is None:
        family, side = MODELS[name]
        over = seconds >= limit_s
        why = f"killed: not done after {limit_s:.0f} s" if over else f"the child process died (exit code {exitcode})"
        row = {"name": name, "family": family, "size": side, "built": False, "ran": False, "within_budget": False,
               "macs_fraction": None, "held": None, "error": why, "onnx": "", "onnx_check": "",
               "seconds": round(seconds, 2)}
    row["limit_s"] = limit_s
    return row


def _yn(v: object) -> str:
    return "yes" if v else "no"


def report(rows: list[dict[str, Any]], budget: str, limit_s: float, note: str) -> tuple[dict[str, Any], str, bool]:
    from amc.system import machine_info

    missing = [n for n in MODELS if n not in {r["name"] for r in rows}]
    order = {n: i for i, n in enumerate(MODELS)}
    rows = sorted(rows, key=lambda r: order.get(r["name"], len(order)))
    totals = {"models": len(MODELS), "done": len(rows), "built": sum(bool(r["built"]) for r in rows),
              "ran": sum(bool(r["ran"]) for r in rows),
              "within_budget": sum(bool(r["ran"] and r["within_budget"]) for r in rows),
              "onnx_ok": sum(r.get("onnx") == "ok" for r in rows)}
    m = machine_info()
    doc = {"budget": budget, "time_limit_s": limit_s, "num_classes": NUM_CLASSES, "note": note, "missing": missing,
           "totals": totals, "rows": rows, "machine": m}
    lines = [f"# Task coverage: detectors, segmenters and YOLO models pruned data-free to {budget}", ""]
    if missing:
        lines += [f"**PARTIAL**: no row yet for {', '.join(missing)}.", ""]
    lines += [
        f"torchvision's detection and segmentation models (`weights=None, weights_backbone=None`, "
        f"{NUM_CLASSES} classes, 2 for keypoint R-CNN; the detectors with `min_size = max_size =` the input "
        f"side, SSDlite at its fixed 320, RetinaNet and FCOS with `score_thresh=0`: their random heads score "
        f"about 0.01, below the default threshold, and would return no box), YOLOv5n (the `yolov5` package's "
        f"`models/yolov5n.yaml`) and YOLOv8n "
        f"(ultralytics' `DetectionModel('yolov8n.yaml')`), random weights, eval mode, one random input "
        f"(detectors: a list of one 3xSxS image; the others a 1x3xSxS batch), pruned by "
        f"`amc.prune_to_budget(model, example_inputs, {budget!r})` (uniform ratio over the prunable "
        f"groups, L2, round_to 8) and run again. *ran*: the pruned model's forward returned every output "
        f"tensor with its dense shape (sizes that depend on the data, a detector's count of boxes, "
        f"excepted). *held*: prunable layers (of *layers*) whose output channels stay (outputs, "
        f"couplings torch-pruning cannot follow). *ONNX*: `amc.export.onnx.export_onnx` of the pruned "
        f"model (every output named); *ORT*: onnxruntime against PyTorch on the same input (the largest "
        f"absolute difference over every output). "
        f"Per-model time limit {limit_s:.0f} s (the channel tracer's own `TraceLimits` 3/4 of it). "
        f"{note + ' ' if note else ''}Machine: {m['cpu']}, torch {m['torch']}, {m['threads']} thread(s). "
        f"Script: `benchmarks/task_coverage.py`.", "",
        f"{totals['done']} of {totals['models']} models done: {totals['built']} built, {totals['ran']} ran "
        f"after pruning, {totals['within_budget']} within budget, {totals['onnx_ok']} exported to ONNX.", ""]
    table = []
    for r in rows:
        mf = "" if r.get("macs_fraction") is None else f"{r['macs_fraction']:.3f}"
        held = "" if r.get("held") is None else str(r["held"])
        err = str(r.get("error", "")).replace("|", "\\|")
        ort = str(r.get("onnx_check", ""))
        if r.get("onnx_check_dense"):
            ort += f" (the dense model's export: {r['onnx_check_dense']})"
        table.append([r["name"], r.get("size") or "", _yn(r.get("built")), _yn(r.get("ran")), mf,
                      _yn(r.get("within_budget")), f"{r.get('seconds', 0):.1f}", held, r.get("prunable_layers", ""),
                      str(r.get("onnx", "")).replace("|", "\\|"), ort.replace("|", "\\|"), err])
    lines += markdown_table(["model", "px", "built", "ran", "MACs fraction", "within budget", "s", "held",
                             "layers", "ONNX", "ORT", "error"], table)
    boxes = [[r["name"], r["dense_output_shapes"][0][0], r["pruned_output_shapes"][0][0]] for r in rows
             if r.get("family") == "detection" and r.get("dense_output_shapes") and r.get("pruned_output_shapes")]
    if boxes:
        lines += ["", "A torchvision detector's MACs depend on its detections (the R-CNN heads run once per box "
                  "kept), and the number of boxes on the random weights: the MACs fraction is measured on the "
                  "same input, with these counts of boxes returned (dense, pruned):", ""]
        lines += markdown_table(["model", "boxes, dense", "boxes, pruned"], boxes)
        differ = [b[0] for b in boxes if b[1] != b[2]]
        if differ:
            lines += ["", f"Where the counts differ ({', '.join(differ)}), the pruned model's MACs include its "
                      f"heads' runs on another number of boxes than the dense model's: within budget on this "
                      f"input, not for every input."]
    lines += ["", "## Held layers", "", "Why each model's held layers keep their output channels "
              "(`info.held`, grouped by reason; the full lists are in the JSON):", ""]
    for r in rows:
        why: dict[str, list[str]] = {}
        for layer, reason in (r.get("held_layers") or {}).items():
            why.setdefault(_reason_kind(reason), []).append(layer)
        if why:
            parts = "; ".join(f"{k}: {len(v)} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                              for k, v in why.items())
            lines.append(f"- {r['name']}: {parts}")
    lines += ["", NOTES]
    return doc, "\n".join(lines) + "\n", bool(missing)


NOTES = """## Found while running this, and what changed in amc

- YOLOv8n's ONNX export failed (`RuntimeError: Invalid name: '0'`): a plain tuple's outputs were named by
  their positions alone; they are `output.0`, `output.1.0` now.
- Faster, Mask and Keypoint R-CNN: the RPN head's 3x3 conv was "not reached by a forward pass" (it runs, but
  its scores and box offsets become proposals under `detach`, and torch-pruning traces backwards from the
  outputs only). The tracer now traces from such detached ends too: the conv is pruned, the two 1x1 layers
  after it are held as "detached end".
- Mask and Keypoint R-CNN: the FPN's outputs were held as output layers: torch-pruning reads RoIAlign as an
  elementwise op and coupled the detected boxes (from `bbox_pred`) with the features they crop. RoIAlign,
  RoIPool and grid sampling now pass on their features' channels alone.
- RetinaNet v2 and FCOS stopped with a raw `RuntimeError: Expected number of channels in input to be
  divisible by num_groups` (torch-pruning keeps a GroupNorm's number of groups). Channels normalised by a
  GroupNorm are now removed evenly from every group (first held whole, then pruned so).
- The ONNX check of a model taking a list of images raised a raw `AttributeError`; each image is now one
  named input (`images.0`).

YOLOv8n (ultralytics 8.4) returns in eval mode its predictions and a dict of the head's raw boxes and
scores and the neck's three feature maps; every returned tensor keeps its shape, so the neck's last convs
(`model.15/18/21.cv2.conv`) are held as output layers too.

Left as they are (held, with the reason): YOLOv8's C2f blocks split `cv1`'s output with `torch.chunk`, whose
part sizes torch-pruning maps wrongly (in a C2f-like test block: split offsets `[0, 48, 96, 80, 96]` for a
32-channel conv), so
those groups fail the tracer's probe and are held; the layer before a transposed convolution (the mask and
keypoint heads' last 3x3 conv) is held. SSDlite's ONNX graph keeps another number of boxes than PyTorch on
this input, the dense model's export as well: the export of torchvision's post-processing, not the pruning.
"""


def _reason_kind(reason: str) -> str:
    """A held layer's reason in a few words."""
    for key, kind in (("leaves the autograd graph", "detached end"), ("model's outputs", "output layer"),
                      ("splits its channels", "split into parts by the forward (breaks when pruned)"),
                      ("GroupNorm", "normalised by a GroupNorm"), ("grouped or transposed", "coupled with a "
                      "transposed or grouped conv"), ("breaks the forward", "breaks the forward when pruned"),
                      ("not reached", "not reached"), ("attention", "attention heads")):
        if key in reason:
            return kind
    return reason[:60]


def main() -> int:
    ap = parser(__doc__, cache="runs/task_coverage", data=False, device=False, threads=1)
    ap.add_argument("--budget", default="macs=0.5")
    ap.add_argument("--models", default=None, help=f"comma-separated names (default all: {', '.join(MODELS)})")
    ap.add_argument("--limit-s", type=float, default=900.0, help="time limit per model (default 900)")
    ap.add_argument("--redo", action="store_true", help="rerun the named (or all) models even if cached")
    ap.add_argument("--redo-failed", action="store_true", help="rerun the cached rows that did not run within budget")
    ap.add_argument("--note", default="", help="a sentence for the report on how the cache was filled")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    import torch

    torch.set_num_threads(args.threads)  # the children's threads, which the report's machine line gives
    cache = Cache(args.cache)
    for name in [] if args.report_only else names:
        row = cache.get(name)
        if row is not None and not args.redo and not (args.redo_failed and not (row["ran"] and row["within_budget"])):
            continue
        row = run_limited(name, args.budget, args.limit_s, args.threads)
        cache.put(name, row)
        print(f"{name:40s} built {_yn(row['built']):3s} ran {_yn(row['ran']):3s} macs {row.get('macs_fraction')} "
              f"{row['seconds']:7.1f}s onnx {row.get('onnx', '')[:60]} {row['error'][:200]}", flush=True)
    rows = list(cache.rows(MODELS).values())
    doc, md, partial = report(rows, args.budget, args.limit_s, args.note)
    write_report(args.out, "task_coverage", doc, md, partial=partial)
    return 0


if __name__ == "__main__":
    sys.exit(main())
