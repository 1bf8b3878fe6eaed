"""benchmarks/latency_trained.py's report: per model the rows' accuracies, latency ratios and search times,
the margins and the goals' verdicts, all from cached rows (no timing)."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pytest

from benchmarks.latency_trained import (
    BASELINES,
    SEARCH_LIMIT_S,
    SEARCHERS,
    TASK,
    TASKS,
    bench_args,
    collect,
    markdown,
    report,
)
from benchmarks.search_hard import searchers_of

ACC = {"uniform": (0.700, 0.705, 0.710), "sensitivity": (0.690, 0.692, 0.688), "tp_global": (0.650, 0.660, 0.655),
       "macs_policy": (0.712, 0.716, 0.714), "optuna": (0.735, 0.730, 0.740), "amc": (0.710, 0.712, 0.708)}


def _rows(cache: Path, model: str, acc: dict, seeds=(0, 1, 2), measured: float = 0.59, search_s: float = 600.0):
    for m, vals in acc.items():
        for seed in seeds:
            p = cache / model / TASK / f"s{seed}" / f"row_{m}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"task": TASK, "method": m, "seed": seed, "test_accuracy": vals[seed],
                                     "search_s": search_s, "finetune_s": 10.0, "latency_measured": measured,
                                     "latency_predicted": 0.7, "macs": 0.4}))


def test_rows_give_each_method_its_figures_and_the_goals(tmp_path: Path) -> None:
    _rows(tmp_path, "mobilenetv2", ACC)
    t = collect(tmp_path, "mobilenetv2")
    assert list(t["methods"]) == [*BASELINES["channel"], *SEARCHERS]
    e = t["methods"]["optuna"]
    assert e["test_accuracy"] == {"0": 0.735, "1": 0.730, "2": 0.740}
    assert e["mean"] == pytest.approx(statistics.mean(ACC["optuna"]))
    assert e["std"] == pytest.approx(statistics.stdev(ACC["optuna"]))
    assert e["measured_ratio"] == {"0": 0.59, "1": 0.59, "2": 0.59}
    assert e["predicted_ratio"]["2"] == 0.7 and e["search_s"]["1"] == 600.0
    assert (t["best_searcher"], t["best_baseline"]) == ("optuna", "macs_policy")
    se = math.sqrt(statistics.variance(ACC["optuna"]) / 3 + statistics.variance(ACC["macs_policy"]) / 3)
    assert t["margin"] == pytest.approx(statistics.mean(ACC["optuna"]) - statistics.mean(ACC["macs_policy"]))
    assert t["margin_se"] == pytest.approx(se)
    assert t["margin_met"] is True  # +2.1 points, SE 0.30
    assert t["amc_gap"] == pytest.approx(0.710 - 0.714) and t["amc_met"] is False  # -0.4 points, SE 0.13
    assert t["within_budget"] is True and t["searches_within_limit"] is True


def test_resnet20_has_no_margin_goal_but_the_agent_goal(tmp_path: Path) -> None:
    acc = {**ACC, "amc": (0.712, 0.714, 0.713)}  # 0.1 point under the best baseline, SE about 0.14
    _rows(tmp_path, "resnet20", acc)
    t = collect(tmp_path, "resnet20")
    assert t["margin_goal"] is None and t["margin_met"] is None
    assert t["amc_met"] is True


def test_a_row_over_the_noise_allowance_or_a_slow_search_fails_its_goal(tmp_path: Path) -> None:
    fraction = 0.6
    _rows(tmp_path / "edge", "resnet20", ACC, measured=fraction * 1.009)  # within the 1% allowance
    assert collect(tmp_path / "edge", "resnet20")["within_budget"] is True
    _rows(tmp_path / "over", "resnet20", ACC, measured=fraction * 1.02)
    t = collect(tmp_path / "over", "resnet20")
    assert t["within_budget"] is False and t["methods"]["uniform"]["within_budget"] is False
    _rows(tmp_path / "slow", "resnet20", ACC, search_s=SEARCH_LIMIT_S + 1)
    assert collect(tmp_path / "slow", "resnet20")["searches_within_limit"] is False


def test_no_goal_until_every_method_has_the_same_seeds(tmp_path: Path) -> None:
    _rows(tmp_path, "mobilenetv2", ACC, seeds=(0, 1))
    _rows(tmp_path, "mobilenetv2", {"optuna": ACC["optuna"]}, seeds=(2,))
    t = collect(tmp_path, "mobilenetv2")
    assert t["complete"] is False and t["margin"] is None and t["margin_met"] is None and t["amc_met"] is None
    one = tmp_path / "one"
    _rows(one, "mobilenetv2", ACC, seeds=(0,))  # one seed: no standard error, no verdict
    assert collect(one, "mobilenetv2")["margin"] is None


def test_the_report_is_partial_until_every_row_is_there(tmp_path: Path) -> None:
    _rows(tmp_path, "mobilenetv2", ACC)
    r = report(tmp_path, {"epochs": 2, "trials": 200})
    assert r["partial"] is True and r["rows_done"] == 18 and r["rows_expected"] == 36
    md = markdown(r)
    assert "PARTIAL" in md and "18 of 36 rows" in md and "| optuna | s0: 73.50, s1: 73.00, s2: 74.00 |" in md
    assert "No finetuned row yet." in md  # resnet20's section
    _rows(tmp_path, "resnet20", ACC)
    r = report(tmp_path)
    assert r["partial"] is False and "PARTIAL" not in markdown(r)


def test_empty_cache_gives_an_empty_partial_report(tmp_path: Path) -> None:
    r = report(tmp_path)
    assert r["partial"] is True and r["rows_done"] == 0
    assert all(not t["methods"] and t["within_budget"] is None for t in r["models"].values())


def test_each_model_gets_its_own_cache_and_checkpoint_and_the_task_runs_both_searchers(tmp_path: Path) -> None:
    args = argparse.Namespace(cache=str(tmp_path), data="d", models=str(tmp_path / "m"), seeds=[0, 1], trials=5,
                              episodes=4, warmup=1, epochs=0.01, calib_images=64, eval_images=100, pause_pids=[],
                              out=str(tmp_path), confirm=2)
    a = bench_args(args, "mobilenetv2")
    assert a.cache == str(tmp_path / "mobilenetv2") and a.tasks == [TASK]
    assert a.checkpoint == str(tmp_path / "m" / "mobilenetv2_cifar_dense.pt")
    assert searchers_of(TASK, a.searchers, TASKS) == list(SEARCHERS) and a.confirm == 2
    args.rows = ["sensitivity", "uniform"]  # a process for baseline rows alone runs no search
    assert bench_args(args, "mobilenetv2").searchers == []
    args.rows = ["optuna_fitted", "amc"]  # a fitted row searches through its searcher's name
    assert bench_args(args, "mobilenetv2").searchers == ["amc", "optuna_fitted"]


class _Result:
    def __init__(self, reward: float) -> None:
        self.reward, self.feasible, self.reason = reward, True, None


class _MacsEvaluator:
    """The MACs budget's evaluator as ``_macs_policy`` uses it: two policies, each with its reward."""

    def __init__(self) -> None:
        self.budgets: list[str | None] = []

    def uniform_policy(self) -> dict:
        return {"a": 0.4, "b": 0.4}

    def sensitivity_policy(self, curves) -> dict:
        assert curves == "curves"  # the latency task's scan, reused
        return {"a": 0.1, "b": 0.7}

    def evaluate(self, policy: dict) -> _Result:
        return _Result(0.6 if policy["a"] == 0.1 else 0.5)


