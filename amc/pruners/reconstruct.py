"""Least-squares reconstruction after channel pruning (AMC's and ThiNet's recovery step).

When a layer loses input channels, its remaining weights no longer produce what the dense
layer produced. Reconstruction refits them: for every conv/linear layer whose input channels
were removed, in registration order, sample output positions on a few hundred training images,
take the layer's input in the *pruned* model (earlier layers already refitted, so their errors
are compensated) and the dense layer's output at the kept output channels, and solve the ridge
regression ``min_W ||X W - Y||^2 + lambda ||W||^2``. The dense targets are pre-BatchNorm outputs,
so the BatchNorm statistics that follow stay valid.

Only ordinary convolutions (``groups == 1``, zero padding) and linear layers are refitted;
others are left as they are and named in the returned notes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from amc.pruners.channel import ChannelPlan, ChannelTable, channel_table, removed_positions


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is skipped."""


@dataclass
class ReconstructionReport:
    """Per refitted layer: relative output error on the sampled positions before and after."""

    layers: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _kept_outputs(plan: ChannelPlan, table: ChannelTable, module: str, size: int) -> list[int]:
    removed = {i for root, kept in plan.keep.items()
               for item, idxs in removed_positions(table.group(root), kept)
               if item.module == module and item.role == "out" for i in idxs}
    return [i for i in range(size) if i not in removed]


