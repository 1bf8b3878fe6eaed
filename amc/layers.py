"""The layer table: every prunable layer (Conv2d, Linear) by dotted name, with shapes, params and MACs.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2 for multiply-accumulate
ops); input and output shapes from forward hooks on one example batch. The size arithmetic of
fine-grained pruning (``global_sparsity_for_size``, ``weights_to_remove``) lives here too, below both
the fine pruner and the weight criteria that use it. Every function takes the
input shape or the example inputs themselves; ``(1, 3, 32, 32)`` (one CIFAR image) is only the
default when neither is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.errors import PolicyError

PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # "conv", "dwconv" (depthwise / grouped) or "linear"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    params: int  # weight elements (the prunable ones)
    macs: int
    size_share: float  # this layer's weights as a share of all model parameters

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_channels, self.in_channels)
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight tensor of the layer ``name`` (a dotted module name)."""
    w = model.get_submodule(name).weight
    assert isinstance(w, torch.Tensor), f"{name} has no weight tensor"
    return w


def prunable_names(model: nn.Module) -> list[str]:
    """Dotted names of the Conv2d and Linear modules, in registration order."""
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def global_sparsity_for_size(model: nn.Module, size: float, names: list[str] | None = None) -> float:
    """The global sparsity of ``names`` (default: all prunable layers) whose non-zero parameters are
    ``size`` of the model's: the other parameters (BatchNorm, biases) stay, so the pruned weights go
    a little further than ``1 - size``. Not clamped: may fall outside [0, 1) for extreme sizes."""
    names = names if names is not None else prunable_names(model)
    total = count_params(model)
    weights = sum(layer_weight(model, n).numel() for n in names)
    return 1.0 - (size * total - (total - weights)) / weights


def weights_to_remove(model: nn.Module, size: float, names: list[str]) -> int:
    """How many of ``names``' weights to remove so that the model is ``size`` of its dense size (the
    count every size-targeted fine-grained pruner and weight criterion removes)."""
    s = global_sparsity_for_size(model, size, names)
    if not 0.0 <= s < 1.0:
        raise PolicyError(f"size {size} cannot be reached by pruning these layers (global sparsity {s:.4f})")
    return round(s * sum(layer_weight(model, n).numel() for n in names))


DEFAULT_INPUT_SHAPE = (1, 3, 32, 32)
ExampleInputs = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor] | dict[str, torch.Tensor]


