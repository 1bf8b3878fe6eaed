"""Policy files: a YAML or JSON mapping ``{dotted layer name: ratio}`` (or ``{policy: {...}}``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from amc.errors import PolicyError
from amc.io import atomic_write_text


def load_policy_file(path: str | os.PathLike) -> dict[str, float]:
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"policy file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as e:
        raise PolicyError(f"policy file {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict) and isinstance(data.get("policy"), dict):
        data = data["policy"]
    if not isinstance(data, dict) or not data:
        raise PolicyError(f"policy file {path} must map layer names to ratios")
    out = {}
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise PolicyError(f"policy file {path}: ratio of {k} is not a number: {v!r}")
        out[str(k)] = float(v)
    return out


def save_policy_file(policy: dict[str, float], path: str | os.PathLike) -> None:
    path = Path(path)
    # every digit kept (repr round-trips): a ratio rounded to a few decimals can move a large layer's
    # weight count by one and push a policy that exactly spends the budget over it
    exact = {k: float(v) for k, v in policy.items()}
    text = json.dumps(exact, indent=2) if path.suffix == ".json" else yaml.safe_dump(exact, sort_keys=False)
    atomic_write_text(path, text)
