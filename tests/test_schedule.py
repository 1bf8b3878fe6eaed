"""Iterative pruning: schedule math (monotone, hits the final sparsity) and prune/finetune rounds."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from amc.errors import PolicyError
from amc.pruners.schedule import (
    SCHEDULES,
    IterativeSchedule,
    iterative_prune,
    monotone_mask,
    schedule_policies,
    sparsity_at,
)
from amc.train import FinetuneConfig
from tests.conftest import make_tiny_vgg

POLICY = {"backbone.conv1": 0.6, "backbone.conv2": 0.8, "classifier": 0.5}


@given(st.sampled_from(SCHEDULES), st.integers(1, 30), st.floats(0.0, 0.99), st.floats(0.0, 0.99))
def test_schedule_is_monotone_and_hits_final(kind, steps, initial, final):
    values = [sparsity_at(t, steps, initial, final, kind) for t in range(steps + 1)]
    assert values[0] == min(initial, final)
    assert values[-1] == final
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert all(min(initial, final) <= v <= final for v in values)


def test_agp_formula_and_shape():
    # Zhu & Gupta: s_t = s_f + (s_i - s_f) (1 - t/n)^3
    assert sparsity_at(1, 4, 0.0, 0.8, "agp") == pytest.approx(0.8 - 0.8 * 0.75**3)
    assert sparsity_at(2, 4, 0.2, 0.8, "agp") == pytest.approx(0.8 - 0.6 * 0.5**3)
    agp = [sparsity_at(t, 10, 0.0, 0.9, "agp") for t in range(11)]
    steps = [b - a for a, b in itertools.pairwise(agp)]
    assert all(b < a for a, b in itertools.pairwise(steps))  # big steps first, small near the end
    lin = [sparsity_at(t, 4, 0.0, 0.8, "linear") for t in range(5)]
    assert lin == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert [sparsity_at(t, 3, 0.0, 0.7, "constant") for t in (1, 2, 3)] == [0.7, 0.7, 0.7]


def test_schedule_policies_end_at_final():
    pols = schedule_policies(POLICY, IterativeSchedule("agp", steps=3))
    assert len(pols) == 3 and pols[-1] == POLICY
    for name in POLICY:
        assert [p[name] for p in pols] == sorted(p[name] for p in pols)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"kind": "cubic"}, "unknown iterative schedule"),
    ({"steps": 0}, "steps >= 1"),
    ({"initial": 1.0}, "outside [0, 1)"),
    ({"epochs_per_step": -1.0}, "epochs_per_step"),
])
def test_bad_schedules(kwargs, words):
    with pytest.raises(PolicyError, match=words.replace("[", r"\[").replace(")", r"\)")):
        IterativeSchedule(**kwargs)


def test_monotone_mask_never_revives():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g)
    prev = monotone_mask(w, 0.3)
    assert int((~prev).sum()) == round(0.3 * w.numel())
    w2 = w * prev + torch.randn(64, 32, generator=g) * 5 * (~prev)  # pruned entries now look large
    nxt = monotone_mask(w2, 0.5, prev)
    assert int((~nxt).sum()) == round(0.5 * w.numel())
    assert bool((nxt <= prev).all())  # a subset of the previous mask


def _loader(n_batches: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
            for _ in range(n_batches)]


@pytest.mark.parametrize("kind", SCHEDULES)
def test_iterative_prune_reaches_final_with_finetuning(kind):
    model = make_tiny_vgg()
    before = {n: model.get_submodule(n).weight.detach().clone() for n in POLICY}
    rows: list[dict] = []
    result = iterative_prune(model, POLICY, kind, steps=3, loader=_loader(),
                             finetune_cfg=FinetuneConfig(lr=0.05), eval_loader=_loader(1), on_step=rows.append)
    assert [r["step"] for r in rows] == [1, 2, 3] and result.history == rows
    sparsities = [r["sparsity"] for r in rows]
    assert sparsities == sorted(sparsities)
    assert all(r["finetuned"] and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
    for name, s in POLICY.items():
        w = model.get_submodule(name).weight
        mask = result.masks[name]
        assert int((~mask).sum()) == round(s * w.numel())
        assert bool((w[~mask] == 0).all())
        assert not torch.equal(w, before[name] * mask)  # finetuning moved the kept weights
    if kind == "constant":
        assert sparsities[0] == sparsities[-1]
    else:
        assert sparsities[0] < sparsities[-1]


def test_iterative_prune_rejects_unknown_layers_and_step_conflicts():
    with pytest.raises(PolicyError, match="not in the model"):
        iterative_prune(make_tiny_vgg(), {"nope": 0.5}, "agp", steps=2)
    with pytest.raises(PolicyError, match="disagrees"):
        iterative_prune(make_tiny_vgg(), POLICY, IterativeSchedule(steps=2), steps=3)
