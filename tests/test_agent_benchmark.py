"""benchmarks/agent.py: the report from cached rows, beside search_hard's uniform and Optuna rows."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.agent import agent_config, collect, markdown
from benchmarks.harness import Cache


def _hard():
    methods = {"uniform": {"test_accuracy": {"0": 0.78, "1": 0.79}},
               "optuna": {"test_accuracy": {"0": 0.80, "1": 0.79}}}
    return {"settings": {"epochs": 2.0}, "tasks": {"macs03": {"methods": methods}}}


def _row(seed, acc, val, search_s=100.0):
    return {"seed": seed, "test_accuracy": acc, "val_reward": val, "uniform_val_reward": 0.2, "search_s": search_s,
            "at_bound": {"all": 0.0}, "ratio_at_bound": {"all": 0.1}, "best_episode": 5,
            "curve": [{"episodes": [0, 9], "best": val, "mean": 0.1}]}


def _args(tmp_path):
    return argparse.Namespace(cache=str(tmp_path), tasks=["macs03"], seeds=[0, 1], episodes=10, warmup=2,
                              gradient_steps=1, epochs=2.0)


def test_report_is_partial_until_every_seed_is_there(tmp_path):
    args = _args(tmp_path)
    cache = Cache(tmp_path)
    cache.put("macs03__s0", _row(0, 0.80, 0.25))
    report, partial = collect(args, _hard())
    assert partial and report["tasks"]["macs03"]["goals"] == {}
    cache.put("macs03__s1", _row(1, 0.79, 0.19))
    report, partial = collect(args, _hard())
    assert partial and report["tasks"]["macs03"]["goals_rr"] == {}  # the re-ranked rows still missing
    for seed, acc in ((0, 0.77), (1, 0.78)):
        cache.put(f"macs03__s{seed}__rr", {**_row(seed, acc, 0.25, search_s=950.0), "agent_s": 600.0,
                                           "rerank_s": 350.0, "same_episodes_as_first_run": True,
                                           "chosen_search_rank": 2, "rerank_score": 0.3, "candidates": [
                                               {"search_rank": 1, "search_reward": 0.25, "score": 0.29},
                                               {"search_rank": 2, "search_reward": 0.24, "score": 0.3}],
                                           "rerank": {"k": 2, "steps": 300, "seeds": [1]}})
    cache.put("macs03__rr_baselines", {"task": "macs03", "rerank_score": {"uniform": 0.7376, "sensitivity": 0.7}})
    report, partial = collect(args, _hard())
    t = report["tasks"]["macs03"]
    assert not partial
    assert t["amc_rr"]["mean"] == pytest.approx(0.775)
    assert t["goals_rr"] == {"mean_at_least_uniform": False, "within_one_se_of_optuna": False,
                             "searches_within_15_min": False, "best_val_reward_at_least_uniform": True}
    assert t["amc"]["mean"] == pytest.approx(0.795) and t["uniform"]["mean"] == pytest.approx(0.785)
    assert t["goals"] == {"mean_at_least_uniform": True, "within_one_se_of_optuna": True,
                          "searches_within_15_min": True, "best_val_reward_at_least_uniform": False}  # seed 1: 0.19
    text = markdown(report)
    assert "| amc | 80.00% | 79.00% |" in text and "best_val_reward_at_least_uniform: NOT met" in text
    assert "| amc_rr | 77.00% | 78.00% |" in text and "| 0 | 950 (600 / 350) | True | 25.00% |" in text
    assert "same SGD steps): uniform 73.76%, sensitivity 70.00%." in text


def test_agent_settings_of_the_benchmark(tmp_path):
    cfg = agent_config(_args(tmp_path), seed=2)
    assert (cfg.episodes, cfg.warmup_episodes, cfg.seed, cfg.checkpoint_every) == (10, 2, 2, 25)


def test_variants_and_the_rescored_choice_are_reported(tmp_path):
    args = _args(tmp_path)
    cache = Cache(tmp_path)
    cache.put("macs03__s0", _row(0, 0.80, 0.25))
    cache.put("macs03__s0__amc_exploration", {**_row(0, None, 0.21), "variant": "amc_exploration",
                                              "best_in_warmup": 0.2, "best_after_warmup": 0.21, "mean_learning": 0.15})
    cache.put("macs03__s0__rescore", {"seed": 0, "search_pick": {"val_reward": 0.25, "full_val": 0.22},
                                      "rescored_pick": {"rank": 3, "val_reward": 0.24, "full_val": 0.23},
                                      "uniform_full_val": 0.21})
    report, partial = collect(args, _hard())
    t = report["tasks"]["macs03"]
    assert partial and [v["variant"] for v in t["variants"]] == ["amc_exploration"] and len(t["rescore"]) == 1
    text = markdown(report)
    assert "| amc_exploration | 0 | 10 | 100 | 21.00% | 20.00% | 21.00% | 15.00% (- / -) |" in text
    assert "| 0 | 25.00% / 22.00% | (3) 24.00% / 23.00% | 21.00% |" in text


def test_a_variant_changes_one_setting(tmp_path):
    base, amc = agent_config(_args(tmp_path), 0), agent_config(_args(tmp_path), 0, "amc_exploration")
    assert (amc.sigma_min, amc.exploit_every) == (0.0, 0) and (base.sigma_min, base.exploit_every) == (0.2, 2)
    assert agent_config(_args(tmp_path), 0, "gradient_steps_4").gradient_steps == 4


def test_rescore_reads_a_finished_search(tiny_splits, tmp_path):
    """The top policies of a search log and the uniform policy re-scored on every held-out image."""
    import pandas as pd

    from amc.budget import Budget
    from amc.evaluator import EvalConfig, Evaluator
    from benchmarks.agent import rescore
    from tests.conftest import make_tiny_vgg

    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"),
                   EvalConfig(granularity="fine", calib_images=128, round_to=1, eval_images=64))
    uniform = ev.uniform_policy()
    policies = [uniform, {n: min(0.9, r + 0.05) for n, r in uniform.items()}]
    rows = [{"reward": ev.evaluate(p).reward, "feasible": True, **{f"r:{n}": r for n, r in p.items()}}
            for p in policies]
    (tmp_path / "runs" / "macs03-s0").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "runs" / "macs03-s0" / "episodes.csv", index=False)

    class Bench:
        def evaluator(self, task):
            return ev

        def baselines(self, task):
            return {"uniform": {"policy": uniform}}

    got = rescore(Bench(), _args(tmp_path), "macs03", 0)
    full = Evaluator(ev.dense, tiny_splits, ev.budget, EvalConfig(granularity="fine", calib_images=128, round_to=1))
    assert got["uniform_full_val"] == pytest.approx(full.evaluate(uniform).reward)
    assert len(got["ranked"]) == 2 and got["rescored_pick"]["full_val"] == max(r["full_val"] for r in got["ranked"])
    assert got["search_pick"]["val_reward"] == max(r["reward"] for r in rows)


def test_a_reranked_reward_row_marks_the_starting_policies_among_its_candidates(tmp_path):
    """``--reward ls_rr``: its final choice re-ranks the top k and the search's starting policies; the report
    says which candidates were starting policies and that one of them was kept."""
    args = _args(tmp_path)
    cache = Cache(tmp_path)
    cands = [{"search_rank": 4, "search_reward": 0.18, "score": 0.69, "macs": 0.22},
             {"search_rank": 1, "search_reward": 0.21, "score": 0.55, "macs": 0.16},
             {"search_rank": 3, "search_reward": 0.15, "score": 0.65, "macs": 0.25}]
    cache.put("macs03__s0__ls_rr", {**_row(0, 0.72, 0.21), "agent_s": 400.0, "choice_s": 300.0,
                                    "chosen_search_rank": 4, "choice_score": 0.69, "candidates": cands,
                                    "best_in_warmup": 0.21, "best_after_warmup": 0.2, "kept_start": True,
                                    "start_ranks": [3, 4], "reward": {"kind": "ls_rr", "steps": 0, "k": 2},
                                    "agent": {"episodes": 200, "warmup_episodes": 40}})
    report, _ = collect(args, _hard())
    assert [r["seed"] for r in report["tasks"]["macs03"]["amc_ls_rr"]["rows"]] == [0]
    text = markdown(report)
    assert "| amc_ls_rr | 72.00% | - |" in text
    assert "4 (start): 69.00%, 1: 55.00%, 3 (start): 65.00%" in text and "| 4 (start), 69.00% |" in text
    assert "`amc_rr`'s re-rank over its top 2 distinct policies and its starting policies" in text


class _AimEvaluator:
    """Enough of an Evaluator for ``aim_search``: a linear latency table over two layers."""

    def __init__(self):
        from amc.budget import Budget, Projector, make_bounds

        class Table:
            kind, names = "latency", ["a", "b"]

            def fraction(self, policy):
                return 0.6 * (1 - policy.get("a", 0.0)) + 0.4 * (1 - policy.get("b", 0.0))

        self.cost_model, self.bounds = Table(), make_bounds(["a", "b"], 0.0, 0.9)
        self.budget = Budget("latency", 0.5)
        self.projector = Projector(self.cost_model, self.budget, self.bounds)

    def uniform_policy(self):
        return self.projector.uniform()

    def build(self, policy):
        return policy, None

    def retarget(self, fraction):
        from amc.budget import Budget, Projector

        self.budget = Budget("latency", fraction)
        self.projector = Projector(self.cost_model, self.budget, self.bounds)


def test_the_aimed_rows_measure_their_aim_once_and_keep_it(tmp_path):
    """``--reward ls_rr_aim``: the uniform baseline measured paired (the table over-predicts: 0.9x), the search
    aimed at 0.5 / 0.9 on the table; a resumed run reads the aim back rather than measuring it again."""
    from benchmarks.agent import _aim

    measured = []

    class Bench:
        def __init__(self):
            self.tasks = {"lat05": ("channel", "latency=0.5")}

        def _paired(self, model):
            measured.append(0.9 * ev.cost_model.fraction(model))
            return measured[-1]

        def stood(self, start, end):
            return 0.0

    ev = _AimEvaluator()
    aim = _aim(Bench(), "lat05", ev, tmp_path / "run")
    assert aim["target"] == pytest.approx(0.5 / 0.9) and ev.budget.fraction == pytest.approx(0.5 / 0.9)
    assert len(measured) == 2 and (tmp_path / "run" / "aim.json").exists()
    again = _AimEvaluator()
    assert _aim(Bench(), "lat05", again, tmp_path / "run") == aim
    assert len(measured) == 2 and again.budget.fraction == pytest.approx(0.5 / 0.9)  # read back, not measured
    # the next seed's run, on the same (already aimed) evaluator: measured against the task's budget, not the aim
    assert _aim(Bench(), "lat05", ev, tmp_path / "next")["target"] == pytest.approx(0.5 / 0.9)


def test_the_reaimed_rows_keep_each_correction_and_resume_from_the_last(tmp_path):
    """``--reward ls_rr_reaim``: every ``--reaim-every`` episodes the best so far measured (here 1.25x the table)
    and the search retargeted; each correction kept in ``reaim.json``, and a resumed search aims from the last."""

    from amc.evaluator import Result
    from benchmarks.agent import _reaim

    class Bench:
        def __init__(self):
            self.tasks = {"lat05": ("channel", "latency=0.5")}

        def _paired(self, model):
            return 1.25 * ev.cost_model.fraction(model)

    ev = _AimEvaluator()
    args = argparse.Namespace(reaim_every=2)
    hook = _reaim(Bench(), args, "lat05", ev, tmp_path / "run")
    best = Result({"a": 0.6, "b": 0.5}, 0.5, 0.5, 0.5, 0.5, 0.44, 0.5, True, "", 1.0).row()  # within the aim
    hook(best, best)
    assert not (tmp_path / "run" / "reaim.json").exists()
    hook(best, best)
    kept = json.loads((tmp_path / "run" / "reaim.json").read_text())
    assert len(kept) == 1 and kept[0]["trial"] == 2
    assert ev.budget.fraction == pytest.approx(0.5 / 1.25, rel=0.02) == kept[0]["aim"]
    again = _AimEvaluator()
    resumed = _reaim(Bench(), args, "lat05", again, tmp_path / "run")
    assert again.budget.fraction == kept[0]["aim"] and resumed.steps == kept
