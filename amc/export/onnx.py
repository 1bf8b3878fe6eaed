"""ONNX export of a (pruned) model, written atomically, and a check against onnxruntime.

Uses the TorchScript-based exporter (fast, no onnxscript needed, any opset >= 17) where this
PyTorch still has it, else the ``torch.export``-based one. The batch dimension is dynamic. A model of
several inputs (a tuple or a dict, nested lists of tensors included: torchvision's detectors take a list
of images) or several outputs (tuples, lists, dicts, named tuples, nested) is exported with every input
and every output tensor named (``io_names``).
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amc.errors import AmcError
from amc.io import atomic_path
from amc.layers import ExampleInputs, call_model, flat_outputs, map_inputs

INPUT, OUTPUT = "input", "logits"  # the names of one input and one output


class _Flat(nn.Module):
    """``model`` taking its inputs positionally (a dict's values in key order) and returning the flat
    tuple of its output tensors (``amc.layers.flat_outputs``): the form an ONNX graph has."""

    def __init__(self, model: nn.Module, keys: list[str] | None) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs: ExampleInputs = dict(zip(self.keys, xs, strict=True)) if self.keys is not None else xs
        return tuple(flat_outputs(call_model(self.model, inputs)))


def _input_leaves(model: nn.Module, example_inputs: ExampleInputs) -> list[tuple[str, torch.Tensor, bool]]:
    """Every input tensor in the order the ONNX graph takes them (nested lists flattened), with its name
    and whether its first dimension is a batch (a top-level tensor; not one image of a list)."""
    if isinstance(example_inputs, torch.Tensor):
        return [(INPUT, example_inputs, True)]
    if isinstance(example_inputs, dict):
        named = list(example_inputs.items())
    else:
        params = [n for n, p in inspect.signature(model.forward).parameters.items()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        named = [(params[i] if i < len(params) else f"input_{i}", v) for i, v in enumerate(example_inputs)]
    return [(n, t, isinstance(v, torch.Tensor)) for k, v in named
            for n, t in flat_outputs(v, named=True, prefix=str(k))]


def io_names(model: nn.Module, example_inputs: ExampleInputs) -> tuple[list[str], list[str]]:
    """The ONNX names of the inputs and outputs of ``model`` on ``example_inputs``. Inputs: ``input``
    for one tensor, a dict's keys, else the forward's parameter names (a list of tensors, as
    torchvision's detectors take images: ``images.0``, ``images.1``); outputs: ``logits`` for one
    tensor, else their paths in the output (``out``, ``boxes.0``: dict keys, named-tuple fields, list
    positions; under ``output.`` when the model returns a plain tuple or list: ``output.0``, ``output.1.2``,
    as YOLO models return ``(predictions, [feature maps])``)."""
    ins = [n for n, _, _ in _input_leaves(model, example_inputs)]
    with torch.no_grad():
        out = call_model(model, example_inputs)
    if isinstance(out, torch.Tensor):
        return ins, [OUTPUT]
    # a plain tuple's or list's paths start with a position, and an ONNX (TorchScript) value named by a
    # number alone is invalid: ``output.0``, ``output.1.2`` there
    positional = isinstance(out, (tuple, list)) and not hasattr(out, "_fields")
    return ins, [n for n, _ in flat_outputs(out, named=True, prefix="output" if positional else "")]


def _positional(example_inputs: ExampleInputs) -> tuple[Any, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs.values()) if isinstance(example_inputs, dict) else tuple(example_inputs)


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] = (1, 3, 32, 32),
                opset: int = 17, example_inputs: ExampleInputs | None = None) -> Path:
    """Export ``model`` (a CPU fp32 copy in eval mode; the argument is untouched) to ``path``.

    ``example_inputs`` (a tensor, a tuple or a dict of tensors; default a random tensor of
    ``input_shape``) set the graph's inputs; a model returning tuples, lists, dicts or named tuples is
    exported with one ONNX output per tensor, named by ``io_names``. The batch dimension is dynamic."""
    if opset < 17:
        raise AmcError(f"ONNX opset must be >= 17, got {opset}")
    path = Path(path)
    work = copy.deepcopy(model).float().cpu().eval()
    x = map_inputs(example_inputs, lambda t: t.detach().cpu()) if example_inputs is not None \
        else torch.randn(*input_shape)
    ins, outs = io_names(work, x)
    simple = isinstance(x, torch.Tensor) and outs == [OUTPUT]
    target = work if simple else _Flat(work, list(x) if isinstance(x, dict) else None)
    args = _positional(x)
    axes = {**{n: {0: "batch"} for n, _, batched in _input_leaves(work, x) if batched},
            **{n: {0: "batch"} for n in outs}}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(target, args, str(tmp), opset_version=opset, dynamo=False,
                              input_names=ins, output_names=outs, dynamic_axes=axes)
        except (TypeError, RuntimeError) as e:  # a PyTorch without the TorchScript exporter
            if "dynamo" not in str(e) and "TorchScript" not in str(e):
                raise
            torch.onnx.export(target, args, str(tmp), opset_version=opset, dynamo=True,
                              input_names=ins, output_names=outs,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}} if simple else None)
    return path


def ort_session(path: str | os.PathLike, threads: int = 1, device: str = "cpu"):
    """An onnxruntime ``InferenceSession`` with ``threads`` intra-op threads (1 inter-op)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise AmcError("onnxruntime here has no CUDA execution provider; use --device cpu")
        providers = ["CUDAExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


def check_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] = (2, 3, 32, 32),
               atol: float = 1e-4, seed: int = 0, example_inputs: ExampleInputs | None = None) -> float:
    """Max |onnxruntime - PyTorch| over every output on a random batch (of ``input_shape``, or shaped like
    ``example_inputs``); raises ``AmcError`` above ``atol``."""
    g = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g).to(t.dtype) if t.is_floating_point() else t.cpu()

    x = map_inputs(example_inputs, rand) if example_inputs is not None else torch.randn(*input_shape, generator=g)
    work = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        ref = [t.numpy() for t in flat_outputs(call_model(work, x))]
    sess = ort_session(path)
    feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), flat_outputs(_positional(x)), strict=True)}
    outs = sess.run(None, feed)
    if len(outs) != len(ref):
        raise AmcError(f"{path} has {len(outs)} outputs, the model returns {len(ref)} tensors")
    for i, (o, r) in enumerate(zip(outs, ref, strict=True)):
        if o.shape != r.shape:
            raise AmcError(f"onnxruntime's output {i} of {path} has shape {tuple(o.shape)}, PyTorch's "
                           f"{tuple(r.shape)}")
    diff = max((float(np.abs(o - r).max()) if r.size else 0.0 for o, r in zip(outs, ref, strict=True)), default=0.0)
    if not diff <= atol:
        raise AmcError(f"onnxruntime output differs from PyTorch by {diff:.3g} (> {atol:g}) for {path}")
    return diff
