"""Tasks: what a compression scores, recalibrates and finetunes on, whatever the model does.

    import amc
    task = amc.Task(example_inputs=x, evaluate=my_map, calibration=calib_batches, finetune=my_train,
                    name="detection", metric="mAP@0.5")
    result = amc.compress(model, budget="macs=0.5", task=task, method="optuna", episodes=8)

Two kinds, one interface that ``amc.evaluator.Evaluator`` and ``amc.pipeline`` talk to:

- ``Task``: the user's own (a detector, a segmenter, anything): ``example_inputs`` (a tensor, a
  tuple or a dict: what the model is traced on), ``evaluate(model) -> float`` (higher is better, on
  the user's validation data: the search's score), and optionally ``calibration`` (model inputs, or
  (inputs, target) pairs: BatchNorm recalibration and reconstruction; without it BatchNorm is not
  recalibrated), ``finetune(model, epochs)`` (pruned weights are held at zero during it), ``loss(model,
  batch) -> scalar tensor`` (the "finetune" recovery's few steps on the calibration batches) and
  ``test(model) -> float`` (data the search never saw: the report's final figure).
- ``ClassificationTask(source)``: image classification over an ``amc.data.DataSource`` (what
  ``data=`` builds): top-1 accuracy and cross-entropy on the held-out split in one host sync, BN
  recalibration on train images, the built-in finetune, test accuracy as the final figure.

Lifecycle (both kinds): built once -> ``inputs(device)`` (the example inputs) -> the evaluator takes
``calibration_batches(images, batch_size)`` and ``scorer(images, batch_size)`` once, then per policy
``recalibrate(model, batches)``, ``recover(model, ...)`` and the scorer -> the pipeline's
``validation(model)`` / ``test_figure(model)`` on the dense and the compressed model and
``final_finetune(model, epochs, masks, ...)`` between them. The user's functions are called through
``call_user``: whatever they raise becomes one ``TaskError`` naming the function and the first line.

Task plugins (the service: operators register factories by name, jobs name them, users never upload
code): ``TASKS`` (``register_tasks``), the ``AMC_TASKS="name=pkg.module:make_task,..."`` environment
variable (``parse_tasks``, read by ``amc.service.config.ServiceConfig.from_env``) and the ``amc.tasks``
entry points (``entry_point_tasks``); ``make_task(factory)`` builds one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amc.errors import AmcError
from amc.layers import ExampleInputs, call_model, map_inputs
from amc.registry import Registry

Scorer = Callable[[nn.Module], tuple[float, float, bool]]  # model -> (score, loss, every output finite)


class TaskError(AmcError):
    """A task that cannot be used: no evaluate, a function that raises or returns NaN, bad inputs."""


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)


def call_user(fn: Callable[..., Any], role: str, *args: Any) -> Any:
    """``fn(*args)``; anything it raises (other than an ``AmcError``) becomes one ``TaskError`` naming
    ``role``, the function and the first line of the error."""
    try:
        return fn(*args)
    except AmcError:
        raise
    except Exception as e:  # the user's code may raise anything
        first = (str(e).strip().splitlines() or [""])[0]
        raise TaskError(f"the task's {role} function {_name(fn)} failed: {type(e).__name__}: {first[:200]}") from None


def _check_inputs(x: Any) -> None:
    if isinstance(x, torch.Tensor):
        return
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return
    if isinstance(x, dict) and x and all(isinstance(t, torch.Tensor) for t in x.values()):
        return
    raise TaskError(f"example inputs must be a tensor, a tuple or a dict of tensors, got {type(x).__name__}")


def _count(inputs: Any) -> int:
    """Examples in one batch of inputs: the leading size of its first tensor."""
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else (
        inputs[0] if isinstance(inputs, (tuple, list)) else inputs)
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 1


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def recalibrate_inputs(model: nn.Module, batches: Iterable[Any]) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over ``batches`` of model inputs
    (a tensor, a tuple or a dict each): ``amc.train.recalibrate_bn`` with ``labelled=False``."""
    from amc.train import recalibrate_bn

    recalibrate_bn(model, batches, labelled=False)


