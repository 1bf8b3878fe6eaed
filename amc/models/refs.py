"""Model references, resolved in one place.

A reference is a string a recipe can store and rebuild from:

* ``vgg8``, ``resnet20``, ``resnet56`` or ``zoo:resnet20`` — the CIFAR zoo (:data:`amc.models.zoo.MODELS`)
* ``torchvision:mobilenet_v2`` — any ``torchvision.models.list_models()`` name (a bare torchvision
  name such as ``mobilenet_v2`` still works, as it did before references existed)
* ``timm:resnet18`` — any ``timm.list_models()`` name, built with ``pretrained=False``
* ``package.module:factory`` — the user's own code, imported with importlib; the factory is called
  with ``num_classes=`` when it accepts it

Every model is built with random weights (nothing is downloaded); ``weights=`` loads a weights-only
``.pt`` state dict or a ``.safetensors`` file, never a pickle::

    model = resolve_model("timm:resnet18", num_classes=10, weights="r18.safetensors")
    ref = ModelRef.parse("torchvision:resnet18"); str(ref)  # "torchvision:resnet18", rebuilds the same
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.errors import CheckpointError
from amc.models.checkpoints import load_checkpoint, load_state_dict_checked, read_state_dict
from amc.models.zoo import MODELS

SOURCES = ("zoo", "torchvision", "timm", "python")
KNOWN_FORMS = ("a zoo name (vgg8, resnet20, resnet56, or zoo:NAME)", "torchvision:NAME", "timm:NAME",
               "package.module:factory")


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def _timm_knows(name: str) -> bool:
    try:
        import timm
    except ImportError:
        raise CheckpointError(f"timm:{name} needs the timm package (pip install timm)") from None
    return bool(timm.is_model(name))


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from: ``source`` (zoo, torchvision, timm, python) and ``name``.

    ``str(ref)`` is the canonical string (``zoo:resnet20``, ``timm:resnet18``, ``pkg.mod:factory``);
    ``ModelRef.parse(str(ref)) == ref``.
    """

    source: str
    name: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise CheckpointError(f"unknown model source {self.source!r}; known: {', '.join(SOURCES)}")

    def __str__(self) -> str:
        return self.name if self.source == "python" else f"{self.source}:{self.name}"

    @classmethod
    def parse(cls, ref: str | ModelRef) -> ModelRef:
        """The reference a string names; one ``CheckpointError`` naming the known forms if none."""
        if isinstance(ref, ModelRef):
            return ref
        text = str(ref).strip()
        prefix, sep, rest = text.partition(":")
        if sep and prefix in ("zoo", "torchvision", "timm"):
            known = (rest in MODELS if prefix == "zoo" else rest in _torchvision_names() if prefix == "torchvision"
                     else _timm_knows(rest))
            if not known:
                raise CheckpointError(f"unknown model {text!r}: {prefix} has no model {rest!r}")
            return cls(prefix, rest)
        if sep and prefix and rest.isidentifier() and all(p.isidentifier() for p in prefix.split(".")):
            return cls("python", text)
        if not sep and text in MODELS:
            return cls("zoo", text)
        if not sep and text in _torchvision_names():
            return cls("torchvision", text)
        raise CheckpointError(f"unknown model {text!r}; known forms: {', '.join(KNOWN_FORMS)}")

    def build(self, num_classes: int | None = None, input_size: Sequence[int] | None = None) -> nn.Module:
        """A fresh model with random weights (``num_classes=None``: the source's default)."""
        if self.source == "zoo":
            factory = MODELS.get(self.name)
            if factory is None:  # the zoo dict may have changed since parsing
                raise CheckpointError(f"unknown model {self.name!r}; known forms: {', '.join(KNOWN_FORMS)}")
            return factory() if num_classes is None else factory(num_classes=num_classes)
        if self.source == "torchvision":
            return _build_torchvision(self.name, num_classes, input_size)
        if self.source == "timm":
            return _build_timm(self.name, num_classes, input_size)
        return _build_python(self.name, num_classes)