def call_model(model: nn.Module, inputs: ExampleInputs) -> Any:
    """``model`` called on its example inputs: a tensor is ``model(x)``, a tuple or list ``model(*x)``,
    a dict ``model(**x)`` (the forms torch-pruning's ``build_dependency`` takes)."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    raise PolicyError(f"example inputs must be a tensor, a tuple or a dict of tensors, got {type(inputs).__name__}")


def map_inputs(inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``inputs`` in the same form with ``fn`` applied to every tensor, through nested lists, tuples and
    dicts (``lambda t: t.to(device)``, ``torch.clone``: a forward that adds into its input in place must
    not change the caller's); anything else is kept as it is."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map_inputs(t, fn) for t in inputs)
    if isinstance(inputs, dict):
        return {k: map_inputs(t, fn) for k, t in inputs.items()}
    return inputs


def input_shapes(inputs: ExampleInputs) -> tuple:
    """The shape of a tensor input; a tuple of shapes (in order, or in key order) for several inputs,
    nested as the inputs are (a list of images, as torchvision's detectors take)."""
    if isinstance(inputs, torch.Tensor):
        return tuple(inputs.shape)
    if isinstance(inputs, (tuple, list, dict)):
        return tuple(input_shapes(t) for t in (inputs.values() if isinstance(inputs, dict) else inputs))
    return (type(inputs).__name__,)


def input_key(inputs: ExampleInputs) -> tuple:
    """What identifies the inputs' form for a cache: their shapes, and the keys of a dict."""
    keys = tuple(inputs) if isinstance(inputs, dict) else ()
    return (type(inputs).__name__, keys, input_shapes(inputs))


def flat_outputs(out: Any, named: bool = False, prefix: str = "") -> list:
    """Every tensor of a model's output in order, through any nesting (tuple, list, dict, named tuple);
    with ``named``, ``(name, tensor)`` pairs named by their path: dict keys and named-tuple fields, list
    positions (``boxes.0``); a bare tensor is ``output``, a plain tuple's parts ``0``, ``1``..."""
    pairs: list[tuple[str, torch.Tensor]] = []

    def walk(o: Any, path: str) -> None:
        if isinstance(o, torch.Tensor):
            pairs.append((path or "output", o))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(o, tuple) and hasattr(o, "_fields"):
            for k, v in zip(o._fields, o, strict=True):
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(o, (tuple, list)):
            for i, v in enumerate(o):
                walk(v, f"{path}.{i}" if path else str(i))

    walk(out, prefix)
    return pairs if named else [t for _, t in pairs]


def output_shapes(out: Any) -> list[tuple[int, ...]]:
    """The shape of every tensor a model returned, in ``flat_outputs`` order."""
    return [tuple(t.shape) for t in flat_outputs(out)]


def stable_output_shapes(model: nn.Module, inputs: ExampleInputs) -> list[tuple[int, ...]] | None:
    """The output shapes of ``model`` on ``inputs`` (no grad) with every size that depends on the data
    read as -1 (``shape_change`` takes it as any size): the sizes that differ on a second forward on the
    inputs flipped along their last dimension (a detector's count of boxes kept). None when even the
    number of output tensors depends on the data."""
    def flip(t: torch.Tensor) -> torch.Tensor:
        return t.flip(-1) if t.is_floating_point() and t.ndim else t.clone()

    with torch.no_grad():
        first = output_shapes(call_model(model, map_inputs(inputs, torch.clone)))
        second = output_shapes(call_model(model, map_inputs(inputs, flip)))
    if len(first) != len(second):
        return None
    return [a if a == b or len(a) != len(b) else tuple(x if x == y else -1 for x, y in zip(a, b, strict=True))
            for a, b in zip(first, second, strict=True)]


def shape_change(want: list[tuple[int, ...]] | None, got: list[tuple[int, ...]]) -> str | None:
    """How the output shapes ``got`` differ from ``want`` (-1: any size; None: not compared), in words;
    None when they agree."""
    if want is None:
        return None
    if len(got) != len(want):
        return f"the model returns {len(got)} tensors, not {len(want)}"
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if len(w) != len(g) or any(a not in (-1, b) for a, b in zip(w, g, strict=True)):
            return f"output {i} changes its shape from {tuple(w)} to {g}"
    return None


def default_inputs(model: nn.Module, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
                   example_inputs: ExampleInputs | None = None) -> ExampleInputs:
    """``example_inputs`` as given, else zeros of ``input_shape`` on the model's device."""
    if example_inputs is not None:
        return example_inputs
    p = next(model.parameters(), None)
    return torch.zeros(tuple(input_shape), device=p.device if p is not None else torch.device("cpu"))


def example_batch(model: nn.Module, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
                  example_inputs: ExampleInputs | None = None) -> tuple[torch.Tensor, ...]:
    """The positional inputs of one forward: ``example_inputs`` as given, else zeros of ``input_shape``
    on the model's device (a dict of inputs is not positional: use ``call_model``)."""
    x = default_inputs(model, input_shape, example_inputs)
    if isinstance(x, dict):
        raise PolicyError("example inputs given as a dict are keyword inputs, not positional ones")
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
               example_inputs: ExampleInputs | None = None) -> tuple[int, dict[str, int]]:
    """Total MACs for one forward (``example_inputs``, else zeros of ``input_shape``) and the MACs
    of each leaf module by dotted name."""
    xs = default_inputs(model, input_shape, example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            call_model(model, map_inputs(xs, torch.clone))  # a forward may add into its input
    finally:
        model.train(was_training)
    counts = fc.get_flop_counts()
    per_module: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global":
            continue
        name = key.split(".", 1)[1] if "." in key else ""
        per_module[name] = sum(int(v) for v in ops.values()) // 2
    total = sum(int(v) for v in counts.get("Global", {}).values()) // 2
    return total, per_module


def layer_table(model: nn.Module, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
                example_inputs: ExampleInputs | None = None) -> list[LayerInfo]:
    """One ``LayerInfo`` per prunable layer, in the order the modules are registered, measured on
    ``example_inputs`` (else zeros of ``input_shape``)."""
    names = prunable_names(model)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name in names:
        def hook(mod, inp, out, name=name):
            first_in = inp[0] if inp and isinstance(inp[0], torch.Tensor) else None
            shapes[name] = (tuple(first_in.shape) if first_in is not None else (),
                            tuple(out.shape) if isinstance(out, torch.Tensor) else ())
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        _, macs = count_macs(model, input_shape, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    total_params = count_params(model)
    table = []
    for name in names:
        m = model.get_submodule(name)
        ins, outs = shapes.get(name, ((), ()))
        if isinstance(m, nn.Conv2d):
            kind = "dwconv" if m.groups > 1 else "conv"
            info = LayerInfo(name, kind, m.in_channels, m.out_channels, int(m.kernel_size[0]), int(m.stride[0]),
                             m.groups, tuple(ins[2:4]) if len(ins) == 4 else (0, 0),  # type: ignore[arg-type]
                             tuple(outs[2:4]) if len(outs) == 4 else (0, 0),  # type: ignore[arg-type]
                             m.weight.numel(), macs.get(name, 0), m.weight.numel() / total_params)
        else:
            assert isinstance(m, nn.Linear)
            info = LayerInfo(name, "linear", m.in_features, m.out_features, 1, 1, 1, (1, 1), (1, 1),
                             m.weight.numel(), macs.get(name, 0), m.weight.numel() / total_params)
        table.append(info)
    return table


def table_frame(table: list[LayerInfo]) -> pd.DataFrame:
    return pd.DataFrame([asdict(t) for t in table])
