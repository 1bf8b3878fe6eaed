"""benchmarks/search_hard.py's report: the margin, its standard errors and the goal's verdict come from
the cached rows, only once every method has a row for the same seeds."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from benchmarks.search_hard import collect

ACC = {"uniform": (0.780, 0.785, 0.790), "sensitivity": (0.770, 0.772, 0.768), "tp_global": (0.769, 0.770, 0.771),
       "optuna": (0.800, 0.794, 0.805), "amc": (0.768, 0.775, 0.770), "optuna_mf": (0.790, 0.792, 0.788)}


def _rows(cache: Path, acc: dict, search_s: float = 80.0, seeds=(0, 1, 2)) -> None:
    for m, vals in acc.items():
        for seed in seeds:
            p = cache / "macs03" / f"s{seed}" / f"row_{m}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"task": "macs03", "method": m, "seed": seed, "test_accuracy": vals[seed],
                                     "search_s": search_s, "finetune_s": 1.0}))


def test_margin_and_its_standard_errors(tmp_path: Path) -> None:
    _rows(tmp_path, ACC)
    t = collect(tmp_path)["macs03"]
    assert (t["best_searcher"], t["best_baseline"]) == ("optuna", "uniform")
    assert t["margin"] == pytest.approx(statistics.mean(ACC["optuna"]) - statistics.mean(ACC["uniform"]))
    se = math.sqrt(statistics.variance(ACC["optuna"]) / 3 + statistics.variance(ACC["uniform"]) / 3)
    assert t["margin_se"] == pytest.approx(se)
    diffs = [a - b for a, b in zip(ACC["optuna"], ACC["uniform"], strict=True)]
    assert t["margin_se_paired"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    assert t["goal_met"] is True  # +1.47 points, SE 0.44, searches 80 s


def test_the_goal_is_missed_when_a_search_runs_too_long_or_the_margin_is_small(tmp_path: Path) -> None:
    _rows(tmp_path / "slow", ACC, search_s=1000.0)
    assert collect(tmp_path / "slow")["macs03"]["goal_met"] is False
    close = {**ACC, "optuna": (0.790, 0.789, 0.800)}  # +0.47 points
    _rows(tmp_path / "close", close)
    assert collect(tmp_path / "close")["macs03"]["goal_met"] is False


def test_no_margin_until_every_method_has_the_same_seeds(tmp_path: Path) -> None:
    _rows(tmp_path, ACC, seeds=(0, 1))
    _rows(tmp_path, {"optuna": ACC["optuna"]}, seeds=(2,))
    t = collect(tmp_path)["macs03"]
    assert t["margin"] is None and t["goal_met"] is None


def test_a_later_searcher_competes_once_it_has_every_seed(tmp_path: Path) -> None:
    _rows(tmp_path, ACC)
    _rows(tmp_path, {"optuna_rr": (0.830, 0.830, 0.830)}, seeds=(0, 1))  # two seeds only: not yet compared
    t = collect(tmp_path)["macs03"]
    assert t["best_searcher"] == "optuna" and "optuna_rr" not in t["searchers_compared"]
    _rows(tmp_path, {"optuna_rr": (0.830, 0.830, 0.830)}, seeds=(2,))
    t = collect(tmp_path)["macs03"]
    assert t["best_searcher"] == "optuna_rr" and t["searchers_compared"][-1] == "optuna_rr"
    assert t["margin"] == pytest.approx(0.830 - statistics.mean(ACC["uniform"]))


def test_a_task_that_could_not_start_says_why(tmp_path: Path) -> None:
    (tmp_path / "lat05").mkdir()
    (tmp_path / "lat05" / "error.json").write_text(json.dumps({"error": "budget latency=0.5 cannot be met"}))
    tasks = collect(tmp_path)
    assert tasks["lat05"]["error"] == "budget latency=0.5 cannot be met" and "error" not in tasks["macs03"]
    from benchmarks.search_hard import _markdown

    committed = json.loads((Path(__file__).parents[1] / "reports" / "search_hard.json").read_text())
    md = _markdown({**committed, "tasks": tasks, "cache_files": {}})
    assert "The last run stopped: budget latency=0.5 cannot be met" in md


def test_rows_that_searched_one_policy_but_were_fitted_apart_are_named(tmp_path: Path) -> None:
    from benchmarks.search_hard import same_search_other_fit

    searched = {"a": 0.5, "b": 0.5}
    rows = {"optuna": [{"method": "optuna", "seed": 0, "searched_policy": searched, "policy": {"a": 0.6, "b": 0.6},
                        "fit_steps": [{"measured": 0.51}], "test_accuracy": 0.68}],
            "optuna_rr": [{"method": "optuna_rr", "seed": 0, "searched_policy": dict(searched),
                           "policy": {"a": 0.45, "b": 0.45}, "fit_steps": [{"measured": 0.48}], "test_accuracy": 0.75}],
            "uniform": [{"method": "uniform", "seed": 0, "searched_policy": {"a": 0.3, "b": 0.7},
                         "policy": {"a": 0.3, "b": 0.7}, "fit_steps": [{"measured": 0.5}], "test_accuracy": 0.66}]}
    (twin,) = same_search_other_fit(rows)
    assert twin["methods"] == ["optuna", "optuna_rr"] and twin["fit"] == ["tightened", "loosened"]
    assert twin["first_measured"] == [0.51, 0.48] and twin["test_accuracy"] == [0.68, 0.75]
    rows["optuna_rr"][0]["policy"] = rows["optuna"][0]["policy"]  # fitted alike: nothing to name
    assert same_search_other_fit(rows) == []


def test_rows_that_built_the_same_model_are_paired(tmp_path: Path) -> None:
    from benchmarks.search_hard import same_model

    pol = {"a": 0.5, "b": 0.25}
    rows = {"optuna": [{"method": "optuna", "seed": 0, "policy": pol, "test_accuracy": 0.794}],
            "optuna_rr": [{"method": "optuna_rr", "seed": 0, "policy": dict(pol), "test_accuracy": 0.791},
                          {"method": "optuna_rr", "seed": 1, "policy": dict(pol), "test_accuracy": 0.700}],
            "uniform": [{"method": "uniform", "seed": 0, "policy": {"a": 0.4, "b": 0.4}, "test_accuracy": 0.78}]}
    assert same_model(rows) == [{"seed": 0, "methods": ["optuna", "optuna_rr"], "test_accuracy": [0.794, 0.791]}]
