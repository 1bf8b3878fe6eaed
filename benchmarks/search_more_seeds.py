"""Finetune a search report's fine-grained rows on further batch orders, after the run.

Each named row's policy is applied again to the dense checkpoint (magnitude masks, as the search
benchmark builds it), BN recalibrated on the same calibration images, finetuned as the benchmark
does (the report's epochs of SGD, lr 0.01 cosine, batch 256, masks kept) on the batch order of each seed,
and tested on the whole test set. The accuracies go into the report's JSON as the rows'
``extra_runs`` and the markdown is rendered again (its "Further finetunes" table).

    python benchmarks/search_more_seeds.py --report reports/search_cpu.json --task fg25 \\
        --rows global_magnitude,amc,optuna --seeds 2,3 --device cpu
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from amc.data import load_cifar10, make_splits
from amc.models import load_model
from amc.pruners.finegrained import apply_policy
from amc.train import FinetuneConfig, recalibrate_bn
from benchmarks.harness import ints, parser, write_json, write_text


def main() -> None:
    ap = parser(__doc__, data=False, out=None)
    ap.add_argument("--report", required=True, help="the search benchmark's JSON")
    ap.add_argument("--task", default="fg25")
    ap.add_argument("--rows", default="global_magnitude,amc,optuna")
    ap.add_argument("--seeds", default="2,3", help="finetune batch orders (the benchmark's own are 0 .. ft-seeds-1)")
    ap.add_argument("--data", default=None, help="default: the report's data set")
    args = ap.parse_args()
    path = Path(args.report)
    rep = json.loads(path.read_text())
    task = rep["tasks"].get(args.task)
    if task is None or task.get("granularity") != "fine":
        raise SystemExit(f"{path} has no fine-grained task {args.task!r}")
    rows = [r for r in args.rows.split(",") if r]
    missing = [r for r in rows if r not in task["candidates"]]
    if missing:
        raise SystemExit(f"rows not in {args.task}: {', '.join(missing)}; known: {', '.join(task['candidates'])}")
    seeds = ints(args.seeds)
    settings = rep["settings"]
    batch = settings.get("batch_size", 256)
    epochs = rep["epochs"]  # the report's: further runs are pooled with its own
    from benchmarks import search as bench  # its finetune runs and renderer

    dev = torch.device(args.device)
    splits = make_splits(load_cifar10(args.data or settings["data"]), heldout=rep["heldout"], device=dev)
    dense = load_model(rep["model"], rep["checkpoint"]).to(dev).eval()
    calib = splits.loader("train", 512, limit=rep["calib_images"], shuffle=False, augment=False)
    test = splits.loader("test", 1000)
    for key in rows:
        model = copy.deepcopy(dense)
        masks = apply_policy(model, task["candidates"][key]["policy"])
        recalibrate_bn(model, calib)
        runs, _ = bench.finetune_runs(model, masks, splits, seeds, FinetuneConfig(epochs=epochs), batch, test)
        got = dict(zip(map(str, seeds), runs, strict=True))
        task["candidates"][key].setdefault("extra_runs", {}).update(got)
        print(f"{args.task} {key}: " + ", ".join(f"seed {s} {a:.4f}" for s, a in got.items()), flush=True)
    task["extra_runs_how"] = (
        f"the rows' policies applied again to the dense checkpoint (magnitude masks), BN recalibrated on the "
        f"same {rep['calib_images']} train images, finetuned the same way ({epochs:g} epoch, SGD lr 0.01 cosine, "
        f"batch {batch}, masks kept) on further batch orders, tested on all "
        f"{len(splits.test_y):,} test images (`benchmarks/search_more_seeds.py`).")
    write_json(path, rep)
    write_text(path.with_suffix(".md"), bench._markdown(rep))
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
