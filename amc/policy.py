"""Policies: ``Policy`` (dotted layer name -> ratio), the one validator of them (``check_policy``,
for any granularity: the caller gives the layer names and what a ratio means), and policy files (a
YAML or JSON mapping ``{dotted layer name: ratio}``, or ``{policy: {...}}``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from amc.errors import PolicyError
from amc.io import atomic_write_text

Policy = dict[str, float]


def check_policy(policy: Mapping[str, float], names: Sequence[str], upper: float = 1.0,
                 inclusive_upper: bool = False, meaning: str = "") -> Policy:
    """Names must be among ``names`` (the model's prunable layers), ratios numbers in ``[0, upper)``
    (``[0, upper]`` with ``inclusive_upper``); ``meaning`` ends the out-of-range message (what a
    ratio is at this granularity). Returns the policy with float ratios."""
    known = set(names)
    unknown = [k for k in policy if k not in known]
    if unknown:
        raise PolicyError(f"policy names layers not in the model: {', '.join(map(str, unknown[:5]))}"
                          f" (prunable layers: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    out: Policy = {}
    for k, v in policy.items():
        try:
            r = float(v)
        except (TypeError, ValueError):
            raise PolicyError(f"ratio for {k} is not a number: {v!r}") from None
        if not (0.0 <= r <= upper if inclusive_upper else 0.0 <= r < upper):  # NaN fails both
            raise PolicyError(f"ratio for {k} is {r}, outside [0, {upper:g}{']' if inclusive_upper else ')'}"
                              + (f": {meaning}" if meaning else ""))
        out[k] = r
    return out


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