def _capture(model: nn.Module, name: str, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input (``want='in'``) or output of ``model.<name>`` for batch ``x``; stops the forward there."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        got.append((inp[0] if want == "in" else out).detach().float())
        raise _Stop

    h = model.get_submodule(name).register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if not got:
        raise RuntimeError(f"layer {name} was not called in the forward pass")
    return got[0]


def _rows(mod: nn.Module, x: torch.Tensor, y: torch.Tensor, positions: int,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression rows: ``positions`` sampled output locations per image -> (patches, targets)."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    assert isinstance(mod, nn.Conv2d)
    n, c = x.shape[:2]
    kh, kw = mod.kernel_size
    sh, sw = mod.stride
    dh, dw = mod.dilation
    ph, pw = (int(v) for v in mod.padding)  # string padding is refused by the caller
    ho, wo = y.shape[2:]
    p = min(positions, ho * wo)
    flat = torch.stack([torch.randperm(ho * wo, generator=gen)[:p] for _ in range(n)]).to(x.device)
    oh, ow = flat // wo, flat % wo  # (n, p)
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # (n, H, W, c)
    rows = (oh * sh)[:, :, None, None] + (torch.arange(kh, device=x.device) * dh)[None, None, :, None]
    cols = (ow * sw)[:, :, None, None] + (torch.arange(kw, device=x.device) * dw)[None, None, None, :]
    ni = torch.arange(n, device=x.device)[:, None, None, None]
    patches = xp[ni, rows, cols]  # (n, p, kh, kw, c)
    patches = patches.permute(0, 1, 4, 2, 3).reshape(n * p, c * kh * kw)
    targets = y.flatten(2).gather(2, flat[:, None, :].expand(-1, y.shape[1], -1))  # (n, cout, p)
    return patches, targets.permute(0, 2, 1).reshape(n * p, -1)


@torch.no_grad()
def reconstruct(dense: nn.Module, small: nn.Module, plan: ChannelPlan,
                loader: Iterable[tuple[torch.Tensor, torch.Tensor]], images: int = 1024,
                positions: int = 16, ridge: float = 1e-3, seed: int = 0,
                table: ChannelTable | None = None,
                dense_outputs: dict[tuple[str, int], torch.Tensor] | None = None) -> ReconstructionReport:
    """Refit, IN PLACE, the weights of ``small`` (``prune_channels(dense, plan)``) whose input
    channels were removed, so that each such layer reproduces the dense layer's kept outputs.

    ``images`` training images (from ``loader``, without augmentation preferably) supply
    ``positions`` sampled output locations each (more where a layer has more unknowns: four rows
    per unknown when the feature map has the positions); ``ridge`` is relative to the mean
    diagonal of ``X^T X``. A layer with fewer samples than unknowns, or whose fit would not lower
    the error, is left as pruned with a note. Returns each refitted layer's relative error
    (||XW - Y|| / ||Y|| on the samples) before and after. ``dense_outputs``, a dict kept by a caller that
    reconstructs many pruned copies of one dense model from the same ``loader`` (a search's reward), holds
    the dense layers' outputs per (layer, batch) across calls: they do not depend on the pruning.
    """
    table = table or channel_table(dense)
    dev = next(small.parameters()).device
    batches: list[torch.Tensor] = []
    seen = 0
    for x, _ in loader:
        batches.append(x[: images - seen].to(dev))
        seen += len(batches[-1])
        if seen >= images:
            break
    report = ReconstructionReport()
    was = dense.training, small.training
    dense.eval()
    small.eval()
    try:
        for name in table.names:
            mod_s, mod_d = small.get_submodule(name), dense.get_submodule(name)
            if not isinstance(mod_s, nn.Conv2d | nn.Linear) or not isinstance(mod_d, nn.Conv2d | nn.Linear):
                continue
            if mod_s.weight.shape[1] == mod_d.weight.shape[1]:  # no input channel removed (depthwise too)
                continue
            if isinstance(mod_s, nn.Conv2d) and (mod_s.groups != 1 or mod_s.padding_mode != "zeros"
                                                 or isinstance(mod_s.padding, str)):
                report.notes.append(f"{name}: grouped, string-padded or non-zero-padded conv left as pruned")
                continue
            keep_out = torch.tensor(_kept_outputs(plan, table, name, mod_d.weight.shape[0]), device=dev)
            _refit(name, mod_s, dense, small, batches, keep_out, positions, ridge, seed, report, dense_outputs)
    finally:
        dense.train(was[0])
        small.train(was[1])
    return report


def _refit(name: str, mod: nn.Conv2d | nn.Linear, dense: nn.Module, small: nn.Module,
           batches: list[torch.Tensor], keep_out: torch.Tensor, positions: int, ridge: float, seed: int,
           report: ReconstructionReport, dense_outputs: dict[tuple[str, int], torch.Tensor] | None = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = mod.weight
    bias = mod.bias is not None
    feats = w[0].numel() + int(bias)
    # at least four regression rows per unknown where the feature maps have the positions for it
    images = sum(len(x) for x in batches)
    positions = max(positions, -(-4 * feats // max(images, 1)))
    rows = 0
    xtx = torch.zeros(feats, feats, dtype=torch.float64, device=w.device)
    xty = torch.zeros(feats, w.shape[0], dtype=torch.float64, device=w.device)
    yty = torch.zeros((), dtype=torch.float64, device=w.device)
    for i, x in enumerate(batches):
        inp = _capture(small, name, x, "in")
        kept = None if dense_outputs is None else dense_outputs.get((name, i))
        if kept is None or len(kept) != len(x):
            kept = _capture(dense, name, x, "out")
            if dense_outputs is not None:
                dense_outputs[(name, i)] = kept
        tgt = kept.index_select(1, keep_out)
        a, b = _rows(mod, inp, tgt, positions, gen)
        if bias:
            a = torch.cat([a, torch.ones(len(a), 1, device=a.device)], 1)
        rows += len(a)
        a64, b64 = a.double(), b.double()
        xtx += a64.T @ a64
        xty += a64.T @ b64
        yty += (b64 * b64).sum()
    old = w.reshape(w.shape[0], -1).T.double()
    if bias:
        old = torch.cat([old, mod.bias.double()[None]], 0)  # type: ignore[union-attr]
    lam = ridge * float(xtx.diagonal().mean()) + 1e-12
    new = torch.linalg.solve(xtx + lam * torch.eye(feats, dtype=xtx.dtype, device=xtx.device), xty)

    def err(m: torch.Tensor) -> float:  # ||A m - B||^2 = m'A'Am - 2 m'A'B + B'B
        sq = (m * (xtx @ m)).sum() - 2 * (m * xty).sum() + yty
        return float(sq.clamp_min(0).sqrt() / yty.sqrt().clamp_min(1e-30))

    before, after = err(old), err(new)
    if rows < feats or not after < before:
        report.notes.append(f"{name}: left as pruned ({rows} samples for {feats} unknowns, relative error "
                            f"{before:.3f} -> {after:.3f} on them); more images would refit it")
        return
    report.layers[name] = (before, after)
    if bias:
        mod.bias.copy_(new[-1].to(mod.bias.dtype))  # type: ignore[union-attr]
        new = new[:-1]
    w.copy_(new.T.reshape(w.shape).to(w.dtype))