def test_the_macs_policy_is_the_better_of_the_macs_budgets_uniform_and_sensitivity_policies() -> None:
    from benchmarks.search_hard import Bench

    fake, asked = _MacsEvaluator(), []
    bench = Bench.__new__(Bench)  # only the evaluator is needed: no data, no model
    bench.evaluator = lambda task, budget=None: asked.append((task, budget)) or fake  # type: ignore[method-assign]
    got = bench._macs_policy(TASK, 0.6, "curves", scan_s=12.0)
    assert asked == [(TASK, "macs=0.6")]
    assert got["picked"] == "sensitivity" and got["policy"] == {"a": 0.1, "b": 0.7}  # as the MACs budget made it
    assert got["val_reward"] == 0.6 and got["candidates_val_reward"] == {"uniform": 0.5, "sensitivity": 0.6}
    assert got["search_s"] >= 12.0  # the sensitivity scan's seconds count


def test_an_aimed_run_counts_the_aims_seconds_and_says_where_it_aimed(tmp_path: Path) -> None:
    _rows(tmp_path, "mobilenetv2", ACC)
    aim = {"target": 0.7123, "seconds": 12.5, "steps": [{"predicted": 0.689, "measured": 0.59},
                                                         {"predicted": 0.701, "measured": 0.598}]}
    (tmp_path / "mobilenetv2" / TASK / "aim.json").write_text(json.dumps(aim))
    (tmp_path / "mobilenetv2" / TASK / "s0" / "choice_optuna.json").write_text(json.dumps({"chosen_search_rank": 6}))
    t = collect(tmp_path, "mobilenetv2")
    assert t["aim"] == aim and t["methods"]["uniform"]["search_s"]["0"] == pytest.approx(612.5)
    assert t["final_choice_rank"] == {"optuna": {"0": 6}}
    md = markdown(report(tmp_path, {"epochs": 2}, aimed=True))
    assert md.startswith("# Trained networks at a measured latency budget (CPU), aimed search")
    assert "Aim: the uniform policy predicted 0.689, measured 0.590; 2 candidate(s) measured; the search aims at " \
           "0.712 on the table (12 s)." in md
    assert "one scale per kind of layer" in md and "The fit changed between seeds" not in md
    assert "optuna kept the search's #6 (s0)." in md
    plain = markdown(report(tmp_path, {"epochs": 2}))
    assert "aimed search" not in plain and "The fit changed between seeds" in plain


