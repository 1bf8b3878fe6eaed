"""``amc export MODEL``: turn a pruned model into the files a user takes home.

MODEL is a dense-shaped checkpoint (``.pt`` / ``.safetensors``, e.g. what ``amc prune`` wrote; needs
``--model`` unless the file name tells) or a pruned-model folder (``config.json`` +
``model.safetensors``). Formats: ``sparse`` (compact values + bitmask / CSR safetensors),
``pruned`` (safetensors + architecture config), ``onnx``; several may be given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from amc.errors import AmcError
from amc.export.files import CONFIG_FILE, load_pruned, save_pruned, save_sparse
from amc.io import atomic_write_text
from amc.models import load_model, resolve_arch

FORMATS = ("sparse", "pruned", "onnx")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a pruned model: compact sparse safetensors, safetensors + config, ONNX")
    p.add_argument("model_path", metavar="MODEL", help="checkpoint file, or a folder with config.json")
    p.add_argument("--model", default=None, help="architecture of a checkpoint file (default: from its name)")
    p.add_argument("--format", default="sparse", help=f"comma-separated, from {', '.join(FORMATS)}")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="value type of the weights")
    p.add_argument("--out", default="runs/export", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise AmcError(f"unknown --format {', '.join(unknown) or '(empty)'}; known: {', '.join(FORMATS)}")
    src = Path(args.model_path)
    if src.is_dir():
        model = load_pruned(src)
        arch = json.loads((src / CONFIG_FILE).read_text())["arch"]
    else:
        arch = resolve_arch(args.model, src)
        model = load_model(arch, src)
    out = Path(args.out)
    written: dict[str, int] = {}
    if "sparse" in formats:
        exp = save_sparse(model, out / "model.sparse.safetensors", args.dtype, arch=arch)
        written[str(exp.path)] = exp.file_bytes
        print(f"sparse: {exp.file_bytes:,} bytes on disk; lab count (non-zeros x 32 bit) {exp.lab_bytes:,} bytes; "
              f"dense fp32 {exp.dense_bits // 8:,} bytes")
    if "pruned" in formats:
        pe = save_pruned(model, arch, out / "pruned", dtype=args.dtype)
        written[str(pe.directory)] = pe.file_bytes
        print(f"pruned: {pe.file_bytes:,} bytes ({pe.params:,} parameters)")
    if "onnx" in formats:
        from amc.export.onnx import export_onnx

        path = export_onnx(model, out / "model.onnx")
        written[str(path)] = path.stat().st_size
        print(f"onnx: {path.stat().st_size:,} bytes")
    atomic_write_text(out / "export.json", json.dumps({"source": str(src), "arch": arch, "dtype": args.dtype,
                                                       "bytes": written}, indent=2) + "\n")
    print(f"-> {out}")
    return 0
