"""Benchmark: bring your own model. A small network that is not in the zoo (defined here), trained
briefly on the shared CIFAR-10 on the CPU, then ``amc.compress(...)`` to ``macs=0.5`` with Optuna.

Protocol: the search scores policies on 5,000 images held out of train; the test set is used only
for the final numbers. The dense model is trained on the other 45,000 for ``--epochs`` epochs (a
short schedule: said so in the report) and cached (``--cache``), so a rerun starts at compression.

    python benchmarks/byo.py --out reports            # about 20-30 minutes on a 2-core CPU
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

import amc
from amc.data import load_cifar10, make_splits
from amc.layers import count_macs, count_params
from amc.train import FinetuneConfig, evaluate, finetune
from benchmarks.harness import machine_info, parser, write_report


class SmallNet(nn.Module):
    """A user's own network: a stem, two residual stages with a strided shortcut, a depthwise-separable
    block, a concatenation and a flatten + linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def cbr(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        self.stem = cbr(3, 32)
        self.block1 = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.down = nn.Sequential(cbr(32, 64, s=2), nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        self.shortcut = nn.Sequential(nn.Conv2d(32, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
        self.sep = nn.Sequential(cbr(64, 64, s=2, g=64), cbr(64, 96, k=1))
        self.side = cbr(64, 32, k=1, s=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(128 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(self.down(x) + self.shortcut(x))
        x = torch.cat([self.sep(x), self.side(x)], 1)
        return self.head(torch.flatten(self.pool(x), 1))


def main() -> None:
    ap = parser(__doc__, cache="runs/byo", report_only=False, device=False,
                quick="a smoke run on a slice: not a result")
    ap.add_argument("--epochs", type=float, default=4.0, help="dense training epochs (short, on the CPU)")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--finetune-epochs", type=float, default=1.0)
    args = ap.parse_args()
    cache, out = Path(args.cache), Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_cifar10(args.data)
    if args.quick:
        from amc.data import subset

        data = subset(data, train=2000, test=500)
    splits = make_splits(data, heldout=500 if args.quick else 5000, device="cpu")
    torch.manual_seed(0)
    dense = SmallNet()
    weights = cache / ("dense-quick.safetensors" if args.quick else "dense.safetensors")
    train_s = 0.0
    if weights.exists():
        from safetensors.torch import load_file

        dense.load_state_dict(load_file(str(weights)))
    else:
        t = time.perf_counter()
        # a dense training from scratch: lr 0.1 (SGD, nesterov, cosine), not the finetune's 0.01
        finetune(dense, splits.loader("train", 128, seed=0), FinetuneConfig(epochs=args.epochs, lr=0.1))
        train_s = time.perf_counter() - t
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(weights))
    dense.eval()
    dense_acc = evaluate(dense, splits.loader("test", 500))
    print(f"dense: test accuracy {dense_acc:.2%} ({train_s:.0f} s of training)", flush=True)
    t = time.perf_counter()
    res = amc.compress(dense, budget="macs=0.5", data=splits, method="optuna", episodes=args.episodes,
                       finetune=args.finetune_epochs, run_dir=cache / "run", calib_images=1024,
                       eval_images=1000 if not args.quick else 200, latency_runs=50,
                       progress=lambda m: print(f"[{time.perf_counter() - t:6.1f} s] {m}", flush=True))
    compress_s = time.perf_counter() - t
    m = res.metrics
    shape = (1, 3, 32, 32)
    row = {
        "model": "SmallNet (benchmarks/byo.py)", "quick": args.quick, "machine": machine_info(),
        "protocol": "search on 5,000 images held out of train; final numbers on the 10,000 test images",
        "dense_epochs": args.epochs, "dense_train_s": train_s, "episodes": args.episodes,
        "finetune_epochs": args.finetune_epochs,
        "dense_test_accuracy": dense_acc, "final_test_accuracy": m["accuracy"],
        "accuracy_before_finetune": m["accuracy_before_finetune"],
        "dense_macs": count_macs(dense, shape)[0], "final_macs": m["macs"], "macs_fraction": m["macs_fraction"],
        "dense_params": count_params(dense), "final_params": m["params"],
        "cpu_latency_ms": m["latency_ms"], "cpu_speedup": m["latency_speedup"],
        "compress_wall_s": compress_s, "total_wall_s": time.perf_counter() - t0,
        "files": res.files,
    }
    lines = [
        "# Bring your own model: `amc.compress` on a network outside the zoo" + (" (QUICK: not a result)"
                                                                               if args.quick else ""), "",
        f"`python benchmarks/byo.py` on {row['machine']['cpu']} ({row['machine']['cpu_capability']}, "
        f"{row['machine']['threads']} threads, torch {row['machine']['torch']}). `SmallNet` (residual adds, a strided "
        "1x1 shortcut, a depthwise-separable block, a concatenation, flatten + linear) is defined in the script, "
        f"trained from scratch for only {args.epochs:g} epochs on 45,000 train images (a short CPU schedule, so its "
        f"accuracy is far below a fully trained model's), then compressed with `amc.compress(model, "
        f"budget=\"macs=0.5\", data=splits, method=\"optuna\", episodes={args.episodes}, "
        f"finetune={args.finetune_epochs:g})`. {row['protocol']}.", "",
        "| | test accuracy | MACs | params | CPU latency (1 thread, bs1) |", "| --- | --- | --- | --- | --- |",
        f"| dense | {dense_acc:.2%} | {row['dense_macs'] / 1e6:.2f} M | {row['dense_params']:,} | "
        f"{m['latency_ms'] * m['latency_speedup']:.2f} ms |",
        f"| compressed, before finetune | {m['accuracy_before_finetune']:.2%} | | | |",
        f"| compressed + {args.finetune_epochs:g} epoch finetune | {m['accuracy']:.2%} | {m['macs'] / 1e6:.2f} M "
        f"({m['macs_fraction']:.1%}) | {m['params']:,} | {m['latency_ms']:.2f} ms ({m['latency_speedup']:.2f}x) |",
        "", f"Wall time: dense training {train_s:.0f} s (0 when cached), compression {compress_s:.0f} s "
        f"(profile, sensitivity, {args.episodes} Optuna trials, finetune, export, report). Files: "
        + ", ".join(f"{k} ({v:,} B)" for k, v in res.files.items()) + ".",
    ]
    write_report(out, "byo", row, "\n".join(lines) + "\n", stamp=False, indent=2, default=str, newline=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
