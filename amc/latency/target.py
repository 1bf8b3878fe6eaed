"""Where a latency is measured or predicted: one ``Target`` (device, runtime, threads, batch, input, layout).

Every measurement (``amc.latency.measure``, the paired measurement ``amc.latency.paired``), every
prediction (``amc.latency.LatencyTable``) and every record of one (summary.json, the recipe's
``latency_device``) names its target, so two figures compare only when their targets are equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch

from amc.errors import AmcError

RUNTIMES = ("torch", "onnxruntime", "cuda")  # eager PyTorch on the CPU, ONNX Runtime on the CPU, PyTorch on CUDA
LAYOUTS = ("contiguous", "channels_last")
Runtime = Literal["torch", "onnxruntime", "cuda"]
Layout = Literal["contiguous", "channels_last"]


@dataclass(frozen=True)
class Target:
    """The machine and the way a model runs on it when its latency is taken.

    ``runtime``: ``"torch"`` (eager PyTorch, float32, ``inference_mode``, on ``device``, the CPU by
    default), ``"onnxruntime"`` (the model exported to ONNX, an ``InferenceSession`` on the CPU with
    ``threads`` intra-op threads) or ``"cuda"`` (PyTorch on a CUDA device: bf16 autocast,
    channels_last, CUDA events; ``cuda_graph`` replays a captured graph so the device alone is timed).
    ``threads``: CPU intra-op threads; ``batch`` and ``input_shape`` (one input, without the batch)
    make the input; ``layout``: the CPU memory layout of the weights and input.
    """

    device: str = "cpu"
    runtime: Runtime = "torch"
    threads: int = 1
    batch: int = 1
    input_shape: tuple[int, ...] = (3, 32, 32)
    layout: Layout = "contiguous"
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise AmcError(f"unknown latency runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        if self.layout not in LAYOUTS:
            raise AmcError(f"unknown memory layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if self.threads < 1 or self.batch < 1:
            raise AmcError(f"a latency target needs threads >= 1 and batch >= 1, got {self.threads}, {self.batch}")
        if not self.input_shape or any(int(d) < 1 for d in self.input_shape):
            raise AmcError(f"a latency target needs a positive input shape, got {self.input_shape}")
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if (self.runtime == "cuda") != (torch.device(self.device).type == "cuda"):
            raise AmcError(f"runtime {self.runtime!r} does not run on device {self.device!r} "
                           "(cuda runs on a CUDA device; torch and onnxruntime on the CPU)")

    @classmethod
    def of(cls, device: str | torch.device = "cpu", backend: str = "torch", **kw) -> Target:
        """The target of the older ``(device, backend)`` arguments: PyTorch on a CUDA device is ``cuda``."""
        dev = torch.device(device)
        runtime = "cuda" if dev.type == "cuda" and backend == "torch" else backend
        return cls(device=str(dev), runtime=runtime, **kw)  # type: ignore[arg-type]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def with_input(self, input_shape: tuple[int, ...]) -> Target:
        """The same target on inputs of another shape (one input, without the batch)."""
        return replace(self, input_shape=tuple(input_shape))

    def describe(self) -> str:
        """One line, e.g. ``"cpu torch 1 thread bs1 3x32x32 contiguous"``."""
        shape = "x".join(str(d) for d in self.input_shape)
        where = f"{self.device} {self.runtime}" + (" graph" if self.cuda_graph and self.runtime == "cuda" else "")
        threads = f" {self.threads} thread{'s' if self.threads > 1 else ''}" if self.runtime != "cuda" else ""
        return f"{where}{threads} bs{self.batch} {shape} {self.layout}"

    def row(self) -> dict[str, object]:
        """The fields as JSON-ready values (summary.json's ``latency_target``)."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out
