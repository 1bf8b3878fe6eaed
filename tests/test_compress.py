import json

import pytest
import torch

from amc.errors import AmcError, BudgetError
from amc.models import build_model
from amc.options import CompressConfig
from amc.pipeline import compress
from amc.recipe import apply_recipe, load_recipe


@pytest.fixture(scope="module")
def r20_ckpt(tmp_path_factory):
    """A ResNet-20 (the smallest zoo model) with random weights, saved as a checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20_random.pt"
    torch.save(build_model("resnet20").state_dict(), path)
    return path


def quick(**kw) -> CompressConfig:
    base = dict(episodes=3, finetune_epochs=0.1, calib_images=128, eval_images=128, test_limit=128,
                latency_runs=3, sensitivity_ratios=(0.5,), sparsities=(0.5, 0.8, 0.9, 0.95), batch_size=128)
    base.update(kw)
    return CompressConfig(**base)


@pytest.mark.parametrize(("budget", "method"), [("macs=0.6", "optuna"), ("size=0.4", "amc"),
                                                ("macs=0.6", "sensitivity")])
def test_compress_writes_every_promised_file(tmp_path, tiny_splits, r20_ckpt, budget, method):
    run = tmp_path / "run"
    res = compress(r20_ckpt, "resnet20", tiny_splits, quick(budget=budget, method=method), run)
    names = {p.name for p in run.iterdir()}
    assert {"recipe.yaml", "report.md", "summary.json", "sensitivity.csv", "model.onnx"} <= names
    if method != "sensitivity":
        assert "trials.csv" in names
    kind, fraction = budget.split("=")
    if kind == "size":
        assert "model.sparse.safetensors" in names and "candidates.csv" in names  # the joint check's table
        assert res.metrics["size_fraction"] <= float(fraction)
    else:
        assert (run / "pruned" / "model.safetensors").exists() and (run / "pruned" / "config.json").exists()
        assert res.metrics["macs_fraction"] <= float(fraction)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["wall_time_s"]) >= {"profile", "sensitivity", "search", "finetune", "export", "total"}
    report = (run / "report.md").read_text()
    assert "![" in report and all((run / line.split("](")[1].rstrip(")")).exists()
                                  for line in report.splitlines() if line.startswith("!["))
    # the recipe re-applies to the same compressed model (before finetuning)
    recipe = load_recipe(run / "recipe.yaml", checkpoint=r20_ckpt)
    a, _ = apply_recipe(recipe, r20_ckpt)
    b, _ = apply_recipe(recipe, r20_ckpt)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_impossible_budget_fails_before_the_search(tmp_path, tiny_splits, r20_ckpt):
    with pytest.raises(BudgetError):
        compress(r20_ckpt, "resnet20", tiny_splits, quick(budget="macs=0.001"), tmp_path / "run")
    assert not (tmp_path / "run" / "sensitivity.csv").exists()


def test_bad_config():
    with pytest.raises(AmcError):
        CompressConfig(method="magic")
    with pytest.raises(AmcError):
        CompressConfig(budget="speed=2")


def test_final_row_shows_the_finetuned_cost_for_a_params_budget(tmp_path, tiny_splits, r20_ckpt):
    """The report's last row ("chosen, test after finetune") carries the compressed model's own
    params fraction, not the search's pre-finetune estimate (metrics hold <kind>_fraction for all kinds)."""
    import pandas as pd

    from amc.layers import count_params

    run = tmp_path / "run"
    res = compress(r20_ckpt, "resnet20", tiny_splits, quick(budget="params=0.6", method="sensitivity"), run)
    dense = count_params(build_model("resnet20"))
    measured = count_params(res.model) / dense
    assert res.metrics["params_fraction"] == pytest.approx(measured)
    assert measured <= 0.6
    assert res.metrics["latency_fraction"] > 0
    tables = [pd.read_csv(p) for p in run.glob("*.csv")]
    rows = [t for t in tables if "method" in t and (t["method"] == "chosen, test after finetune").any()]
    assert len(rows) == 1
    final = rows[0][rows[0]["method"] == "chosen, test after finetune"].iloc[0]
    assert final["budget"] == pytest.approx(measured)
    assert final["accuracy"] == pytest.approx(res.metrics["accuracy"])


def test_a_latency_budget_is_fitted_to_a_measurement(tmp_path, tiny_splits, r20_ckpt):
    """The chosen policy goes through amc.latency.fit.fit_measured: the model built from the policy
    the recipe holds is the one whose paired measurement the fit recorded as within the budget.
    The budget is mild: on a loaded 2-core machine the latency table measured ResNet-20 with every layer
    at its upper bound (0.9) at 0.65 of its dense latency, so 0.6 could be infeasible there. Every latency
    is taken on a fake runtime (known times: a fixed overhead plus a cost per MAC), so no verdict here can
    follow this machine's timing noise."""
    from amc.latency import FakeRuntime, use_runtime

    budget = 0.8
    with use_runtime(FakeRuntime(ms_per_mmac=0.05, overhead_ms=0.3)):
        res = compress(r20_ckpt, "resnet20", tiny_splits, quick(budget=f"latency={budget}", method="sensitivity"),
                       tmp_path / "run")
    m = res.metrics
    assert m["latency_fit_rounds"] >= 1 and m["latency_fit_measured"] > 0
    assert m["latency_fit_within"] == (m["latency_fit_measured"] <= budget)
    if m["latency_fit_rounds"] > 1 and m["latency_fit_first_measured"] > budget:  # tightened: it predicts less
        assert m["latency_fit_predicted"] < m["latency_fit_first_predicted"]
    elif m["latency_fit_rounds"] > 1:  # within but well under: loosened (fill), or kept when that measured over
        assert m["latency_fit_first_measured"] < budget * 0.98
        assert m["latency_fit_predicted"] >= m["latency_fit_first_predicted"]
    else:
        assert m["latency_fit_first_measured"] == m["latency_fit_measured"] <= budget
    with use_runtime(FakeRuntime(ms_per_mmac=0.05, overhead_ms=0.3)):
        off = compress(r20_ckpt, "resnet20", tiny_splits,
                       quick(budget=f"latency={budget}", method="sensitivity", latency_fit_rounds=0), tmp_path / "off")
    assert "latency_fit_rounds" not in off.metrics


