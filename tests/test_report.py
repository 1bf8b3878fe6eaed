"""Run reports: every section writes its files and report.md links each of them."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from amc.layers import prunable_names
from amc.pruners.finegrained import apply_policy
from amc.report import (
    AccuracyVsBudget,
    Image,
    PolicyBars,
    SearchProgress,
    Sensitivity,
    Table,
    Text,
    WeightDistributions,
    markdown_table,
    run_report,
    search_progress_figure,
    write_report,
)
from tests.conftest import make_tiny_resnet, make_tiny_vgg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trials(n: int = 12) -> pd.DataFrame:
    rewards = [0.1 * ((i * 7) % 5) for i in range(n)]
    return pd.DataFrame({"episode": range(n), "reward": rewards, "feasible": [i % 3 != 0 for i in range(n)]})


def _sensitivity(names: list[str], column: str = "ratio") -> pd.DataFrame:
    rows = [{"layer": n, column: r, "accuracy": 0.9 - r * (i + 1) / 10} for i, n in enumerate(names)
            for r in (0.0, 0.3, 0.6, 0.9)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("model_fn", [make_tiny_vgg, make_tiny_resnet])
def test_report_writes_every_file(tmp_path, model_fn):
    dense, pruned = model_fn(), model_fn()
    names = prunable_names(dense)
    policy = dict.fromkeys(names, 0.5)
    apply_policy(pruned, policy)
    extra = tmp_path / "elsewhere.png"
    search_progress_figure(_trials()).savefig(extra)
    sections = [
        Text("Summary", "Compressed to 50%."),
        Table("Metrics", pd.DataFrame({"model": ["dense", "pruned"], "accuracy": [0.9, 0.88]}), csv=True),
        WeightDistributions(dense, pruned),
        Sensitivity(_sensitivity(names, "sparsity")),
        SearchProgress(_trials()),
        PolicyBars({"uniform": policy, "searched": {n: 0.2 + 0.05 * i for i, n in enumerate(names)}}),
        AccuracyVsBudget(pd.DataFrame({"method": ["uniform", "uniform", "amc", "amc"],
                                       "budget": [0.25, 0.5, 0.25, 0.5], "accuracy": [0.8, 0.85, 0.83, 0.87],
                                       "dense_accuracy": 0.9})),
        Image("External plot", extra),
    ]
    out = tmp_path / "run"
    result = write_report(out, *sections, title="Tiny run")
    text = result.path.read_text()
    assert text.startswith("# Tiny run")
    for s in sections:
        assert f"## {s.title}" in text
    linked = re.findall(r"\]\(([^)]+)\)", text)
    assert len(linked) >= 9
    for name in linked:
        assert (out / name).is_file(), name
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 6
    assert all(p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 100 for p in pngs)
    assert set(result.files) == set(out.iterdir())
    assert not list(out.glob("*.tmp"))
    assert "| model | accuracy |" in text and "| pruned | 0.88 |" in text
    assert pd.read_csv(out / "search_progress.csv").shape == (12, 3)


def test_report_rewrites_and_unique_slugs(tmp_path):
    t1 = Table("Same", pd.DataFrame({"a": [1]}))
    t2 = Table("Same", pd.DataFrame({"a": [2]}))
    write_report(tmp_path, Text("x", "first"))
    result = write_report(tmp_path, t1, t2, SearchProgress(_trials(3)), SearchProgress(_trials(4)))
    text = result.path.read_text()
    assert "first" not in text and text.count("## Same") == 2
    assert (tmp_path / "search_progress.png").exists() and (tmp_path / "search_progress_2.png").exists()


def test_search_progress_uses_given_best_and_handles_all_infeasible(tmp_path):
    df = _trials(5).assign(feasible=False)
    result = write_report(tmp_path, SearchProgress(df))
    assert "0 within budget" in result.path.read_text()
    df = _trials(5).assign(best=[0.1, 0.2, 0.2, 0.3, 0.3])
    assert (tmp_path / "search_progress.png").exists()
    write_report(tmp_path / "b", SearchProgress(df))


def test_markdown_table_formats():
    df = pd.DataFrame({"name": ["a|b", "c"], "x": [0.123456, float("nan")], "ok": [True, False]})
    lines = markdown_table(df, ".3f").splitlines()
    assert lines[0] == "| name | x | ok |"
    assert lines[2] == "| a\\|b | 0.123 | yes |"
    assert lines[3] == "| c |  | no |"


def test_missing_columns_raise(tmp_path):
    with pytest.raises(ValueError, match="lacks columns"):
        write_report(tmp_path, SearchProgress(pd.DataFrame({"episode": [1]})))
    with pytest.raises(ValueError, match="'ratio' or 'sparsity'"):
        write_report(tmp_path, Sensitivity(pd.DataFrame({"layer": ["a"], "accuracy": [0.5]})))


def test_run_report_from_a_recipe(tmp_path, monkeypatch):
    import torch

    from amc import models
    from amc.budget import Budget
    from amc.pruners.schedule import IterativeSchedule
    from amc.recipe import FinetuneSpec, Metrics, SearchInfo, make_recipe

    monkeypatch.setitem(models.MODELS, "tinyvgg", lambda num_classes=10: make_tiny_vgg())
    ckpt = tmp_path / "dense.pt"
    torch.save(make_tiny_vgg().state_dict(), ckpt)
    policy = {"backbone.conv1": 0.5, "classifier": 0.7}
    recipe = make_recipe("tinyvgg", ckpt, policy, budget=Budget("size", 0.5), search=SearchInfo("amc", 8, 1),
                         finetune=FinetuneSpec(iterative=IterativeSchedule("agp", 3)),
                         metrics=Metrics(accuracy=0.81, file_bytes=1234))
    pruned = make_tiny_vgg()
    apply_policy(pruned, policy)
    result = run_report(tmp_path / "run", recipe, dense=make_tiny_vgg(), compressed=pruned, trials=_trials(),
                        timings={"search": 1.5, "finetune": 2.25}, files={"model.sparse.safetensors": 1234},
                        baseline_policies={"uniform": dict.fromkeys(policy, 0.6)})
    text = result.path.read_text()
    for words in ("size=0.5", "amc, 8 episodes, seed 1", "agp x3", "| accuracy after finetune | 81.0% | test split |",
                  "| compressed file | 1.2 KiB | on disk |", "| finetune | 2.2 |",
                  "search_progress.png", "per_layer_policy.png", "weight_distributions.png"):
        assert words in text, words
    assert len(list((tmp_path / "run").glob("*.png"))) == 3


def test_search_progress_accepts_optuna_frames(tmp_path):
    df = pd.DataFrame({"trial": [2, 0, 1, 3], "state": ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"],
                       "reward": [0.5, 0.2, float("nan"), 0.4], "feasible": [True, True, None, False]})
    text = write_report(tmp_path, SearchProgress(df)).path.read_text()
    assert "4 episodes, 2 within budget; best reward 0.5 at episode 2" in text
