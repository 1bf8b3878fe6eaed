"""Weights without pickle: ``.pt`` state dicts via ``weights_only=True``, or ``.safetensors``.

Every failure (missing, truncated, bit-flipped, pickled module, other architecture) becomes one
``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from amc.errors import CheckpointError


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_zip_crc(path: Path) -> None:
    """torch.load does not check the zip's CRC32s, so a flipped bit in tensor data loads silently."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt, truncated or not a weights file "
                              f"({e})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: CRC check failed for record {bad!r} (damaged copy?)")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict (``.pt`` via ``weights_only=True``, or ``.safetensors``); floats to fp32."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory: {path}")
    if zipfile.is_zipfile(path):
        _verify_zip_crc(path)
    from safetensors import SafetensorError  # a truncated or garbled .safetensors raises this, not OSError

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, SafetensorError, RuntimeError, EOFError, OSError,
            ValueError, KeyError, AttributeError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt, truncated or not a weights file ({first[:160]})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Load strictly, turning missing/unexpected keys and shape mismatches into one clear error."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise CheckpointError(
            f"{where} does not fit model {type(model).__name__}: " + "; ".join(parts)
            + " — is it a checkpoint of another architecture?"
        )
    model.load_state_dict(sd, strict=True)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    load_state_dict_checked(model, read_state_dict(path), where=f"checkpoint {path}")
    return model
