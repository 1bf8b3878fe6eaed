"""The run report reads like a product: numbers with units, each accuracy with its split and state,
the paired speedup, the settings, the files with their sizes, and "Use it" snippets that run."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

import amc
from amc.report import count, file_size, millis, percent, run_report, split_words
from tests.test_api import FAST, Net, image_folder

LONG_FLOAT = re.compile(r"\d\.\d{5,}")  # a raw float dump: more than 4 decimals


@dataclass(frozen=True)
class Scored:
    """What the report reads of an ``amc.evaluator.Result``."""

    policy: dict
    accuracy: float
    macs: float

    def cost(self, kind: str) -> float:
        return {"macs": self.macs}[kind]


def test_units():
    assert percent(0.49920300263757905) == "49.9%" and percent(None) == "n/a"
    assert millis(3.3163310000077217) == "3.32 ms" and millis(45.671) == "45.67 ms" and millis(312.44) == "312.4 ms"
    assert file_size(512) == "512 B" and file_size(1536) == "1.5 KiB" and file_size(3 * 2**20) == "3.0 MiB"
    assert count(31_300_000) == "31.3 M" and count(1_204_000_000) == "1.20 G" and count(694_085) == "694.1 K"
    assert split_words("test-halves") == ("validation half of the test set", "final-test half of the test set")
    assert split_words(None) == ("held-out split", "test split")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny real run (a user module on a 5-class 64x64 ImageFolder), its dense weights and result."""
    root = tmp_path_factory.mktemp("fmt")
    folder = image_folder(root / "data")
    torch.manual_seed(0)
    dense = Net()
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    config = amc.CompressConfig(budget="macs=0.5", method="optuna", episodes=2, finetune_epochs=0.2, **FAST)
    res = amc.compress(dense, data=folder, config=config, run_dir=root / "run", device="cpu")
    return res, state, config


def test_report_has_units_labels_settings_and_no_raw_floats(run):
    res, _, config = run
    recipe = amc.Recipe.load(res.recipe_path)
    chosen = Scored(dict(recipe.policy), 0.5213, 0.47)
    scored = {"search best": chosen, "sensitivity": Scored({}, 0.40, 0.49), "uniform": Scored({}, 0.31, 0.447)}
    path = run_report(res.run_dir, recipe, timings=res.timings, files=res.files, metrics=res.metrics,
                      scored=scored, config=config, device="cpu").path
    text = path.read_text()
    assert not LONG_FLOAT.findall(text), LONG_FLOAT.findall(text)[:3]
    m = res.metrics
    held, test = split_words(recipe.data.protocol)
    assert recipe.data.protocol == "test-halves"
    for words in (f"| accuracy, dense | {percent(m['dense_accuracy'])} | {test} |",
                  f"| accuracy, pruned (no BN recalibration, before finetune) | "
                  f"{percent(m['accuracy_before_finetune'])} | {test} |",
                  f"| accuracy, search best policy after BN recalibration (before finetune) | 52.1% | {held} |",
                  f"| accuracy after finetune | {percent(m['accuracy'])} | {test} |",
                  f"{percent(m['macs_fraction'])} of dense", f"{m['latency_speedup']:.2f}x faster",
                  millis(m["latency_ms"]), f"{millis(m['dense_latency_ms'])} dense",
                  f"median of {m['latency_rounds']} alternating rounds", "spread +-",
                  "| calibration images | 32 |", "| evaluation images | 32 |", "| sensitivity grid | 0.5 |",
                  "| search | optuna, 2 trials, seed 0 |", "| finetune | 0.2 epochs",
                  f"| pruned | {file_size(res.files['pruned'])} |",
                  f"| model.onnx | {file_size(res.files['model.onnx'])} |",
                  "## Use it", "## Settings", "uniform at 44.7%", "rounded to multiples of 8"):
        assert words in text, words
    assert "0.5493147970081549" not in text and "accuracy_before_finetune" not in text


def _snippets(text: str) -> list[str]:
    use = text.split("## Use it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", use, re.S)


def test_the_use_it_snippets_run(run, monkeypatch):
    res, state, config = run
    recipe = amc.Recipe.load(res.recipe_path)
    text = run_report(res.run_dir, recipe, files=res.files, metrics=res.metrics, config=config).path.read_text()
    load, reapply, onnx = _snippets(text)
    monkeypatch.chdir(res.run_dir)  # the snippets' paths are relative to the report's folder
    x = torch.randn(2, 3, 64, 64)
    want = res.model.eval()(x)
    ns: dict = {}
    exec(load, ns)
    assert torch.allclose(ns["model"](x), want, atol=1e-5)
    dense = Net()
    dense.load_state_dict(state)
    ns = {"dense": dense}
    exec(reapply, ns)
    assert torch.allclose(ns["model"](x), want, atol=1e-5)  # the recipe, then the finetuned weights
    ns = {}
    exec(onnx, ns)
    assert ns["logits"].shape == (1, 5)
    assert "amc apply" not in text  # a module object: the CLI cannot rebuild it by name, so it is not offered


def test_settings_say_which_values_the_device_chose_and_which_the_run_set():
    from amc.options import CompressConfig
    from amc.report import settings_table

    config = CompressConfig(budget="macs=0.5", calib_images=1024).for_device("cpu")
    rows = {r.setting: r for r in settings_table(config, "cpu").itertuples()}
    assert rows["calibration images"].value == "1,024" and "set for this run" in rows["calibration images"].meaning
    assert rows["evaluation images"].value == "1,000" and "chosen for the device" in rows["evaluation images"].meaning
    assert "chosen for the device" in rows["sensitivity grid"].meaning
