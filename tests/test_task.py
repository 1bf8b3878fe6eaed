"""amc.compress(model, budget, task=amc.Task(...)): any model (a detector, a segmenter) scored by the user's own
evaluate, finetuned by the user's finetune; the bad inputs of a task, each one clear error."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import amc
from amc.layers import output_shapes
from amc.recipe import RecipeError
from amc.task import Task, TaskError
from tests.task_models import Counter, detection_task, make_yolo

FAST = dict(method="optuna", episodes=3, finetune=1.0, sensitivity_ratios=(0.5,), latency_rounds=1, latency_runs=2,
            upper=0.8)


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    counter = Counter()
    model = make_yolo()
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    res = amc.compress(model, budget="macs=0.5", task=detection_task(counter),
                       run_dir=tmp_path_factory.mktemp("yolo"), **FAST)
    return model, dense_state, counter, res


def test_a_detector_is_compressed_through_its_task(yolo_run):
    model, dense_state, counter, res = yolo_run
    assert all(torch.equal(v, dense_state[k]) for k, v in model.state_dict().items())  # the input is untouched
    assert res.metrics["macs_fraction"] <= 0.5 + 1e-6
    assert res.metrics["params"] < sum(p.numel() for p in model.parameters())  # physically smaller
    x = torch.randn(2, 3, 64, 64)
    out, dense_out = res.model(x), model(x)
    assert isinstance(out, list) and output_shapes(out) == output_shapes(dense_out)  # the heads' format kept
    # the user's functions really ran: evaluate for every trial and candidate, finetune once, test twice
    assert counter.finetune == 1 and counter.test == 2
    assert counter.evaluate >= 3 + 3  # three trials, three candidates (and the dense profile)
    assert res.metrics["task"] == "detection" and res.metrics["metric"] == "-mse"
    assert math.isfinite(res.metrics["score"]) and math.isfinite(res.metrics["dense_score"])
    assert res.metrics["accuracy"] is None  # not a classifier: no accuracy is made up
    assert res.recipe is not None and res.recipe.data.source == "task: detection (-mse)"


def test_the_recipe_reapplies_bit_for_bit(yolo_run):
    _, _, _, res = yolo_run
    rebuilt = amc.Recipe.load(res.recipe_path).apply(make_yolo())  # a fresh dense model, the saved recipe
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in res.model.parameters()]
    task = detection_task()
    task.recalibrate(rebuilt, task.calibration_batches(10**6))  # BatchNorm on the calibration inputs, as the pipeline
    task.finetune(rebuilt, 1.0)  # the same (deterministic) finetune the pipeline ran
    x = torch.randn(2, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.eval()(x), res.model(x), strict=True))


def test_the_report_names_the_tasks_figures(yolo_run):
    _, _, _, res = yolo_run
    text = res.report_path.read_text()
    assert "## Task: detection" in text and "| -mse |" in text and "test (data the search never saw)" in text
    assert (res.run_dir / "summary.json").is_file() and (res.run_dir / "recipe.yaml").is_file()


class TinySegmenter(nn.Module):
    """A dict output, torchvision's segmentation form: {"out": logits at the input's size}."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.head(self.body(x))
        return {"out": nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def test_a_dict_output_segmenter_through_a_task(tmp_path):
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    images = torch.randn(4, 3, 32, 32)
    masks = torch.randint(0, 4, (4, 32, 32))

    @torch.no_grad()
    def pixel_accuracy(m: nn.Module) -> float:
        return float((m(images)["out"].argmax(1) == masks).float().mean())

    task = amc.Task(example_inputs=images[:1], evaluate=pixel_accuracy, calibration=[images[:2], images[2:]],
                    name="segmentation", metric="pixel accuracy")
    res = amc.compress(model, budget="macs=0.6", task=task, run_dir=tmp_path, **FAST)
    assert res.metrics["macs_fraction"] <= 0.6 + 1e-6
    out = res.model(images)
    assert set(out) == {"out"} and out["out"].shape == (4, 4, 32, 32)
    assert (tmp_path / "model.onnx").is_file()  # a dict output exports, its output named
    text = res.report_path.read_text()
    assert "no test function" in text  # without test= the report says its figure is validation


class TwoInputs(nn.Module):
    """Two inputs (an image and a depth map) fused by a concatenation; a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.rgb = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.depth = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.head(self.mid(torch.cat([self.rgb(rgb), self.depth(depth)], 1)))}


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_several_inputs_as_a_tuple_or_a_dict(tmp_path, form):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    rgb, depth = torch.randn(4, 3, 16, 16), torch.randn(4, 1, 16, 16)
    target = torch.randint(0, 2, (4, 16, 16))
    batch = (rgb, depth) if form == "tuple" else {"rgb": rgb, "depth": depth}
    example = (rgb[:1], depth[:1]) if form == "tuple" else {"rgb": rgb[:1], "depth": depth[:1]}

    @torch.no_grad()
    def pixel_accuracy(m: nn.Module) -> float:
        return float((m(rgb, depth)["seg"].argmax(1) == target).float().mean())

    task = amc.Task(example_inputs=example, evaluate=pixel_accuracy, calibration=[batch])
    res = amc.compress(model, budget="macs=0.5", task=task, run_dir=tmp_path, **FAST)
    assert res.metrics["macs_fraction"] <= 0.5 + 1e-6
    assert res.model(rgb, depth)["seg"].shape == (4, 2, 16, 16)
    assert "latency_ms" not in res.metrics  # the latency target takes one input tensor: not measured, not made up
    assert "one input tensor" in res.metrics["program_skipped"]  # the report says why no torch.export program
    saved = amc.Recipe.load(res.recipe_path)
    with pytest.raises(RecipeError, match="example_inputs="):
        saved.apply(TwoInputs().eval())  # a recipe of a model of several inputs names what it needs
    rebuilt = saved.apply(model, example_inputs=example)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in res.model.parameters()]


# -- bad input, each one clear error ------------------------------------------------------------------------
def test_a_task_without_evaluate():
    with pytest.raises(TaskError, match="needs evaluate"):
        Task(example_inputs=torch.zeros(1, 3, 8, 8))


def _task(evaluate, **kw) -> Task:
    return Task(example_inputs=torch.zeros(1, 3, 64, 64), evaluate=evaluate, **kw)


def test_an_evaluate_that_returns_nan(tmp_path):
    with pytest.raises(TaskError, match="returned nan"):
        amc.compress(make_yolo(), budget="macs=0.5", task=_task(lambda m: float("nan")), run_dir=tmp_path, **FAST)


def test_an_evaluate_that_raises_names_the_function_and_the_error(tmp_path):
    def my_map(model):
        raise KeyError("boxes")

    with pytest.raises(TaskError, match=r"evaluate function .*my_map failed: KeyError: 'boxes'"):
        amc.compress(make_yolo(), budget="macs=0.5", task=_task(my_map), run_dir=tmp_path, **FAST)


def test_example_inputs_the_model_rejects(tmp_path):
    task = Task(example_inputs=torch.zeros(1, 5, 64, 64), evaluate=lambda m: 0.0)
    with pytest.raises(TaskError, match="fails on the task's example inputs: RuntimeError"):
        amc.compress(make_yolo(), budget="macs=0.5", task=task, run_dir=tmp_path, **FAST)


def test_data_and_task_both_given(tmp_path):
    with pytest.raises(TaskError, match="not both"):
        amc.compress(make_yolo(), budget="macs=0.5", data="somewhere", task=_task(lambda m: 0.0), run_dir=tmp_path)


def test_a_user_finetune_that_produces_nan(tmp_path):
    def explode(model, epochs):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))

    with pytest.raises(TaskError, match=r"finetune function .*explode left non-finite weights"):
        amc.compress(make_yolo(), budget="macs=0.5", task=_task(lambda m: 0.0, finetune=explode),
                     run_dir=tmp_path, **FAST)


def test_a_size_budget_with_a_task_is_refused(tmp_path):
    with pytest.raises(TaskError, match="fine-grained pruning"):
        amc.compress(make_yolo(), budget="size=0.5", task=_task(lambda m: 0.0), run_dir=tmp_path)


def test_a_criterion_that_needs_labelled_images_is_refused(tmp_path):
    with pytest.raises(amc.AmcError, match="data-free criterion"):
        amc.compress(make_yolo(), budget="macs=0.5", task=_task(lambda m: 0.0), run_dir=tmp_path, criterion="taylor",
                     **FAST)