def _non_finite(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return name
    return None


@dataclass(frozen=True, eq=False)  # compared by identity: its fields hold tensors and functions
class Task:
    """The user's task (see the module doc). ``name`` and ``metric`` name the score in the report."""

    example_inputs: ExampleInputs
    evaluate: Callable[[nn.Module], float] | None = None
    calibration: Iterable[Any] | None = None
    finetune: Callable[[nn.Module, float], object] | None = None
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    test: Callable[[nn.Module], float] | None = None
    name: str = "task"
    metric: str = "score"

    classification = False

    def __post_init__(self) -> None:
        if self.evaluate is None:
            raise TaskError("a task needs evaluate(model) -> float (higher is better): the search's score")
        for role in ("evaluate", "finetune", "loss", "test"):
            fn = getattr(self, role)
            if fn is not None and not callable(fn):
                raise TaskError(f"the task's {role} must be a function, got {type(fn).__name__}")
        _check_inputs(self.example_inputs)
        if self.calibration is not None and not isinstance(self.calibration, Iterable):
            raise TaskError(f"the task's calibration must be an iterable of inputs, got "
                            f"{type(self.calibration).__name__}")

    # -- what the evaluator and the pipeline call ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        first = self.example_inputs if isinstance(self.example_inputs, torch.Tensor) else next(
            iter(self.example_inputs.values() if isinstance(self.example_inputs, dict) else self.example_inputs))
        return first.device  # type: ignore[union-attr]

    def inputs(self, device: torch.device | str | None = None) -> ExampleInputs:
        """The example inputs, on ``device`` when given."""
        return self.example_inputs if device is None else map_inputs(self.example_inputs, lambda t: t.to(device))

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The example input's shape when it is one tensor (else None)."""
        return tuple(self.example_inputs.shape) if isinstance(self.example_inputs, torch.Tensor) else None

    def _as_inputs(self, batch: Any) -> Any:
        """A calibration element as model inputs: an (inputs, target) pair gives its inputs."""
        if isinstance(batch, (tuple, list)) and batch:
            several = isinstance(self.example_inputs, (tuple, list))
            if not several or (len(batch) == 2 and isinstance(batch[0], (tuple, list, dict))):
                return batch[0]
        return batch

    def calibration_batches(self, images: int, batch_size: int = 0, device: torch.device | None = None) -> list[Any]:
        """The first calibration batches holding ``images`` examples, as model inputs on ``device``
        (``batch_size`` is the user's: the batches are taken as they come)."""
        if self.calibration is None:
            return []
        out, seen = [], 0
        for batch in self.calibration:
            x = self._as_inputs(batch)
            _check_inputs(x)
            out.append(map_inputs(x, lambda t: t.to(device)) if device is not None else x)
            seen += _count(x)
            if seen >= images:
                break
        return out

    def check_model(self, model: nn.Module) -> None:
        """One clear error when ``model`` does not run on the example inputs."""
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                call_model(model, map_inputs(self.inputs(_device(model)), torch.clone))
        except Exception as e:  # the user's forward may raise anything
            first = (str(e).strip().splitlines() or [""])[0]
            raise TaskError(f"the model fails on the task's example inputs: {type(e).__name__}: {first[:200]}") \
                from None
        finally:
            model.train(was)

    def score(self, model: nn.Module) -> float:
        """``evaluate(model)`` as a float (nan stays nan: a pruned model may diverge)."""
        model.eval()
        value = call_user(self.evaluate, "evaluate", model)  # type: ignore[arg-type]
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TaskError(f"the task's evaluate function {_name(self.evaluate)} must return a number, got "
                            f"{type(value).__name__}") from None

    def scorer(self, images: int | None = None, batch_size: int = 0) -> Scorer:
        """The search's score: ``evaluate`` (loss 0: the tie-breaking rewards see the score alone)."""
        def run(model: nn.Module) -> tuple[float, float, bool]:
            value = self.score(model)
            return value, 0.0, math.isfinite(value)
        return run

    def validation(self, model: nn.Module, what: str = "the dense model") -> float:
        """``evaluate`` on ``what``; one clear error when it is not finite."""
        value = self.score(model)
        if not math.isfinite(value):
            raise TaskError(f"the task's evaluate function {_name(self.evaluate)} returned {value} on {what}")
        return value

    def test_figure(self, model: nn.Module) -> float | None:
        """The final figure on data the search never saw (``test``), None without one."""
        if self.test is None:
            return None
        model.eval()
        value = call_user(self.test, "test", model)
        return float(value)

    def recalibrate(self, model: nn.Module, batches: list[Any]) -> None:
        recalibrate_inputs(model, batches)

    def recover(self, model: nn.Module, batches: list[Any], steps: int, lr: float, masks: Mapping | None,
                seed: int = 0) -> None:
        """The "finetune" recovery: ``steps`` SGD steps of ``loss`` over the calibration batches (in order,
        cycled), pruned weights held at zero."""
        from amc.train import apply_masks

        if self.loss is None or not batches:
            raise TaskError("recovery 'finetune' with a task needs its loss(model, batch) and calibration batches")
        torch.manual_seed(seed)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
        model.train()
        for x in itertools.islice(itertools.cycle(batches), steps):
            opt.zero_grad(set_to_none=True)
            value = call_user(self.loss, "loss", model, x)
            if not torch.isfinite(value):
                from amc.errors import TrainingDiverged

                raise TrainingDiverged("the task's loss became non-finite during recovery")
            value.backward()
            opt.step()
            apply_masks(model, masks)  # type: ignore[arg-type]
        model.eval()

    def apply_recipe(self, recipe: Any, dense: nn.Module) -> tuple[nn.Module, dict]:
        """``recipe`` applied to a copy of ``dense`` (CPU, fp32), a channel one traced on the example inputs."""
        from amc.recipe import apply_to_model

        return apply_to_model(recipe, dense, example_inputs=self.inputs("cpu") if self.shape is None else None)

    def export_onnx(self, model: nn.Module, path: Any) -> str | None:
        """``model`` exported to ONNX on the example inputs (one output per tensor it returns, named by its
        path in the output); None when written, else why not (any exporter failure is reported, not fatal)."""
        try:
            from amc.export.onnx import export_onnx

            export_onnx(model, path, example_inputs=map_inputs(self.inputs("cpu"), torch.clone))
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            return f"ONNX export failed: {type(e).__name__}: {first[:200]}"
        return None

    def report_section(self, validation: tuple[float | None, ...], test: tuple[float | None, ...],
                       problems: Iterable[str | None] = ()) -> str:
        """The report's section on this task's figures: ``validation`` (evaluate: dense, compressed before
        and after its finetune), ``test`` (dense, compressed after finetune) and export ``problems``."""
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4g}"

        dense, before, after = validation
        lines = [f"\n## Task: {self.name}\n", f"| {self.metric} | dense | compressed, before finetune | "
                 "compressed, after finetune |", "|---|---|---|---|",
                 f"| validation (evaluate: the search's score) | {fmt(dense)} | {fmt(before)} | {fmt(after)} |"]
        if self.test is not None:
            lines.append(f"| test (data the search never saw) | {fmt(test[0])} | - | {fmt(test[1])} |")
        else:
            lines.append("\nThe task has no test function: the figures are on the validation data the search "
                         "was scored on, not on held-out test data.")
        lines += [f"\nExport: {p}" for p in problems if p]
        return "\n".join(lines) + "\n"

    def final_finetune(self, model: nn.Module, epochs: float, masks: Mapping | None, **_: Any) -> bool:
        """The user's ``finetune(model, epochs)`` with pruned weights held at zero; False without one.
        One clear error when it leaves a weight non-finite."""
        if self.finetune is None or epochs <= 0:
            return False
        from amc.train import hold_masks

        with hold_masks(model, masks):  # type: ignore[arg-type]
            call_user(self.finetune, "finetune", model, epochs)
        bad = _non_finite(model)
        if bad is not None:
            raise TaskError(f"the task's finetune function {_name(self.finetune)} left non-finite weights "
                            f"(NaN/Inf in {bad})")
        return True


