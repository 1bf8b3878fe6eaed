"""Every registered searcher is a method of ``amc.compress``: random search and CMA-ES end to end on a tiny
model (a registry entry is all it takes to reach the API, the CLI and the service)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import amc
from amc.search.registry import SEARCHERS
from tests.test_api import FAST, Net, image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("five") / "data", train=8, test=4)


@pytest.mark.parametrize("method", ["random", "cmaes"])
def test_compress_with_a_sampler_searcher(tmp_path, folder, method):
    assert method in SEARCHERS
    torch.manual_seed(0)
    res = amc.compress(Net(), budget="macs=0.6", data=folder, method=method, episodes=4, finetune=0.0,
                       run_dir=tmp_path / "run", device="cpu", **FAST)
    assert res.metrics["macs_fraction"] <= 0.6 + 1e-6
    recipe = amc.Recipe.load(res.recipe_path)
    assert recipe.search is not None and recipe.search.method == method and recipe.search.episodes == 4
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == 4  # the baselines enqueued first count among the asked trials
    assert set(complete["origin"]) >= {"uniform"}
    assert all(math.isfinite(r) for r in complete["reward"])
