"""benchmarks/latency_fit_noise.py's report from cached rows (no timing): per model and setting, the fits whose
later readings are over the budget."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.harness import Cache
from benchmarks.latency_fit_noise import NOISE, setting, summary, write


def _row(model: str, i: int, confirm: int, fit: float, later: float) -> dict:
    return {"model": model, "policy": i, "confirm": confirm, "fit_measured": fit, "fit_predicted": 0.6,
            "fit_within": fit <= 0.6, "fit_readings": 2 + confirm, "fit_s": 10.0, "fit_steps": [],
            "later": [later], "later_median": later, "start_predicted": 0.6}


def test_the_report_counts_later_readings_over_the_budget_per_setting(tmp_path):
    cache = Cache(tmp_path / "cache")
    over = 0.6 * (1 + NOISE) + 0.001
    for key, row in {"resnet20__p0__c0": _row("resnet20", 0, 0, 0.58, over),
                     "resnet20__p0__c2": _row("resnet20", 0, 2, 0.59, 0.60),
                     "resnet20__p1__c0": _row("resnet20", 1, 0, 0.57, 0.605),  # within the noise allowance
                     "resnet20__p1__c2": _row("resnet20", 1, 2, 0.59, 0.58),
                     "resnet20__p2__c0": _row("resnet20", 2, 0, 0.55, 0.9),  # p2: c2 missing
                     "mobilenetv2__p0__c2u4": _row("mobilenetv2", 0, 2, 0.57, 0.7)}.items():  # its only setting
        cache.put(key, row)
    args = argparse.Namespace(cache=str(tmp_path / "cache"), out=str(tmp_path), models_run=["resnet20", "mobilenetv2"],
                              policies=3, settings=["c0", "c2", "c2u4"], budget=0.6, verify=1)
    write(args)
    got = json.loads((tmp_path / "latency_fit_noise.json").read_text())
    assert got["partial"] is True  # p2 lacks a setting
    c0, c2 = got["summary"]["resnet20"]["c0"], got["summary"]["resnet20"]["c2"]
    assert (c0["fits"], c0["over"], c2["fits"], c2["over"]) == (3, 2, 2, 0)
    assert set(got["summary"]["resnet20"]) == {"c0", "c2"} and got["summary"]["mobilenetv2"]["c2u4"]["over"] == 1
    assert c0["readings_mean"] == 2.0 and c2["readings_mean"] == 4.0
    md = (tmp_path / "latency_fit_noise.md").read_text()
    assert md.startswith("**PARTIAL") and "| resnet20 | c0 | 3 | 2 (67%) |" in md and "p2: c0: 0.550 -> 0.900" in md
    assert summary([_row("m", 0, 0, 0.6, 0.7)], 0.6)["over_share"] == 1.0
    assert setting("c2") == (2, 0.0) and setting("c0u4") == (0, 0.04)
    with pytest.raises(SystemExit, match="bad setting"):
        setting("confirm2")
