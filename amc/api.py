"""The public Python API: ``amc.compress(model, budget=..., data=...)`` and its pieces.

    import amc
    result = amc.compress(model, budget="macs=0.5", data="path/to/imagefolder", method="optuna",
                          episodes=30, finetune=1.0, run_dir="runs/mine")  # any option of amc.options.CompressConfig
    result.model            # the compressed nn.Module (really smaller for channel budgets)
    result.recipe           # amc.Recipe: result.recipe.apply(fresh_dense_model) rebuilds it bit for bit
    result.metrics          # accuracy, size / MACs / params fractions, measured CPU latency and speedup
    result.report_path      # report.md with plots; model files, ONNX, model.pt2 and trials.csv beside it

``model``: an ``nn.Module`` (any; traced on ``example_inputs``) or a reference (``resnet20``,
``torchvision:mobilenet_v2``, ``timm:resnet18``, ``package.module:factory``) with ``weights=``.
``data``: an ImageFolder path or archive (any classes, channels, sizes), a ``DataSource`` (e.g.
``amc.data.make_splits``), or the user's ``Dataset`` / ``DataLoader`` (then ``val=`` and ``test=``
may be given as well). For an image path with a test set and no validation set the default
``protocol="auto"`` halves the test set (``amc.data.holdout``): the search and the final choice
are scored on a fixed validation half, final numbers on the other half, and the recipe records
both halves' hashes; ``protocol="heldout"`` holds out ``heldout`` training images instead (default
5,000 or a tenth of a smaller set), right only when the checkpoint never trained on them. The
search is never scored on the test split. ``evaluate(model) -> float`` (higher is better) replaces
held-out accuracy as the search's score and is reported beside test accuracy; ``finetune`` is the
built-in finetune's epochs or the user's ``finetune(model, epochs)``, whose pruned weights are held
at zero. ``task=amc.Task(example_inputs=x, evaluate=..., calibration=..., finetune=..., test=...)``
replaces ``data``: any model (a detector, a segmenter), scored by the user's evaluate (``amc.task``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.data import STREAM_ABOVE, DataSource, decoded_bytes, load_images, open_data, splits_from_torch
from amc.data.holdout import ProtocolRecord, split_for_search
from amc.data.splits import HELDOUT
from amc.errors import AmcError, DataError
from amc.options import CompressConfig
from amc.pipeline import CompressResult, Progress, compress_model
from amc.recipe import DataInfo
from amc.task import Task, TaskError

DataArg = str | os.PathLike | DataSource | torch.utils.data.Dataset | torch.utils.data.DataLoader


def open_model(model: nn.Module | str, weights: str | os.PathLike | None = None,
               num_classes: int | None = None, input_size: tuple[int, ...] | None = None) -> tuple[nn.Module, str]:
    """A module and the reference a recipe records for it: objects pass through (their reference is
    ``module:Class``, for the record only); strings resolve through ``amc.models.resolve_model``."""
    if isinstance(model, nn.Module):
        if weights is not None:
            from amc.models import load_checkpoint

            load_checkpoint(model, weights)
        cls = type(model)
        return model, f"{cls.__module__}:{cls.__qualname__}"
    if not isinstance(model, str):
        raise AmcError(f"model must be an nn.Module or a reference string, got {type(model).__name__}")
    from amc.models import ModelRef, resolve_model

    return resolve_model(model, num_classes=num_classes, weights=weights, input_size=input_size), \
        str(ModelRef.parse(model))


def open_dataset(data: DataArg, *, val: Any = None, test: Any = None, heldout: int | None = None,
                 device: str | torch.device | None = None, image_size: int | None = None,
                 seed: int = 0, protocol: str = "auto") -> DataSource:
    """Any accepted ``data`` as a ``DataSource`` (see the module doc)."""
    return open_dataset_recorded(data, val=val, test=test, heldout=heldout, device=device,
                                 image_size=image_size, seed=seed, protocol=protocol)[0]


def open_dataset_recorded(data: DataArg, *, val: Any = None, test: Any = None, heldout: int | None = None,
                          device: str | torch.device | None = None, image_size: int | None = None,
                          seed: int = 0, protocol: str = "auto") -> tuple[DataSource, ProtocolRecord | None]:
    """``open_dataset`` and the record of its protocol (``amc.data.holdout``): for an image path
    with a test set and no validation set, ``auto`` halves the test set (validation half: the
    search's held-out split; final-test half: the test split) unless ``heldout=`` is given (then
    ``heldout`` train images are held out); ``protocol="heldout"`` keeps the carve-out
    of train. Other data (a DataSource, torch datasets, streaming folders) keep their own
    held-out split and record None."""
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if data is None:
        raise DataError("compress needs data (an ImageFolder path or archive, a DataSource, a torch Dataset) "
                        "or task= (an amc.Task with the model's example inputs and its evaluate)")
    if hasattr(data, "loader") and hasattr(data, "num_classes"):
        return data, None  # type: ignore[return-value]
    if isinstance(data, torch.utils.data.Dataset | torch.utils.data.DataLoader):
        return splits_from_torch(data, val, test, device=dev, seed=seed), None
    if isinstance(data, str | os.PathLike):
        p = Path(data)
        if p.is_dir() and (p / "train").is_dir() and decoded_bytes(p, image_size) > STREAM_ABOVE:
            return open_data(p, heldout=heldout or HELDOUT, device=dev, seed=seed, image_size=image_size,
                             val=val, streaming=True), None
        return split_for_search(load_images(p, image_size, val=val), protocol, heldout, dev, seed)  # type: ignore[return-value]
    raise DataError(f"data must be a path, a DataSource or a torch Dataset/DataLoader, got {type(data).__name__}")


def _check_model(model: nn.Module, example: torch.Tensor, num_classes: int) -> None:
    """One clear error when the model does not run on the example inputs or its outputs do not
    match the data's classes."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:  # the user's forward may raise anything
        first = (str(e).strip().splitlines() or [""])[0]
        raise AmcError(f"the model fails on example inputs of shape {tuple(example.shape)}: "
                       f"{type(e).__name__}: {first[:200]}") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise AmcError(f"the model must return (batch, classes) logits; got "
                       f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if out.shape[1] != num_classes:
        raise AmcError(f"the model has {out.shape[1]} outputs but the data has {num_classes} classes; "
                       f"build the model with num_classes={num_classes}")


API_DEFAULTS = {"episodes": 30, "finetune_epochs": 1.0}  # amc.compress's own defaults, quicker than the CLI's


def compress(model: nn.Module | str, budget: str | None = None, data: DataArg | None = None, *,
             task: Task | None = None, example_inputs: Any = None,
             finetune: float | Callable[[nn.Module, float], object] | None = None,
             evaluate: Callable[[nn.Module], float] | None = None, run_dir: str | os.PathLike = "runs/compress",
             weights: str | os.PathLike | None = None, num_classes: int | None = None,
             val: Any = None, test: Any = None, heldout: int | None = None,
             device: str | torch.device | None = None, image_size: int | None = None,
             progress: Progress | None = None, config: CompressConfig | None = None,
             protocol: str = "auto", data_record: ProtocolRecord | None = None, **options: Any) -> CompressResult:
    """Compress ``model`` to ``budget`` (default ``macs=0.5``) on ``data``; see the module doc.

    ``options`` are the options of ``amc.options.CompressConfig`` by name (``method``: ``optuna``,
    ``amc`` (the DDPG agent) or ``sensitivity`` (no search); ``episodes``: trials or agent episodes,
    30 by default; ``calib_images``, ``eval_images``, ``test_limit``, ``round_to``, ``criterion``,
    ``lr``, ``distill``, ``seed``...), validated there: an unknown one is one clear error naming the
    close matches. ``config`` gives them all at once (``options`` then change it). ``finetune``: the
    built-in finetune's epochs (1.0 by default; the ``finetune_epochs`` option) or the user's
    ``finetune(model, epochs)``. ``progress(message)`` sees each stage and trial. ``data_record``:
    for ``data`` already opened as a DataSource, how it was split (the recipe records it; ``amc
    compress`` passes the one its data loading made). ``task``: an ``amc.Task`` (any model, the user's
    evaluate, calibration, finetune and test; ``amc.task``) instead of ``data``.
    """
    changes = dict(options)
    if budget is not None:
        changes["budget"] = budget
    if finetune is not None and not callable(finetune):
        changes["finetune_epochs"] = float(finetune)
    cfg = config.replace(**changes) if config is not None else CompressConfig(**(API_DEFAULTS | changes))
    if task is not None:
        return _compress_task(model, task, cfg, data=data, finetune=finetune, evaluate=evaluate, run_dir=run_dir,
                              weights=weights, device=device, progress=progress, example_inputs=example_inputs)
    source, record = open_dataset_recorded(data, val=val, test=test, heldout=heldout,  # type: ignore[arg-type]
                                           device=device, image_size=image_size, seed=cfg.seed, protocol=protocol)
    record = record or data_record
    shape = tuple(example_inputs.shape) if example_inputs is not None else (1, *source.input_shape)
    module, ref = open_model(model, weights, num_classes or source.num_classes, shape[1:])
    module = module.to(source.device).eval()
    example = (example_inputs if example_inputs is not None else torch.zeros(shape)).to(source.device)
    _check_model(module, example, source.num_classes)
    info = DataInfo(source=str(data) if isinstance(data, str | os.PathLike) else type(data).__name__,
                    classes=tuple(source.classes), mean=tuple(float(v) for v in source.mean),
                    std=tuple(float(v) for v in source.std),
                    protocol=record.protocol if record else None, val_sha256=record.val_sha256 if record else None,
                    test_sha256=record.test_sha256 if record else None)
    checkpoint = Path(weights) if weights is not None else None
    return compress_model(module, source, cfg, run_dir, progress=progress, ref=ref, checkpoint=checkpoint,
                          input_shape=shape, score=evaluate,
                          train=finetune if callable(finetune) else None, data=info)  # type: ignore[arg-type]


def _compress_task(model: nn.Module | str, task: Task, cfg: CompressConfig, *, data: Any, finetune: Any,
                   evaluate: Any, run_dir: Any, weights: Any, device: Any, progress: Progress | None,
                   example_inputs: Any) -> CompressResult:
    """``compress`` with the user's task: checked (one clear error each), then the same pipeline."""
    import dataclasses

    if not isinstance(task, Task):
        raise TaskError(f"task must be an amc.Task, got {type(task).__name__}")
    if data is not None:
        raise TaskError("give data= or task=, not both (a task brings its own evaluate and calibration)")
    if evaluate is not None or example_inputs is not None:
        raise TaskError("with task=, give evaluate and example_inputs in the task, not as arguments")
    if cfg.resolved_granularity != "channel":
        raise TaskError(f"budget {cfg.budget}: fine-grained pruning (size budgets) scores the classification task "
                        "only; give a task a macs=, params= or latency= budget")
    if callable(finetune):
        if task.finetune is not None:
            raise TaskError("the finetune is given twice: as finetune= and in the task")
        task = dataclasses.replace(task, finetune=finetune)
    module, ref = open_model(model, weights)
    dev = torch.device(device) if device is not None else task.device
    module = module.to(dev).eval()
    if dev != task.device:
        from amc.layers import map_inputs

        task = dataclasses.replace(task, example_inputs=map_inputs(task.example_inputs, lambda t: t.to(dev)))
    task.check_model(module)
    info = DataInfo(source=f"task: {task.name} ({task.metric})")
    checkpoint = Path(weights) if weights is not None else None
    return compress_model(module, task, cfg, run_dir, progress=progress, ref=ref, checkpoint=checkpoint,
                          input_shape=task.shape, data=info)
