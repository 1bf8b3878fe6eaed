"""The exports: ``files`` (pruned safetensors + JSON config, compact sparse safetensors, the
``torch.export`` program, all without pickle) and ``onnx`` (ONNX, checked in onnxruntime).
The names of ``files`` are importable from ``amc.export`` as before."""

from amc.export.files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ExportError,
    PrunedExport,
    SparseExport,
    export_compressed,
    load_pruned,
    load_sparse,
    read_sparse_state,
    save_program,
    save_pruned,
    save_sparse,
)

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "ExportError", "PrunedExport", "SparseExport", "export_compressed",
           "load_pruned", "load_sparse", "read_sparse_state", "save_program", "save_pruned", "save_sparse"]