def _hw(input_size: Sequence[int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    size = tuple(int(s) for s in input_size)
    return (size[-2], size[-1]) if len(size) >= 2 else (size[0], size[0])


def _build_torchvision(name: str, num_classes: int | None, input_size: Sequence[int] | None) -> nn.Module:
    import torchvision

    kw: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    hw = _hw(input_size)
    if hw is not None and name.startswith("vit_"):  # position embeddings are sized for the image
        kw["image_size"] = hw[0]
    if hw is not None and name.startswith("maxvit"):
        kw["input_size"] = hw
    try:
        return torchvision.models.get_model(name, weights=None, **kw)
    except ValueError as e:
        raise CheckpointError(f"cannot build torchvision:{name}: {e}") from None


def _build_timm(name: str, num_classes: int | None, input_size: Sequence[int] | None) -> nn.Module:
    import timm

    kw: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    hw = _hw(input_size)
    if hw is not None:  # ViT / Swin / Mixer size their position tables by img_size; CNNs do not take it
        try:
            return timm.create_model(name, pretrained=False, img_size=hw, **kw)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=False, **kw)


def _accepts(fn: Callable[..., Any], arg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == arg or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _build_python(ref: str, num_classes: int | None) -> nn.Module:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the user's module raises on import
        raise CheckpointError(f"model {ref!r}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CheckpointError(f"model {ref!r}: {module_name} has no callable {attr!r}")
    kw = {"num_classes": num_classes} if num_classes is not None and _accepts(factory, "num_classes") else {}
    try:
        model = factory(**kw)
    except Exception as e:
        raise CheckpointError(f"model {ref!r}: the factory raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"model {ref!r}: the factory returned a {type(model).__name__}, not an nn.Module")
    return model


def _classes_in_weights(model: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(model's, weights') class count when the only shape mismatches are a head's output rows."""
    own = model.state_dict()
    bad = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if not bad:
        return None
    pairs = set()
    for k in bad:
        a, b = own[k].shape, sd[k].shape
        if len(a) != len(b) or len(a) == 0 or a[1:] != b[1:]:
            return None
        pairs.add((int(a[0]), int(b[0])))
    return next(iter(pairs)) if len(pairs) == 1 else None


def resolve_model(ref: str | ModelRef, num_classes: int | None = None, weights: str | os.PathLike | None = None,
                  input_size: Sequence[int] | None = None) -> nn.Module:
    """Build the model ``ref`` names (see the module docstring), load ``weights`` if given, eval mode.

    ``num_classes=None`` keeps the source's default, or with ``weights`` the class count the weights
    hold; an explicit ``num_classes`` the weights do not fit is one ``CheckpointError``.
    ``input_size`` ((C, H, W) or (H, W)) sizes the models whose position tables depend on it (ViT,
    Swin, MaxViT); convolutional models ignore it.
    """
    model_ref = ModelRef.parse(ref)
    model = model_ref.build(num_classes, input_size)
    if weights is None:
        return model.eval()
    sd = read_state_dict(weights)
    classes = _classes_in_weights(model, sd)
    if classes is not None:
        _, held = classes
        if num_classes is not None:
            raise CheckpointError(f"weights {weights} are for {held} classes, but {model_ref} was built with "
                                  f"num_classes={num_classes}; pass num_classes={held} (--num-classes {held})")
        model = model_ref.build(held, input_size)
    load_state_dict_checked(model, sd, where=f"weights {weights}")
    return model.eval()


# --------------------------------------------------------------------------------------------
# today's callers: a name plus a checkpoint
# --------------------------------------------------------------------------------------------
def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A model by reference (the zoo, ``torchvision:``, ``timm:``, ``pkg.mod:factory``, or a bare
    torchvision name), random weights, ``num_classes`` outputs."""
    try:
        ref = ModelRef.parse(name)
    except CheckpointError as e:
        if ":" in name:
            raise
        known = [*sorted(MODELS), "<any torchvision classification model>", *KNOWN_FORMS[1:]]
        raise CheckpointError(f"unknown model {name!r}; known: {', '.join(known)}") from e
    return ref.build(num_classes)


def guess_model_name(path: str | os.PathLike) -> str | None:
    """``vgg8_dense.pt`` -> ``vgg8``: the zoo name a checkpoint's file name starts with, if any."""
    stem = Path(path).name.lower()
    for name in sorted(MODELS, key=len, reverse=True):
        if stem.startswith(name):
            return name
    return None


def resolve_arch(name: str | None, checkpoint: str | os.PathLike | None) -> str:
    """``name``, or the zoo name guessed from the checkpoint's file name; a clear error if neither."""
    if name is not None:
        return name
    if checkpoint is None:
        raise CheckpointError("give a model name or a checkpoint")
    guessed = guess_model_name(checkpoint)
    if guessed is None:
        raise CheckpointError(f"cannot tell the architecture of {checkpoint}; pass --model NAME")
    return guessed


def load_model(name: str | None, checkpoint: str | os.PathLike | None, num_classes: int = 10) -> nn.Module:
    """Build ``name`` (guessed from the checkpoint's file name if None) and load the checkpoint."""
    model = build_model(resolve_arch(name, checkpoint), num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()
