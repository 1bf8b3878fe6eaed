"""Benchmark: the CPU finetune with and without the guard around oneDNN's strided 1x1 bug.

For the dense ResNet-20 and two channel-pruned ones (50% of each group rounded to 8, 75% rounded to 4:
their first downsample shortcut becomes ``Conv2d(8, ., 1, stride=2)`` and ``Conv2d(4, ., 1, stride=2)``),
each in its own subprocess with a time limit (the broken kernel can hang):
- the seconds of one finetune epoch in three layouts: all contiguous (NCHW), channels_last with the
  guard (what ``amc.train.finetune`` does), channels_last unguarded (``AMC_CONV_GUARD=0``, the old code);
- the weight step of one SGD step against a float64 reference (relative max error).

    python benchmarks/cpuconv.py --out reports      # about 10 minutes on a 2-core CPU
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from benchmarks.harness import MODELS, ROOT, machine_info, parser, write_report

LAYOUTS = ("contiguous", "guarded", "unguarded")

CHILD = textwrap.dedent("""
    import copy, json, sys, time
    import torch
    from torch import nn
    from amc.pruners.channel import plan_channels, prune_channels
    from amc.data import load_cifar10, make_splits
    from amc.layers import prunable_names
    from amc.models import load_model
    from amc.train import FinetuneConfig, finetune

    ckpt, data, round_to, layout, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    ratio = float(sys.argv[6])
    torch.manual_seed(0)
    model = load_model("resnet20", ckpt).eval()
    if round_to:
        policy = dict.fromkeys([n for n in prunable_names(model) if n != "fc"], ratio)
        x = torch.randn(2, 3, 32, 32)
        model = prune_channels(model, plan_channels(model, policy, round_to=round_to, example_inputs=x), x)
    shortcuts = [[n, m.in_channels] for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)]
    splits = make_splits(load_cifar10(data), heldout=5000)
    # the gradient check: one plain SGD step (lr 1) moves each weight by minus its gradient
    xb, yb = next(iter(splits.loader("train", 64, augment=False)))
    ref = copy.deepcopy(model).double().train()
    nn.functional.cross_entropy(ref(xb.double()), yb).backward()
    probe = copy.deepcopy(model)
    class Nchw:  # the project's CPU loader yields channels_last-strided batches (an NHWC permute): undo it
        def __init__(self, inner): self.inner = inner
        def __len__(self): return len(self.inner)
        def __iter__(self): return ((x.contiguous(), y) for x, y in self.inner)

    if layout == "contiguous":  # plain NCHW everywhere: no layout change, exact NCHW strides, NCHW batches
        import contextlib
        import amc.train as tr
        tr.guarded = contextlib.nullcontext
        for m in (model, probe):
            for p in m.parameters():
                if p.dim() == 4:
                    p.data = p.data.clone(memory_format=torch.contiguous_format)
        xb = xb.contiguous()
    before = {k: v.detach().clone() for k, v in probe.named_parameters()}
    plain = FinetuneConfig(epochs=1, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0, label_smoothing=0.0,
                           schedule="constant")
    finetune(probe, [(xb, yb)], plain)
    now = dict(probe.named_parameters())
    err = max(float(((before[k] - now[k].detach()).double() - p.grad).abs().max() / p.grad.abs().max())
              for k, p in ref.named_parameters() if p.grad is not None and p.grad.abs().max() > 0)
    loader = splits.loader("train", 256, seed=0)
    if layout == "contiguous":
        loader = Nchw(loader)
    cfg = FinetuneConfig(epochs=1.0, max_steps=steps or None)
    t = time.perf_counter()
    info = finetune(model, loader, cfg)
    seconds = time.perf_counter() - t
    print(json.dumps({"steps": info["steps"], "seconds": seconds, "grad_rel_err": err, "shortcuts": shortcuts,
                      "steps_per_epoch": len(loader)}))
""")


def run_one(ckpt: str, data: str, round_to: int, ratio: float, layout: str, steps: int, limit: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AMC_CONV_GUARD": "0" if layout == "unguarded" else "1"}
    t = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, ckpt, data, str(round_to), layout, str(steps), str(ratio)],
                             capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"hung: no result in {limit:.0f} s", "wall_s": time.perf_counter() - t}
    if out.returncode != 0:
        return {"ok": False, "error": f"rc {out.returncode}: {out.stderr.strip().splitlines()[-1:]}",
                "wall_s": time.perf_counter() - t}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["epoch_s"] = row["seconds"] / row["steps"] * row["steps_per_epoch"]  # = seconds for an uncapped run
    return {"ok": True, **row}


def main() -> None:
    ap = parser(__doc__, device=False)
    ap.add_argument("--checkpoint", default=str(MODELS / "resnet20_dense.pt"))
    ap.add_argument("--steps", type=int, default=0, help="cap the timed finetune (0: one whole epoch)")
    ap.add_argument("--limit", type=float, default=600, help="seconds before a run counts as hung")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, round_to, ratio in (("dense", 0, 0.0), ("pruned 50%, round_to 8", 8, 0.5),
                                   ("pruned 75%, round_to 4", 4, 0.75)):
        for layout in LAYOUTS:
            r = run_one(args.checkpoint, args.data, round_to, ratio, layout, args.steps, args.limit)
            rows.append({"model": label, "round_to": round_to, "ratio": ratio, "layout": layout, **r})
            print(json.dumps(rows[-1]), flush=True)
    res = {"machine": machine_info(), "checkpoint": args.checkpoint, "steps_cap": args.steps, "rows": rows}
    lines = ["# CPU finetune and the oneDNN strided 1x1 guard", "",
             f"Machine: {res['machine']['cpu']}, ISA {res['machine']['cpu_capability']}, torch "
             f"{res['machine']['torch']}, {res['machine']['threads']} threads. ResNet-20 "
             f"(`{Path(args.checkpoint).name}`), batch 256, one finetune epoch "
             f"({f'capped at {args.steps} steps' if args.steps else 'all steps'}), each run in its own process. "
             "`grad err`: one plain SGD step's weight change against a float64 NCHW gradient "
             "(per parameter, the largest difference over the largest gradient entry; the worst parameter shown: "
             "float32 rounding through BatchNorm in train mode gives up to ~1e-2 here, the broken kernel 0.5-100).", "",
             "| model | strided 1x1 inputs | layout | epoch s (from the steps timed) | grad err | note |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ins = ", ".join(str(c) for _, c in r.get("shortcuts", [])) or "-"
        if r["ok"]:
            epoch = r["seconds"] / r["steps"] * r["steps_per_epoch"]  # a capped run: its per-step time x steps
            lines.append(f"| {r['model']} | {ins} | {r['layout']} | {epoch:.1f} | {r['grad_rel_err']:.2g} | "
                         f"{r['steps']} steps timed |")
        else:
            lines.append(f"| {r['model']} | {ins} | {r['layout']} | - | - | {r['error']} |")
    write_report(out, "cpuconv", res, "\n".join(lines) + "\n", stamp=False, indent=2, default=None, newline=False)


if __name__ == "__main__":
    main()
