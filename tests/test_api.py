"""The public API end to end: a model class defined only here, data sets made here, the user's loops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import amc
from amc.errors import AmcError

FAST = dict(calib_images=32, eval_images=32, test_limit=40, latency_runs=3, sensitivity_ratios=(0.5,),
            batch_size=32, upper=0.8)


class Net(nn.Module):
    """Residual add, depthwise convolution, concatenation, flatten + linear head."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU(), nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.side = nn.Sequential(nn.Conv2d(16, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(32 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        x = torch.cat([self.dw(x), self.side(x)], 1)
        return self.head(torch.flatten(self.pool(x), 1))


def image_folder(root: Path, classes: int = 5, size: int = 64, train: int = 12, test: int = 4,
                 mode: str = "RGB") -> Path:
    """A small ImageFolder whose classes differ in mean brightness (something to learn)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                px = rng.normal(40 + 40 * c, 30, (size, size, channels)).clip(0, 255).astype(np.uint8)
                Image.fromarray(px.squeeze(-1) if channels == 1 else px, mode).save(d / f"{i}.png")
    return root


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("five") / "data")


def test_compress_a_user_module_to_half_the_macs(tmp_path, folder):
    torch.manual_seed(0)
    model = Net()
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    res = amc.compress(model, budget="macs=0.5", data=folder, method="optuna", episodes=3, finetune=0.0,
                       run_dir=tmp_path / "run", device="cpu", **FAST)
    assert all(torch.equal(v, dense_state[k]) for k, v in model.state_dict().items())  # the input is untouched
    assert res.metrics["macs_fraction"] <= 0.5 + 1e-6
    assert res.metrics["params"] < sum(p.numel() for p in model.parameters())  # physically smaller
    x = torch.randn(2, 3, 64, 64)
    assert res.model(x).shape == model.eval()(x).shape == (2, 5)
    recipe = amc.Recipe.load(res.recipe_path)
    assert recipe.model.input_shape == (1, 3, 64, 64) and recipe.data.classes == tuple(f"class_{c}" for c in range(5))
    assert recipe.model.arch.endswith(":Net") and recipe.model.checkpoint_sha256 is None
    again = recipe.apply(_with_state(dense_state))
    assert _same(again, res.model)  # no finetune: the recipe rebuilds the result bit for bit
    assert (tmp_path / "run" / "model.pt2").is_file() and (tmp_path / "run" / "report.md").is_file()
    program = torch.export.load(str(tmp_path / "run" / "model.pt2")).module()
    assert torch.allclose(program(x), res.model(x), atol=1e-5)  # loads without this file's Net class


def test_compress_reranks_the_search_top_on_every_heldout_image(tmp_path, folder):
    """A reward on a subset of the held-out images: the search's top few are re-scored on all of them and
    the best of those is the recipe's policy; ``rerank=0`` keeps the search's own best."""
    said: list[str] = []
    kw = {**FAST, "eval_images": 8}
    res = amc.compress(Net(), budget="macs=0.5", data=folder, method="optuna", episodes=4, finetune=0.0, rerank=3,
                       run_dir=tmp_path / "run", device="cpu", progress=said.append, **kw)
    kept = [m for m in said if m.startswith("re-rank of the search's top")]
    assert len(kept) == 1 and res.metrics["macs_fraction"] <= 0.5 + 1e-6
    said.clear()
    amc.compress(Net(), budget="macs=0.5", data=folder, method="optuna", episodes=4, finetune=0.0, rerank=0,
                 run_dir=tmp_path / "run0", device="cpu", progress=said.append, **kw)
    assert not any(m.startswith("re-rank") for m in said)


def test_compress_to_a_latency_budget_calibrates_the_table(tmp_path, folder):
    """A latency budget: the lookup table is calibrated on the dense model first (its overhead said in the
    progress), and the final model's latency is measured and checked against the budget."""
    from amc.latency import FakeRuntime, use_runtime
    from amc.layers import count_macs

    said: list[str] = []
    # every latency through a runtime whose times are known (0.2 ms + 0.01 ms per MMAC): the verdict
    # cannot follow this machine's timing noise
    with use_runtime(FakeRuntime(ms_per_mmac=0.01, overhead_ms=0.2)) as fake:
        res = amc.compress(Net(), budget="latency=0.99", data=folder, method="sensitivity", episodes=1,
                           finetune=0.0, run_dir=tmp_path / "run", device="cpu", progress=said.append, **FAST)
    assert fake.calls > 0
    assert any("outside the table's layers" in m for m in said)
    assert (tmp_path / "run" / "latency_lut.csv").is_file()
    assert res.metrics["latency_fraction"] > 0 and isinstance(res.metrics["latency_within_budget"], bool)
    expected = fake.ms(count_macs(res.model, (1, 3, 64, 64))[0]) / fake.ms(
        count_macs(Net(), (1, 3, 64, 64))[0])
    assert res.metrics["latency_fraction"] == pytest.approx(expected)  # the paired figure of the known times
    assert res.metrics["latency_within_budget"] and res.metrics["latency_fraction"] <= 0.99
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["latency_target"]["input_shape"] == [3, 64, 64] and summary["latency_target"]["threads"] == 1
    assert len(summary["latency_ratios"]) == 7 and summary["metrics"]["dense_latency_ms"] > 0
    assert res.recipe is not None and res.recipe.metrics.latency_device == "cpu torch 1 thread bs1 3x64x64 contiguous"


