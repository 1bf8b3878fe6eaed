"""Plain training functions: ``evaluate``, ``finetune`` (masks kept), ``recalibrate_bn``.

channels_last (on the CPU with the guard of ``amc.cpuconv`` around oneDNN's strided 1x1 bug); on
CUDA also bf16 autocast. Pruned weights stay at exactly zero: masks are
re-applied after every optimiser step, so momentum and weight decay cannot revive them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from amc.cpuconv import guarded
from amc.errors import TrainingDiverged
from amc.layers import call_model, layer_weight, map_inputs
from amc.progress import finetune_steps

Masks = dict[str, torch.Tensor]  # dotted layer name -> bool/float mask shaped like its weight


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: float = 5.0  # fractional epochs allowed (steps = round(epochs * batches per epoch))
    lr: float = 0.01  # peak SGD learning rate: a tenth of the dense training's peak (0.2), it recovers
    # pruned models without undoing what the dense training learnt
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # as in the dense training
    label_smoothing: float = 0.1  # as in the dense training
    schedule: str = "cosine"  # "cosine" (to zero) or "constant"
    warmup_frac: float = 0.0  # share of steps with a linear warm-up
    max_steps: int | None = None  # cap, for quick recovery inside a search
    distill_weight: float = 0.0  # > 0 with a teacher: loss = (1 - w) * CE + w * T^2 * KL(teacher || student)
    distill_temperature: float = 4.0  # Hinton et al.'s usual softening


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate_full(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy. The loss still moves where accuracy has
    saturated (the shared checkpoints score ~100% on held-out train images they were trained on)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    total = 0
    with _autocast(device):
        for x, y in loader:
            out = model(x.to(device, non_blocking=True)).float()
            y = y.to(device)
            correct += (out.argmax(1) == y).sum()
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum")
            total += len(y)
    model.train(was_training)
    return int(correct) / max(total, 1), float(loss_sum) / max(total, 1)


def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in [0, 1]."""
    return evaluate_full(model, loader)[0]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable[Any], max_batches: int | None = None,
                   labelled: bool = True) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over ``loader`` (no weight change):
    (inputs, labels) batches, or with ``labelled=False`` batches of model inputs (a tensor, a tuple or a
    dict each, as a task's calibration gives them)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over the batches seen
    was_training = model.training
    model.train()
    device = model_device(model)
    try:
        with _autocast(device):
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x = batch[0] if labelled else batch
                # a forward may add into its input in place: the caller's batches stay as they were
                call_model(model, map_inputs(x, lambda t: t.to(device, non_blocking=True).clone()))
    finally:
        for bn, m in zip(bns, saved, strict=True):
            bn.momentum = m
        model.train(was_training)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks | None) -> None:
    """Zero every masked-out weight in place."""
    if not masks:
        return
    for name, mask in masks.items():
        w = layer_weight(model, name)
        w.mul_(mask.to(device=w.device, dtype=w.dtype))


@contextlib.contextmanager
def hold_masks(model: nn.Module, masks: Masks | None) -> Iterator[nn.Module]:
    """Keep pruned weights at zero while code the project does not control trains ``model`` (a
    user's own finetune loop): every masked layer re-applies its mask before each forward, and once
    more on exit, so whatever the optimiser wrote into a pruned weight never takes effect."""
    if not masks:
        yield model
        return

    def hook(name: str) -> Callable[[nn.Module, tuple], None]:
        def reapply(_m: nn.Module, _args: tuple) -> None:
            with torch.no_grad():
                w = layer_weight(model, name)
                w.mul_(masks[name].to(device=w.device, dtype=w.dtype))
        return reapply

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in masks]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        apply_masks(model, masks)


def _lr_factor(step: int, total: int, cfg: FinetuneConfig) -> float:
    warm = int(cfg.warmup_frac * total)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        t = (step - warm) / max(total - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; known: cosine, constant")


def finetune(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    cfg: FinetuneConfig = FinetuneConfig(),
    masks: Masks | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    teacher: nn.Module | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """SGD with a cosine schedule; masks re-applied after each step; a NaN/Inf loss raises.
    With ``teacher`` and ``cfg.distill_weight > 0``, the dense model's softened outputs are
    distilled into the pruned one (knowledge distillation) alongside the labels.

    ``loader`` must be re-iterable (one pass per epoch) and have ``len()``.
    ``on_step(step, total_steps, loss)`` reports progress; ``progress(message)`` gets about ten
    ``"finetune step 120/400 (loss 0.532), ETA 2m10s"`` messages (``amc.progress.finetune_steps``).
    Returns the last loss and the wall time.
    """
    if progress is not None:
        said, given = finetune_steps(progress), on_step

        def on_step(step: int, total: int, loss: float) -> None:
            said(step, total, loss)
            if given is not None:
                given(step, total, loss)

    with guarded(model):  # channels_last, except the strided 1x1 convolutions oneDNN gets wrong
        return _finetune(model, loader, cfg, masks, on_step, teacher)


def _finetune(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: FinetuneConfig,
              masks: Masks | None, on_step: Callable[[int, int, float], None] | None,
              teacher: nn.Module | None) -> dict[str, float]:
    device = model_device(model)
    per_epoch = len(loader)  # type: ignore[arg-type]
    total = max(1, round(cfg.epochs * per_epoch))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, cfg))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    apply_masks(model, masks)
    distill = teacher is not None and cfg.distill_weight > 0
    if distill:
        assert teacher is not None
        teacher.eval()
    temp = cfg.distill_temperature
    model.train()
    step, last = 0, float("nan")
    t0 = time.perf_counter()
    while step < total:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            with _autocast(device):
                out = model(x)
                loss = loss_fn(out, y.to(device))
                if distill:
                    with torch.no_grad():
                        soft = (teacher(x).float() / temp).log_softmax(1)  # type: ignore[misc]
                    kd = nn.functional.kl_div((out.float() / temp).log_softmax(1), soft, log_target=True,
                                              reduction="batchmean") * temp * temp
                    loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * kd
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at finetune step {step} "
                                       f"(lr {sched.get_last_lr()[0]:.3g}); try a lower learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            apply_masks(model, masks)
            step += 1
            if on_step is not None and (step % 10 == 0 or step == total):
                last = float(loss.detach())
                on_step(step, total, last)
            if step >= total:
                break
    model.eval()
    return {"steps": step, "last_loss": float(loss.detach()), "seconds": time.perf_counter() - t0}