class ClassificationTask:
    """Image classification over a ``DataSource`` (see the module doc): the built-in task."""

    classification = True
    name = "classification"
    metric = "accuracy"
    loss = None

    def __init__(self, source: Any, evaluate: Callable[[nn.Module], float] | None = None,
                 test_limit: int | None = None) -> None:
        self.source = source
        self.evaluate = evaluate  # the user's evaluate(model) replaces held-out accuracy as the score
        self.test_limit = test_limit
        self._test: Any = None

    @property
    def device(self) -> torch.device:
        return self.source.device

    def inputs(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros((1, *self.source.input_shape), device=device or self.source.device)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, *self.source.input_shape)

    def calibration_batches(self, images: int, batch_size: int = 512,
                            device: torch.device | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``images`` train images, not augmented, in order: (images, labels) batches."""
        loader = self.source.loader("train", batch_size=batch_size, limit=images, shuffle=False, augment=False)
        return [(x, y) for x, y in loader]

    def heldout_batches(self, images: int | None, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = self.source.loader("heldout", batch_size=batch_size, limit=images, shuffle=False, augment=False)
        return [(x, y) for x, y in loader]

    def scorer(self, images: int | None, batch_size: int) -> Scorer:
        """Held-out top-1 and mean cross-entropy, and whether every logit was finite: one host sync."""
        batches = self.heldout_batches(images, batch_size)
        if not batches:
            from amc.errors import BudgetError

            raise BudgetError("the held-out split is empty: the evaluator needs images to score policies")
        n = sum(len(y) for _, y in batches)
        device = self.source.device

        @torch.no_grad()
        def run(model: nn.Module) -> tuple[float, float, bool]:
            correct = torch.zeros((), dtype=torch.long, device=device)
            loss = torch.zeros((), dtype=torch.float32, device=device)
            finite = torch.ones((), dtype=torch.bool, device=device)
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
                torch.autocast("cpu", enabled=False)
            with ctx:
                for x, y in batches:
                    out = model(x)
                    correct += (out.argmax(1) == y).sum()
                    loss += F.cross_entropy(out.float(), y, reduction="sum")
                    finite &= torch.isfinite(out).all()
            c, lsum, ok = torch.stack([correct.float(), loss, finite.float()]).tolist()
            return c / n, lsum / n, bool(ok)

        run.batches, run.count = batches, n  # type: ignore[attr-defined]
        return run

    def test_loader(self) -> Any:
        if self._test is None:
            self._test = self.source.loader("test", 512, limit=self.test_limit)
        return self._test

    def validation(self, model: nn.Module, what: str = "the dense model") -> float | None:
        """The user's ``evaluate`` when given (else None: test accuracy is the figure)."""
        if self.evaluate is None:
            return None
        return float(call_user(self.evaluate, "evaluate", model))

    def test_figure(self, model: nn.Module) -> float:
        """Test accuracy."""
        from amc.train import evaluate

        return evaluate(model, self.test_loader())

    def recalibrate(self, model: nn.Module, batches: list[Any]) -> None:
        from amc.train import recalibrate_bn

        recalibrate_bn(model, batches)


AnyTask = Task | ClassificationTask


def as_task(data: Any) -> AnyTask:
    """A task as given, or the classification task over a ``DataSource``."""
    if isinstance(data, (Task, ClassificationTask)):
        return data
    return ClassificationTask(data)


# -- task plugins (the service: operators register factories by name; users never upload code) -----------
TASKS: Registry[Callable[[], Task]] = Registry("task", TaskError)
ENTRY_POINTS = "amc.tasks"  # Python entry points group: name = "pkg.module:make_task"


def _resolve(ref: str) -> Callable[[], Task]:
    import importlib

    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise TaskError(f"a task factory is 'pkg.module:function', got {ref!r}")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise TaskError(f"cannot import the task factory {ref!r}: {type(e).__name__}: {e}") from None
    if not callable(obj):
        raise TaskError(f"the task factory {ref!r} is not callable")
    return obj


def make_task(factory: str | Callable[[], Any]) -> Task:
    """Call a task factory (a callable or a ``pkg.module:function`` reference); one clear error unless
    it returns an ``amc.Task``."""
    fn = _resolve(factory) if isinstance(factory, str) else factory
    task = call_user(fn, "factory")
    if not isinstance(task, Task):
        raise TaskError(f"the task factory {_name(fn)} must return an amc.Task, got {type(task).__name__}")
    return task


def parse_tasks(spec: str) -> dict[str, str]:
    """``"name=pkg.module:make_task,other=pkg.mod:factory"`` -> {name: reference}."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, ref = item.partition("=")
        if not sep or not name.strip() or ":" not in ref:
            raise TaskError(f"a task plugin is 'name=pkg.module:function', got {item!r}")
        out[name.strip()] = ref.strip()
    return out


def entry_point_tasks() -> dict[str, str]:
    """The task factories installed packages declare in the ``amc.tasks`` entry points: {name: reference}."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}


def register_tasks(spec: str | Mapping[str, str]) -> list[str]:
    """Register task factories in ``TASKS`` by name from ``spec`` (``parse_tasks``' form or a mapping of
    references); each is imported when a job asks for it. Returns the names registered."""
    refs = parse_tasks(spec) if isinstance(spec, str) else dict(spec)
    for name, ref in refs.items():
        TASKS.register(name, _lazy(ref), help=ref, replace=True)
    return list(refs)


def _lazy(ref: str) -> Callable[[], Task]:
    def factory() -> Task:
        return make_task(ref)
    factory.__qualname__ = ref
    return factory
