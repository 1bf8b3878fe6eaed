"""ONNX export of a (pruned) model, written atomically, and a check against onnxruntime.

Uses the TorchScript-based exporter (fast, no onnxscript needed, any opset >= 17) where this
PyTorch still has it, else the ``torch.export``-based one. The batch dimension is dynamic.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from amc.errors import AmcError
from amc.io import atomic_path

INPUT, OUTPUT = "input", "logits"


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] = (1, 3, 32, 32),
                opset: int = 17) -> Path:
    """Export ``model`` (a CPU fp32 copy in eval mode; the argument is untouched) to ``path``."""
    if opset < 17:
        raise AmcError(f"ONNX opset must be >= 17, got {opset}")
    path = Path(path)
    work = copy.deepcopy(model).float().cpu().eval()
    x = torch.randn(*input_shape)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(work, (x,), str(tmp), opset_version=opset, dynamo=False,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except (TypeError, RuntimeError) as e:  # a PyTorch without the TorchScript exporter
            if "dynamo" not in str(e) and "TorchScript" not in str(e):
                raise
            torch.onnx.export(work, (x,), str(tmp), opset_version=opset, dynamo=True,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
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
               atol: float = 1e-4, seed: int = 0) -> float:
    """Max |onnxruntime - PyTorch| on a random batch; raises ``AmcError`` above ``atol``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, generator=g)
    work = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        ref = work(x).numpy()
    out = ort_session(path).run(None, {INPUT: x.numpy()})[0]
    diff = float(np.abs(out - ref).max())
    if not diff <= atol:
        raise AmcError(f"onnxruntime output differs from PyTorch by {diff:.3g} (> {atol:g}) for {path}")
    return diff
