"""Size and sparsity as the seed lab counts them: every parameter at 32 bits, zeros free when sparse."""

from __future__ import annotations

from torch import nn

from amc.layers import layer_weight, prunable_names

BITS = 32
MiB = 8 * 1024 * 1024


def dense_size_bits(model: nn.Module, bits: int = BITS) -> int:
    """All parameters, zeros included, at ``bits`` each."""
    return sum(p.numel() for p in model.parameters()) * bits


def sparse_size_bits(model: nn.Module, bits: int = BITS) -> int:
    """Non-zero parameters at ``bits`` each (the lab's measure of a fine-grained pruned model)."""
    return sum(int(p.count_nonzero()) for p in model.parameters()) * bits


def size_fraction(model: nn.Module, dense_bits: int | None = None) -> float:
    """Sparse size over the dense model's size (``dense_bits`` of the original, if it had more params)."""
    return sparse_size_bits(model) / (dense_bits if dense_bits is not None else dense_size_bits(model))


def layer_sparsity(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """Share of zero weights in each prunable layer's weight tensor."""
    out = {}
    for name in names if names is not None else prunable_names(model):
        w = layer_weight(model, name)
        out[name] = 1.0 - int(w.count_nonzero()) / w.numel()
    return out


def global_sparsity(model: nn.Module, names: list[str] | None = None) -> float:
    """Share of zero weights over all prunable layers' weights together."""
    zeros = total = 0
    for name in names if names is not None else prunable_names(model):
        w = layer_weight(model, name)
        zeros += w.numel() - int(w.count_nonzero())
        total += w.numel()
    return zeros / max(total, 1)
