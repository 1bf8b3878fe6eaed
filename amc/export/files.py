"""Exports that are really small, written atomically and read back without pickle.

Two formats:

1. **Physically smaller models** (channel pruning): ``save_pruned(model, arch, dir)`` writes
   ``model.safetensors`` (the state dict) and ``config.json`` (the architecture name and every
   Conv2d / BatchNorm / Linear / norm layer's constructor arguments). ``load_pruned(dir)`` builds the
   dense architecture with ``amc.models.build_model``, swaps each listed module for a fresh one of
   the saved shape (groups included, so depthwise convs work) and loads the weights strictly. The
   config holds the weights file's sha256, so a pair left inconsistent (say, an export interrupted
   between its two files) is refused with a clear error instead of loaded.

2. **Fine-grained sparse models**: ``save_sparse(model, path, dtype)`` writes one safetensors file
   in which each floating tensor is stored in whichever encoding is smallest:
   ``dense`` (all values), ``bitmask`` (non-zero values + the packed bitmask of where they are) or
   ``csr`` (non-zero values + column indices + row pointers over the tensor viewed as
   [dim 0, rest]); values in fp32 or fp16. The layout goes into the safetensors metadata.
   ``load_sparse(path)`` restores the dense-shaped model: bit-identical values for fp32 (a stored
   ``-0.0`` comes back as ``0.0``), fp16 rounding for fp16.

Every file goes through ``amc.io``: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from amc.errors import AmcError, CheckpointError
from amc.io import atomic_write_bytes, atomic_write_text
from amc.metrics import dense_size_bits, sparse_size_bits
from amc.models import build_model, load_state_dict_checked

PRUNED_FORMAT = "amc-pruned"
SPARSE_FORMAT = "amc-sparse"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
FP16_MAX = 65504.0  # largest finite float16
INT16_MAX = 32767  # CSR column indices fit int16 while a row has at most this many columns + 1


class ExportError(AmcError):
    """An export that cannot be written or read back."""


# ----------------------------------------------------------------------------- physically smaller


def _module_spec(mod: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments of a module whose shape pruning can change (None for the others)."""
    if isinstance(mod, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": mod.in_channels, "out_channels": mod.out_channels,
                "kernel_size": list(mod.kernel_size), "stride": list(mod.stride),
                "padding": mod.padding if isinstance(mod.padding, str) else list(mod.padding),
                "dilation": list(mod.dilation), "groups": mod.groups, "bias": mod.bias is not None,
                "padding_mode": mod.padding_mode}
    if isinstance(mod, nn.Linear):
        return {"type": "Linear", "in_features": mod.in_features, "out_features": mod.out_features,
                "bias": mod.bias is not None}
    if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
        return {"type": type(mod).__name__, "num_features": mod.num_features, "eps": mod.eps,
                "momentum": mod.momentum, "affine": mod.affine,
                "track_running_stats": mod.track_running_stats}
    if isinstance(mod, nn.LayerNorm):
        return {"type": "LayerNorm", "normalized_shape": list(mod.normalized_shape), "eps": mod.eps,
                "elementwise_affine": mod.elementwise_affine, "bias": getattr(mod, "bias", None) is not None}
    if isinstance(mod, nn.GroupNorm):
        return {"type": "GroupNorm", "num_groups": mod.num_groups, "num_channels": mod.num_channels,
                "eps": mod.eps, "affine": mod.affine}
    return None


def _build_module(spec: dict[str, Any]) -> nn.Module:
    s = dict(spec)
    kind = s.pop("type")
    if kind == "Conv2d":
        pad = s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"])
        return nn.Conv2d(s["in_channels"], s["out_channels"], tuple(s["kernel_size"]), tuple(s["stride"]), pad,
                         tuple(s["dilation"]), s["groups"], s["bias"], s["padding_mode"])
    if kind == "Linear":
        return nn.Linear(s["in_features"], s["out_features"], s["bias"])
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        return getattr(nn, kind)(s["num_features"], s["eps"], s["momentum"], s["affine"], s["track_running_stats"])
    if kind == "LayerNorm":
        return nn.LayerNorm(tuple(s["normalized_shape"]), s["eps"], s["elementwise_affine"], bias=s["bias"])
    if kind == "GroupNorm":
        return nn.GroupNorm(s["num_groups"], s["num_channels"], s["eps"], s["affine"])
    raise ExportError(f"config lists a module of unknown type {kind!r}")


def architecture_config(model: nn.Module, arch: str, num_classes: int = 10) -> dict[str, Any]:
    """Everything ``load_pruned`` needs to rebuild ``model``'s architecture, as JSON-able data."""
    modules = {name: spec for name, mod in model.named_modules() if name and (spec := _module_spec(mod))}
    return {"format": PRUNED_FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
            "num_classes": num_classes, "modules": modules}


