"""The training memory layout, with a guard around a oneDNN bug in strided 1x1 convolutions.

Training runs ``channels_last`` (cuDNN and oneDNN convolutions are faster in it: a ResNet-20
training step on a 2-core CPU takes 0.23 s against 0.33 s contiguous). On the CPU one case must
not: oneDNN's 1x1 convolution backward-weights kernel (issue #6035 upstream, "writes past the rtus
workspace (nhwc, IC < ic_block)") overruns a workspace when a 1x1 convolution has a stride or
padding, fewer input channels per group than its channel block (8 on AVX2, 16 on AVX-512) and NHWC
tensors. The result is a hang, a crash, or silently wrong weight gradients (measured on an AVX2
machine: ``Conv2d(4, 32, 1, stride=2)`` weight gradient 98x off). Channel pruning makes exactly
such layers: the downsample shortcuts of a pruned ResNet.

``training_layout(model)`` puts every parameter in channels_last except the weights of those
convolutions, which stay contiguous; ``guarded(model)`` (a context manager, used by every CPU
training path) also feeds those convolutions contiguous inputs, so PyTorch routes them through
oneDNN's NCHW kernels, which are correct. ``AMC_CONV_GUARD=0`` turns the guard off (to show the
hazard; never in normal use).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

# oneDNN's widest channel block on x86 (AVX-512); AVX2's block is 8. Guarding below the widest on
# every CPU costs nothing measurable (these are a few thin shortcut layers) and needs no ISA probe.
BLOCK = 16


def guard_enabled() -> bool:
    return os.environ.get("AMC_CONV_GUARD", "1") != "0"


def is_hazard(module: nn.Module) -> bool:
    """A Conv2d that oneDNN's NHWC 1x1 backward-weights kernel gets wrong (see the module doc)."""
    if not isinstance(module, nn.Conv2d) or tuple(module.kernel_size) != (1, 1):
        return False
    strided = tuple(module.stride) != (1, 1) or module.padding not in ((0, 0), "valid")
    return strided and module.in_channels // module.groups < BLOCK


def hazards(model: nn.Module) -> list[str]:
    """Dotted names of the convolutions the guard keeps contiguous on the CPU."""
    return [name for name, m in model.named_modules() if is_hazard(m)]


def _on_cpu(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is None or p.device.type == "cpu"


def _protected(model: nn.Module) -> set[str]:
    return set(hazards(model)) if guard_enabled() and _on_cpu(model) else set()


@torch.no_grad()
def training_layout(model: nn.Module) -> nn.Module:
    """channels_last for every 4-d parameter and buffer, except the guarded convolutions' weights.

    Idempotent, and a tensor already in its layout is left as it is (its storage is kept), so a
    caller that shares the model's tensors (the evaluator's state dict) may call it first."""
    keep = _protected(model)
    for name, mod in model.named_modules():
        for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]:
            if t.dim() != 4:
                continue
            if name in keep:
                _to_nchw(t)
            elif not t.is_contiguous(memory_format=torch.channels_last):
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def _to_nchw(t: torch.Tensor) -> None:
    """``t`` (a 4-d parameter or buffer) in exact NCHW strides, in place: a 1x1 kernel passes
    ``is_contiguous()`` in both layouts, so the strides are compared."""
    if t.stride() != torch.empty_like(t, memory_format=torch.contiguous_format).stride():
        t.data = t.data.clone(memory_format=torch.contiguous_format)


@torch.no_grad()
def inference_layout(model: nn.Module) -> nn.Module:
    """``model`` (in place) with every 4-d parameter and buffer in the contiguous (NCHW) layout, as a
    model loaded from saved weights has it: the undoing of ``training_layout``. At batch 1 on one CPU
    thread the training layout ran a pruned ResNet-20 22% slower (1.36 against 1.12 ms), so the same
    architecture measured 0.49 of the dense latency before its finetune and 0.59-0.62 after."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.dim() == 4:
            _to_nchw(t)
    return model


def _contiguous_input(_m: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


@contextlib.contextmanager
def guarded(model: nn.Module) -> Iterator[nn.Module]:
    """Train ``model`` inside this block: the training layout, plus contiguous inputs for the
    guarded convolutions (removed again on exit, so the model the caller gets back has no hooks)."""
    training_layout(model)
    handles = [model.get_submodule(name).register_forward_pre_hook(_contiguous_input)
               for name in sorted(_protected(model))]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