class _AimedEvaluator:
    def __init__(self) -> None:
        self.targets: list[float] = []

    def retarget(self, fraction: float) -> None:
        self.targets.append(fraction)


class _AimBench:
    def __init__(self, cache: Path) -> None:
        self.cache, self.tasks, self.paired = cache, TASKS, []
        self.args = argparse.Namespace(confirm=2)

    def _paired(self, model) -> float:
        self.paired.append(model)
        return 0.5

    def stood(self, start: float, end: float) -> float:
        return 0.0


def test_the_aim_is_measured_once_then_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import amc.latency_check
    from amc.options import LatencyOptions
    from benchmarks.latency_trained import aim

    calls = []

    def fake_aim_search(ev, budget, fraction, rounds, say, confirm):
        calls.append((budget.fraction, rounds, fraction(None), confirm))
        ev.retarget(0.66)
        return 0.66, [{"predicted": 0.7, "measured": 0.6}]

    monkeypatch.setattr(amc.latency_check, "aim_search", fake_aim_search)
    bench, ev = _AimBench(tmp_path), _AimedEvaluator()
    got = aim(bench, TASK, ev)
    assert calls == [(0.6, LatencyOptions().latency_search_rounds, 0.5, 2)]  # the task's budget, measured paired
    assert got["target"] == 0.66 and ev.targets == [0.66]
    again = _AimedEvaluator()
    assert aim(bench, TASK, again)["steps"] == [{"predicted": 0.7, "measured": 0.6}]
    assert len(calls) == 1 and again.targets == [0.66]  # a resumed run: retargeted from the cache, not measured


class _ChoiceBench:
    def _paired(self, model) -> float:
        return 0.5

    def __init__(self, cache: Path) -> None:
        self.cache, self.tasks = cache, TASKS
        self.baseline_keys = BASELINES
        self.args = argparse.Namespace(confirm=2)

    def evaluator(self, task: str):
        return "the task's evaluator"

    def stood(self, start: float, end: float) -> float:
        return 0.0


class _Ranked:
    def __init__(self, policy: dict, rank: int, score: float) -> None:
        self.policy, self.rank, self.score, self.search_reward, self.feasible = policy, rank, score, 0.3, True


def test_an_aimed_search_keeps_the_librarys_final_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import amc.search.base
    import benchmarks.latency_trained as lt
    from amc.options import SearchOptions

    asked = []

    def fake_choice(ev, frame, k, steps=0, first=0, adjust=None):
        asked.append((ev, frame, k, steps, first, adjust))
        return [_Ranked({"a": 0.2}, 6, 0.41), _Ranked({"a": 0.5}, 1, 0.39)]  # a starting policy re-scored best

    monkeypatch.setattr(amc.search.base, "final_choice", fake_choice)
    monkeypatch.setattr(lt, "_trials", lambda bench, task, method, seed, base: f"{method} frame")
    bench, found = _ChoiceBench(tmp_path), {"policy": {"a": 0.5}, "search_s": 600.0, "val_reward": 0.48}
    got = lt.library_choice(bench, TASK, "optuna", 0, {}, found)
    opts = SearchOptions()
    assert asked == [("the task's evaluator", "optuna frame", opts.rerank, opts.rerank_steps, len(BASELINES["channel"]),
                      None)]
    assert got["policy"] == {"a": 0.2} and got["chosen_search_rank"] == 6 and got["val_reward"] == 0.41
    assert got["search_best_policy"] == {"a": 0.5} and got["search_s"] == pytest.approx(600.0 + got["choice_s"])
    assert (tmp_path / TASK / "s0" / "choice_optuna.json").exists()
    assert lt.library_choice(bench, TASK, "optuna", 0, {}, found) == got and len(asked) == 1  # read back
    fitted = lt.library_choice(bench, TASK, "optuna_fitted", 0, {}, found, fit=True)  # the same search's trials
    assert asked[1][1] == "optuna frame" and callable(asked[1][5])  # each candidate fitted by measurement first
    assert (tmp_path / TASK / "s0" / "choice_optuna_fitted.json").exists() and fitted["policy"] == {"a": 0.2}