def _state_tensors(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous().clone()  # safetensors wants contiguous tensors that share no memory
    return out


@dataclass(frozen=True)
class PrunedExport:
    directory: Path
    weights: Path
    config: Path
    file_bytes: int  # weights + config on disk
    params: int


def save_pruned(model: nn.Module, arch: str, directory: str | os.PathLike, num_classes: int = 10,
                dtype: str = "fp32") -> PrunedExport:
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` (weights first, each atomic)."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    directory = Path(directory)
    tensors = _state_tensors(model, DTYPES[dtype])
    _check_fp16(tensors, dtype)
    blob = st_save(tensors, metadata={"format": PRUNED_FORMAT, "arch": arch})
    config = architecture_config(model, arch, num_classes)
    config["dtype"] = dtype
    config["weights"] = WEIGHTS_FILE
    config["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    weights, cfg_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    atomic_write_bytes(weights, blob)
    atomic_write_text(cfg_path, json.dumps(config, indent=1) + "\n")
    return PrunedExport(directory, weights, cfg_path, weights.stat().st_size + cfg_path.stat().st_size,
                        sum(p.numel() for p in model.parameters()))


def load_pruned(directory: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild the architecture from ``config.json`` and load ``model.safetensors`` strictly (no pickle)."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {directory}: not a pruned-model export")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != PRUNED_FORMAT:
        raise CheckpointError(f"{cfg_path} is not an {PRUNED_FORMAT} config")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: unknown format_version {config.get('format_version')!r}; "
                              f"this amc reads {FORMAT_VERSION}")
    weights = directory / config.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise CheckpointError(f"weights file {weights} is missing")
    blob = weights.read_bytes()
    if hashlib.sha256(blob).hexdigest() != config.get("weights_sha256"):
        raise CheckpointError(f"{weights} does not match {cfg_path} (sha256 differs): an interrupted or "
                              "mixed export; export again")
    model = build_model(config["arch"], config.get("num_classes", 10))
    listed = config["modules"]
    have = {name for name, mod in model.named_modules() if name and _module_spec(mod) is not None}
    if have != set(listed):
        odd = sorted(have ^ set(listed))
        raise CheckpointError(f"{cfg_path} does not describe a {config['arch']}: modules differ "
                              f"(e.g. {', '.join(odd[:3])})")
    for name, spec in listed.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _build_module(spec))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in _load_blob(blob, weights).items()}
    load_state_dict_checked(model, sd, where=str(weights))
    if device is not None:
        model = model.to(device)
    return model.eval()


def _load_blob(blob: bytes, where: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(blob)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read {where}: {str(e).splitlines()[0][:160]}") from None


def _check_fp16(tensors: dict[str, torch.Tensor], dtype: str) -> None:
    if dtype != "fp16":
        return
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ExportError(f"{k} overflows fp16 (|x| > {FP16_MAX:g}); export with dtype fp32")


# ----------------------------------------------------------------------------- sparse (fine-grained)


def encoding_sizes(t: torch.Tensor, value_bytes: int) -> dict[str, int]:
    """Bytes each encoding of ``t`` takes (payload only, no header)."""
    n = t.numel()
    nnz = int(t.count_nonzero())
    rows = t.shape[0] if t.ndim >= 2 else 1
    cols = n // max(rows, 1)
    idx_bytes = 2 if cols <= INT16_MAX else 4
    return {"dense": n * value_bytes,
            "bitmask": nnz * value_bytes + (n + 7) // 8,
            "csr": nnz * (value_bytes + idx_bytes) + (rows + 1) * 4}  # int32 row pointers


def _encode(key: str, t: torch.Tensor, out: dict[str, torch.Tensor], value_bytes: int) -> str:
    sizes = encoding_sizes(t, value_bytes)
    enc = min(sizes, key=lambda e: (sizes[e], e != "dense"))  # ties go to dense, the simplest
    flat = t.flatten()
    if enc == "dense":
        out[f"{key}::dense"] = t.contiguous()
    elif enc == "bitmask":
        nz = flat != 0
        out[f"{key}::values"] = flat[nz].contiguous()
        out[f"{key}::mask"] = torch.from_numpy(np.packbits(nz.numpy()))
    else:
        rows = t.shape[0] if t.ndim >= 2 else 1
        m = t.reshape(rows, -1)
        nz = m != 0
        cols = m.shape[1]
        out[f"{key}::values"] = m[nz].contiguous()
        idx_dtype = torch.int16 if cols <= INT16_MAX else torch.int32
        out[f"{key}::indices"] = nz.nonzero()[:, 1].to(idx_dtype).contiguous()
        out[f"{key}::indptr"] = torch.cat([torch.zeros(1, dtype=torch.int64), nz.sum(1).cumsum(0)]).to(torch.int32)
    return enc


def _decode(key: str, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    shape, enc = tuple(info["shape"]), info["encoding"]
    n = int(np.prod(shape)) if shape else 1
    if enc in ("raw", "dense"):
        t = tensors[f"{key}::{enc}"]
    elif enc == "bitmask":
        vals = tensors[f"{key}::values"]
        bits = np.unpackbits(tensors[f"{key}::mask"].numpy(), count=n).astype(bool)
        t = torch.zeros(n, dtype=vals.dtype)
        t[torch.from_numpy(bits)] = vals
    elif enc == "csr":
        vals, idx = tensors[f"{key}::values"], tensors[f"{key}::indices"].long()
        ptr = tensors[f"{key}::indptr"].long()
        rows = len(ptr) - 1
        cols = n // max(rows, 1)
        row_of = torch.repeat_interleave(torch.arange(rows), ptr.diff())
        t = torch.zeros(rows, cols, dtype=vals.dtype)
        t[row_of, idx] = vals
    else:
        raise CheckpointError(f"tensor {key} has unknown encoding {enc!r}")
    return t.reshape(shape)


@dataclass(frozen=True)
class SparseExport:
    path: Path
    file_bytes: int  # real bytes on disk, header included
    lab_bits: int  # non-zero parameters x 32 bits (the lab's size measure)
    dense_bits: int  # every parameter x 32 bits
    dtype: str
    encodings: dict[str, str] = field(default_factory=dict)  # state-dict key -> dense / bitmask / csr / raw

    @property
    def lab_bytes(self) -> int:
        return self.lab_bits // 8

    @property
    def file_fraction(self) -> float:
        """Real file size over the dense fp32 parameters' size."""
        return 8 * self.file_bytes / self.dense_bits


def save_sparse(model: nn.Module, path: str | os.PathLike, dtype: str = "fp32", arch: str | None = None,
                num_classes: int = 10) -> SparseExport:
    """Write the whole state dict as one compact safetensors file (see the module docstring)."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    value_dtype = DTYPES[dtype]
    value_bytes = torch.finfo(value_dtype).bits // 8
    src = _state_tensors(model)
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    for key, t in src.items():
        if t.is_floating_point():
            v = t.to(value_dtype)
            if not bool(torch.isfinite(v).all()) and bool(torch.isfinite(t).all()):
                raise ExportError(f"{key} overflows {dtype} (|x| > {FP16_MAX:g}); export with dtype fp32")
            enc = _encode(key, v, tensors, value_bytes)
        else:
            enc = "raw"
            tensors[f"{key}::raw"] = t
        layout[key] = {"encoding": enc, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    meta = {"format": SPARSE_FORMAT, "format_version": str(FORMAT_VERSION), "dtype": dtype,
            "arch": arch or "", "num_classes": str(num_classes), "layout": json.dumps(layout)}
    path = Path(path)
    atomic_write_bytes(path, st_save(tensors, metadata=meta))
    return SparseExport(path, path.stat().st_size, sparse_size_bits(model), dense_size_bits(model), dtype,
                        {k: v["encoding"] for k, v in layout.items()})


def read_sparse_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The dense-shaped state dict (fp32 floats) of a sparse file, and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"sparse model file not found: {path}")
    blob = path.read_bytes()
    tensors = _load_blob(blob, path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if meta.get("format") != SPARSE_FORMAT:
        raise CheckpointError(f"{path} is not an {SPARSE_FORMAT} file")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: unknown format_version {meta.get('format_version')!r}")
    layout = json.loads(meta["layout"])
    state = {}
    for key, info in layout.items():
        t = _decode(key, info, tensors)
        state[key] = t.to(getattr(torch, info["dtype"])) if t.is_floating_point() else t
    return state, meta


def load_sparse(path: str | os.PathLike, arch: str | nn.Module | None = None) -> nn.Module:
    """Restore the dense-shaped model from ``save_sparse``'s file.

    ``arch``: an architecture name (default: the one stored in the file) or a model to load into
    (e.g. one rebuilt by ``load_pruned`` for a channel-pruned and then sparsified model).
    """
    state, meta = read_sparse_state(path)
    if isinstance(arch, nn.Module):
        model = arch
    else:
        name = arch or meta.get("arch")
        if not name:
            raise CheckpointError(f"{path} names no architecture; pass arch=")
        model = build_model(name, int(meta.get("num_classes", "10")))
    load_state_dict_checked(model, state, where=str(path))
    return model.eval()


# ----------------------------------------------------------------------------- one call for a run


def save_program(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] = (1, 3, 32, 32),
                 layout: str = "contiguous") -> Path:
    """A ``torch.export`` program (``.pt2``) of a CPU fp32 eval copy: it loads with
    ``torch.export.load(path).module()`` without the model's source code; its weights in the memory
    ``layout`` (``channels_last``: the 4-d ones, as the latency target runs them). Written atomically;
    ``ExportError`` when the model does not export (data-dependent control flow and the like)."""
    import copy

    from amc.io import atomic_open

    work = copy.deepcopy(model).cpu().float().eval()
    if layout == "channels_last":
        work = work.to(memory_format=torch.channels_last)
    x = torch.zeros((2, *input_shape[1:]))  # batch 2: export specialises sizes 0 and 1
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        try:  # any batch size
            program = torch.export.export(work, (x,), dynamic_shapes=({0: batch},))
        except Exception:  # a model whose code fixes the batch: the example's shape only
            program = torch.export.export(work, (torch.zeros(input_shape),))
    except Exception as e:  # torch.export raises many kinds (Unsupported, UserError, TypeError...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"the model does not export with torch.export ({type(e).__name__}: {first[:200]})") from None
    path = Path(path)
    with atomic_open(path, "wb") as f, warnings.catch_warnings():
        # torch.export's archive writer warns "No complete tensor found in the group!" for weights that share
        # storage; its concern is weights left off the CPU, and this program's copy is on the CPU: nothing the
        # user must act on, so it does not reach their terminal
        warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
        torch.export.save(program, f)
    return path


def export_compressed(model: nn.Module, arch: str, directory: str | os.PathLike, granularity: str,
                      dtype: str = "fp32", onnx: bool = True,
                      input_shape: tuple[int, ...] = (1, 3, 32, 32), num_classes: int = 10,
                      program: bool = False, layout: str = "contiguous") -> dict[str, Any]:
    """Write the files a user takes home for a compressed model; returns their paths and byte sizes.

    fine / nm: ``model.sparse.safetensors`` (compact sparse). channel: ``pruned/`` (safetensors +
    config). Both: ``model.onnx`` when ``onnx`` and ``amc.export.onnx`` is available, and with
    ``program`` a self-contained ``model.pt2`` (``torch.export``) where the model exports (else
    ``program_skipped`` says why; its weights in the memory ``layout``). ``pruned/`` rebuilds only models
    ``arch`` names a builder for.
    """
    directory = Path(directory)
    out: dict[str, Any] = {}
    if granularity == "channel":
        exp = save_pruned(model, arch, directory / "pruned", num_classes, dtype)
        out.update(pruned_dir=exp.directory, pruned_bytes=exp.file_bytes)
    else:
        sp = save_sparse(model, directory / "model.sparse.safetensors", dtype, arch, num_classes)
        out.update(sparse_path=sp.path, sparse_bytes=sp.file_bytes, lab_bytes=sp.lab_bytes,
                   dense_bytes=sp.dense_bits // 8)
    if onnx:
        try:
            from amc.export.onnx import export_onnx
        except ImportError:
            out["onnx_skipped"] = "amc.export.onnx is not available"
        else:
            onnx_path = directory / "model.onnx"
            export_onnx(model, onnx_path, input_shape=input_shape)
            out.update(onnx_path=onnx_path, onnx_bytes=onnx_path.stat().st_size)
    if program:
        try:
            pt2 = save_program(model, directory / "model.pt2", input_shape, layout)
        except ExportError as e:
            out["program_skipped"] = str(e)
        else:
            out.update(program_path=pt2, program_bytes=pt2.stat().st_size)
    return out


def export_files(model: nn.Module, arch: str, directory: str | os.PathLike, granularity: str, *, dtype: str,
                 onnx: bool, input_shape: tuple[int, ...], num_classes: int, one_tensor: bool = True,
                 task: Any = None, layout: str = "contiguous") -> dict[str, Any]:
    """``export_compressed``'s files for a compression; for a user's ``amc.Task`` the ONNX file on its example
    inputs (outputs named by their path in the output), and where an export fails, why (``onnx_skipped`` /
    ``program_skipped``). ``one_tensor``: the model takes one input tensor (``torch.export`` is taken on it);
    ``layout``: the latency target's memory layout, the program's weights'."""
    exported = export_compressed(model, arch, directory, granularity, dtype=dtype, onnx=onnx and task is None,
                                 input_shape=input_shape if one_tensor else (1,), num_classes=num_classes,
                                 program=one_tensor, layout=layout)
    if task is None:
        return exported
    if onnx:
        path = Path(directory) / "model.onnx"
        problem = task.export_onnx(model, path)
        if problem is None:
            exported.update(onnx_path=path, onnx_bytes=path.stat().st_size)
        else:
            exported["onnx_skipped"] = problem
    if not one_tensor:
        exported["program_skipped"] = "torch.export program not written: it is taken on one input tensor"
    return exported