def test_a_latency_search_aims_at_the_measured_budget(tmp_path, tiny_splits, r20_ckpt):
    """Before a search the uniform policy is built and measured (a fake runtime: known times) and the
    search aimed at the table's fraction that the corrected estimate puts at the budget: every trial within
    that aim, the chosen policy fitted to the user's budget by measurement after it, the aim in the metrics;
    ``latency_search_rounds=0`` searches on the table's own figure."""
    import pandas as pd

    from amc.latency import FakeRuntime, use_runtime

    budget, said = 0.8, []
    with use_runtime(FakeRuntime(ms_per_mmac=0.05, overhead_ms=0.3)):
        res = compress(r20_ckpt, "resnet20", tiny_splits, quick(budget=f"latency={budget}", method="optuna"),
                       tmp_path / "run", progress=said.append)
    m = res.metrics
    aim = m["latency_search_target"]
    assert 0 < m["latency_search_measured"] and 0 < m["latency_search_predicted"] <= 1.0 and 0 < aim <= 1.0
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(trials) == 3 and (trials["latency"].dropna() <= aim + 1e-6).all()
    assert m["latency_fit_within"] == (m["latency_fit_measured"] <= budget)
    assert any(f"the search aims at {aim:.2%}" in line for line in said)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| latency estimate | the search aimed at " in report and "the chosen policy predicted" in report
    with use_runtime(FakeRuntime(ms_per_mmac=0.05, overhead_ms=0.3)):
        off = compress(r20_ckpt, "resnet20", tiny_splits,
                       quick(budget=f"latency={budget}", method="optuna", latency_search_rounds=0), tmp_path / "off")
    assert "latency_search_target" not in off.metrics
    assert (pd.read_csv(tmp_path / "off" / "trials.csv")["latency"].dropna() <= budget + 1e-6).all()


def test_latency_fit_judges_the_kept_policy_on_more_than_one_reading(tmp_path, tiny_splits, r20_ckpt, monkeypatch):
    """``latency_confirm`` (default 2): the fit to a latency budget, and the aim before the search, measure a
    candidate within it twice more and judge it on the median of the three readings (a fake runtime)."""
    import amc.pipeline
    from amc.latency import FakeRuntime, use_runtime

    fits, aims = [], []
    real_fit, real_aim = amc.pipeline.fit_to_budget, amc.pipeline.aim_search
    monkeypatch.setattr(amc.pipeline, "fit_to_budget", lambda *a, **kw: fits.append(real_fit(*a, **kw)) or fits[-1])
    monkeypatch.setattr(amc.pipeline, "aim_search", lambda *a, **kw: aims.append(real_aim(*a, **kw)) or aims[-1])
    with use_runtime(FakeRuntime(ms_per_mmac=0.05, overhead_ms=0.3)):
        res = compress(r20_ckpt, "resnet20", tiny_splits, quick(budget="latency=0.8", method="optuna"), tmp_path)
    for steps in (fits[0].steps, aims[0][1]):  # the fit of the kept policy, and the aim before the search
        within = [s for s in steps if s["measured"] <= 0.8]
        assert within and all(s["readings"] == 3.0 for s in within)
    assert res.metrics["latency_fit_measured"] == fits[0].measured <= 0.8


def test_latency_fit_candidates_fits_each_final_candidate_by_measurement(tmp_path, tiny_splits, r20_ckpt, monkeypatch):
    """``latency_fit_candidates``: the final choice hands each candidate to ``amc.latency_check.fitted``'s fit
    (a fake runtime) before it re-scores them; off by default."""
    import amc.pipeline
    from amc.latency import FakeRuntime, use_runtime

    made = []
    real = amc.pipeline.fitted

    def counting(*args, **kw):
        adjust = real(*args, **kw)
        made.append([])
        return lambda p: made[-1].append(p) or adjust(p)

    monkeypatch.setattr(amc.pipeline, "fitted", counting)
    with use_runtime(FakeRuntime(ms_per_mmac=0.05, overhead_ms=0.3)):
        compress(r20_ckpt, "resnet20", tiny_splits, quick(budget="latency=0.8", method="optuna"), tmp_path / "off")
        assert made == []
        res = compress(r20_ckpt, "resnet20", tiny_splits,
                       quick(budget="latency=0.8", method="optuna", latency_fit_candidates=True), tmp_path / "on")
    assert len(made) == 1 and len(made[0]) >= 2  # the search's top and its starting policies, each fitted
    assert res.metrics["latency_fit_within"] == (res.metrics["latency_fit_measured"] <= 0.8)
