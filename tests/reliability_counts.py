"""What the reliability tests held, appended as JSON lines for ``benchmarks/reliability.py``.

A test calls ``record(kind, name, **numbers)`` after its assertions passed, so every line is a
check that held. The file is ``$AMC_RELIABILITY_OUT`` (the benchmark sets it), else
``reliability-counts.jsonl`` in the system's temporary folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

ENV_OUT = "AMC_RELIABILITY_OUT"
KINDS = ("workers", "kill", "bad_input", "safety")  # the report's sections


def out_path() -> Path:
    default = Path(tempfile.gettempdir()) / "reliability-counts.jsonl"
    return Path(os.environ.get(ENV_OUT) or default)


def record(kind: str, name: str, **numbers: object) -> None:
    """Append one held check: ``kind`` in KINDS, ``name`` its label, ``numbers`` what it counted
    (``lost`` = results lost, which the tests assert to be 0)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    line = json.dumps({"kind": kind, "name": name, **numbers}, default=str)
    with open(out_path(), "a") as f:  # appends of one short line: safe with pytest-xdist workers too
        f.write(line + "\n")