def test_the_latency_target_runtime_and_layout_are_the_options(tmp_path, folder):
    """``latency_runtime`` and ``latency_layout`` make the target every latency is taken on (recorded in the
    recipe and the summary), and the torch.export program is written in that layout."""
    from amc.latency import FakeRuntime, use_runtime

    with use_runtime(FakeRuntime(ms_per_mmac=0.01, overhead_ms=0.2)):  # known times: no timing noise
        res = amc.compress(Net(), budget="latency=0.99", data=folder, method="sensitivity", episodes=1,
                           finetune=0.0, run_dir=tmp_path / "run", device="cpu", latency_runtime="onnxruntime",
                           latency_layout="channels_last", **FAST)
    assert res.recipe is not None
    assert res.recipe.metrics.latency_device == "cpu onnxruntime 1 thread bs1 3x64x64 channels_last"
    target = json.loads((tmp_path / "run" / "summary.json").read_text())["latency_target"]
    assert (target["runtime"], target["layout"]) == ("onnxruntime", "channels_last")
    program = torch.export.load(str(tmp_path / "run" / "model.pt2")).module()
    convs = [w for w in program.parameters() if w.dim() == 4]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(program(x), res.model(x), atol=1e-5)
    with pytest.raises(AmcError, match="latency_layout"):
        amc.compress(Net(), budget="macs=0.5", data=folder, latency_layout="nchw", run_dir=tmp_path / "bad")


def _with_state(state: dict[str, torch.Tensor]) -> Net:
    net = Net()
    net.load_state_dict(state)
    return net.eval()


def test_user_evaluate_and_finetune_are_called_and_masks_hold(tmp_path):
    digits = pytest.importorskip("sklearn.datasets").load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # 1 channel, 8x8
    x = nn.functional.interpolate(x, size=32, mode="nearest")
    y = torch.tensor(digits.target)
    train = torch.utils.data.TensorDataset(x[:400], y[:400])
    test = torch.utils.data.TensorDataset(x[400:480], y[400:480])
    calls = {"evaluate": 0, "finetune": 0}

    def evaluate(m: nn.Module) -> float:
        calls["evaluate"] += 1
        with torch.no_grad():
            return float((m(x[480:560]).argmax(1) == y[480:560]).float().mean())

    def finetune(m: nn.Module, epochs: float) -> None:
        calls["finetune"] += 1
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        m.train()
        for i in range(0, 64, 16):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[i:i + 16]), y[i:i + 16]).backward()
            opt.step()
            with torch.no_grad():  # a careless loop that writes into every weight
                for p in m.parameters():
                    p.add_(0.01)

    torch.manual_seed(0)
    res = amc.compress(Net(num_classes=10, in_channels=1), budget="size=0.5", data=train, test=test,
                       method="sensitivity", finetune=finetune, evaluate=evaluate, run_dir=tmp_path / "run",
                       device="cpu", sparsities=(0.5, 0.8), **FAST)
    assert calls["finetune"] == 1 and calls["evaluate"] >= 3  # dense, the candidates, the final model
    assert res.metrics["score"] == pytest.approx(evaluate(res.model))
    assert res.metrics["size_fraction"] <= 0.5 + 1e-6  # the masks held through the user's loop
    recipe = amc.Recipe.load(res.recipe_path)
    assert recipe.granularity == "fine" and recipe.model.input_shape == (1, 1, 32, 32)


def test_bad_input_gives_one_clear_error(tmp_path, folder):
    class Broken(Net):
        def forward(self, x):
            raise RuntimeError("shapes do not line up")

    class OnlyHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 64 * 64, 5)

        def forward(self, x):
            return self.fc(x.flatten(1))

    kw = dict(budget="macs=0.5", data=folder, episodes=1, finetune=0.0, device="cpu", **FAST)
    with pytest.raises(AmcError, match="fails on example inputs of shape \\(1, 3, 64, 64\\)"):
        amc.compress(Broken(), run_dir=tmp_path / "a", **kw)
    with pytest.raises(AmcError, match="10 outputs but the data has 5 classes"):
        amc.compress(Net(num_classes=10), run_dir=tmp_path / "b", **kw)
    with pytest.raises(AmcError, match="prun"):
        amc.compress(OnlyHead(), run_dir=tmp_path / "c", **kw)
    one = image_folder(tmp_path / "one", classes=1, size=16, train=3, test=1)
    with pytest.raises(AmcError, match="class"):
        amc.compress(Net(num_classes=1), budget="macs=0.5", data=one, run_dir=tmp_path / "d", device="cpu")
    with pytest.raises(AmcError, match="unknown option 'epochs'"):
        amc.compress(Net(), run_dir=tmp_path / "e", epochs=3, **kw)
