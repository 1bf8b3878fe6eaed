"""The evaluator: one working copy restored per episode, re-measured costs, rewards, build()."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from amc.budget import Budget
from amc.errors import BudgetError, PolicyError
from amc.evaluator import REWARDS, EvalConfig, Evaluator, resolve_score_on
from amc.metrics import sparse_size_bits
from tests.conftest import make_tiny_resnet, make_tiny_vgg

FAST = EvalConfig(calib_images=256)  # 256 of the 768 tiny train images: a quick recalibration


@pytest.fixture
def evaluator(tiny_splits):
    return Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), FAST)


def test_result_fields_and_feasibility(evaluator):
    pol = evaluator.uniform_policy()
    res = evaluator.evaluate(pol)
    assert res.feasible and res.reason == ""
    assert 0.0 <= res.accuracy <= 1.0
    assert res.size <= 0.5 + 1e-9
    assert res.reward == res.accuracy  # the default reward is AMC's accuracy reward
    assert res.seconds > 0
    assert set(res.policy) == set(evaluator.names)


def test_dense_policy_is_infeasible_and_says_why(evaluator):
    res = evaluator.evaluate({})
    assert not res.feasible
    assert "size" in res.reason


def test_restores_between_episodes_and_leaves_dense_untouched(tiny_splits):
    dense = make_tiny_vgg()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    ev = Evaluator(dense, tiny_splits, Budget.parse("size=0.5"), FAST)
    a = ev.uniform_policy()
    b = ev.projector.project({n: 0.85 for n in ev.names})
    r1, r2, r3 = ev.evaluate(a), ev.evaluate(b), ev.evaluate(a)
    assert (r1.accuracy, r1.size) == (r3.accuracy, r3.size)
    assert r2.size < r1.size
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet])
@pytest.mark.parametrize("kind", ["size", "macs", "params"])
def test_measured_cost_meets_projection(tiny_splits, make, kind):
    ev = Evaluator(make(), tiny_splits, Budget(kind, 0.4), FAST)
    for actions in (0.0, 0.3, 0.9):
        res = ev.evaluate(ev.projector.project({n: actions for n in ev.names}))
        assert res.feasible, res.reason
        assert res.cost(kind) <= 0.4 + 1e-9
        assert res.cost(kind) <= ev.cost_model.fraction(res.policy) + 1e-9  # measured <= predicted


def test_build_matches_the_evaluated_masks(evaluator):
    pol = evaluator.uniform_policy()
    res = evaluator.evaluate(pol)
    model, masks = evaluator.build(pol)
    assert masks is not None and set(masks) == set(evaluator.names)
    total = sum(p.numel() for p in model.parameters())
    assert sparse_size_bits(model) / (32 * total) == pytest.approx(res.size)
    for n, m in masks.items():
        w = model.get_submodule(n).weight
        assert torch.all(w[~m] == 0)
        assert int(m.sum()) == w.numel() - round(pol[n] * w.numel())


@pytest.mark.parametrize("reward", sorted(REWARDS))
def test_rewards_registry(tiny_splits, reward):
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("macs=0.6"), EvalConfig(calib_images=256,
                                                                                       reward=reward))
    res = ev.evaluate(ev.uniform_policy())
    assert math.isfinite(res.reward)
    if reward == "error_log_flops":
        assert res.reward < 0
    elif reward == "acc_loss":
        assert res.accuracy - 0.2 < res.reward < res.accuracy  # minus 0.01 x a cross-entropy
    else:
        assert res.reward == pytest.approx(res.accuracy)  # feasible: no penalty


def test_penalty_reward_punishes_overshoot(tiny_splits):
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=256,
                                                                                      reward="acc_penalty"))
    res = ev.evaluate({})
    assert res.reward < res.accuracy


def test_finetune_recovery_keeps_pruned_weights_zero(tiny_splits):
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"),
                   EvalConfig(calib_images=256, recovery="finetune", recovery_steps=3))
    pol = ev.uniform_policy()
    res = ev.evaluate(pol)
    assert res.feasible
    for n, m in ev.fine_masks(pol).items():
        assert torch.all(ev.work.get_submodule(n).weight[~m] == 0)


def test_finetune_recovery_scores_a_policy_the_same_every_time(tiny_splits):
    """Every policy recovers on the same batches: the reward is a function of the policy alone,
    and another ``recovery_seed`` draws other batches."""
    cfg = EvalConfig(calib_images=256, recovery="finetune", recovery_steps=3, recovery_lr=0.05)
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), cfg)
    pol = ev.uniform_policy()
    first = ev.evaluate(pol)
    ev.evaluate({n: 0.6 for n in ev.names})  # another policy in between
    assert ev.evaluate(pol).reward == first.reward
    other = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), replace(cfg, recovery_seed=1))
    assert other.evaluate(pol).reward != first.reward


def test_nan_model_is_never_feasible(tiny_splits):
    model = make_tiny_vgg()
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    ev = Evaluator(model, tiny_splits, Budget.parse("size=0.5"), FAST)
    res = ev.evaluate(ev.uniform_policy())
    assert not res.feasible
    assert "NaN" in res.reason
    assert math.isnan(res.reward)


def test_bad_input(tiny_splits, evaluator):
    with pytest.raises(PolicyError):
        evaluator.evaluate({"nope": 0.5})
    with pytest.raises(PolicyError):
        evaluator.evaluate({evaluator.names[0]: 1.0})
    with pytest.raises(BudgetError):
        Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.05"), EvalConfig(calib_images=256,
                                                                                      upper=0.5))
    with pytest.raises(PolicyError):
        EvalConfig(reward="nope")


def test_sensitivity_policy(evaluator):
    curves = evaluator.sensitivity(ratios=(0.5, 0.9))
    assert set(curves["layer"]) == set(evaluator.names)
    pol = evaluator.sensitivity_policy(curves)
    assert evaluator.evaluate(pol).feasible


@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet])
@pytest.mark.parametrize("round_to", [1, 4])
@pytest.mark.parametrize("score_on", ["masked", "physical"])
def test_channel_costs_match_the_physical_model(tiny_splits, make, round_to, score_on):
    pytest.importorskip("amc.pruners.channel")
    from amc.layers import count_macs, count_params

    dense = make()
    ev = Evaluator(dense, tiny_splits, Budget.parse("macs=0.5"),
                   EvalConfig(granularity="channel", calib_images=256, round_to=round_to, score_on=score_on))
    assert ev.names and "fc" not in ev.names and "classifier" not in ev.names  # outputs stay
    pol = ev.projector.project({n: 0.2 for n in ev.names})
    res = ev.evaluate(pol)
    assert res.feasible, res.reason
    small, masks = ev.build(pol)
    assert masks is None
    macs = count_macs(small)[0] / count_macs(dense)[0]
    assert res.macs == pytest.approx(macs, abs=1e-9)  # measured on the scored copy (masked or physical) = built
    assert ev.cost_model.fraction(pol) == pytest.approx(macs, abs=1e-9)  # the cost model is exact
    assert count_params(small) < count_params(dense)
    assert res.macs <= 0.5 + 1e-9


def test_latency_budget_through_the_lookup_table(tiny_splits, tmp_path, monkeypatch):
    pytest.importorskip("amc.pruners.channel")
    latency = pytest.importorskip("amc.latency")

    def analytic_ms(self, key):  # per-call overhead + work: repeatable, unlike timings on a shared CPU
        _kind, cin, cout, h, w, k, s, g = key
        return 0.001 + cin * cout * k * k * h * w / (s * s * g) * 1e-6

    monkeypatch.setattr(latency.LatencyTable, "_measure_key", analytic_ms)
    lut = latency.LatencyTable(tmp_path / "lut.csv", "cpu", batch=1, threads=1)
    cfg = EvalConfig(granularity="channel", calib_images=256, round_to=4)
    floor = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("latency=1.0"), cfg,
                      latency_table=lut).projector.floor_cost
    assert 0 < floor < 0.9  # channel pruning shrinks the table's predicted latency
    target = (1 + floor) / 2
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget("latency", target), cfg, latency_table=lut)
    res = ev.evaluate(ev.projector.project({}))
    assert res.latency is not None and res.latency <= target + 1e-9
    assert res.feasible, res.reason
    with pytest.raises(BudgetError, match="cannot be met"):
        Evaluator(make_tiny_vgg(), tiny_splits, Budget("latency", floor * 0.9), cfg, latency_table=lut)
    with pytest.raises(BudgetError, match="lookup table"):
        Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("latency=0.7"),
                  EvalConfig(granularity="channel", calib_images=256))
    with pytest.raises(BudgetError, match="channel pruning"):
        Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("latency=0.7"), FAST)


def test_fine_masks_equal_magnitude_mask(tiny_splits):
    """The searched masks are the ones ``amc.pruners.finegrained`` (and so a recipe) rebuilds."""
    from amc.pruners.finegrained import magnitude_mask

    dense = make_tiny_resnet()
    with torch.no_grad():  # fp16 round trip: many tied magnitudes, as in the shared checkpoints
        for p in dense.parameters():
            p.copy_(p.half().float())
    ev = Evaluator(dense, tiny_splits, Budget.parse("size=0.5"), FAST)
    pol = ev.projector.project({n: 0.37 for n in ev.names})
    for n, m in ev.fine_masks(pol).items():
        assert torch.equal(m, magnitude_mask(dense.get_submodule(n).weight, pol[n])), n


def test_acc_loss_reward_breaks_ties_by_heldout_loss(tiny_splits):
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=256,
                                                                                      reward="acc_loss"))
    res = ev.evaluate(ev.uniform_policy())
    ref = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), FAST).evaluate(ev.uniform_policy())
    assert res.accuracy == ref.accuracy  # same policy, same scoring
    loss = (res.accuracy - res.reward) / 0.01
    assert 0.0 < loss < 20.0  # a mean cross-entropy, strictly below the accuracy
    assert REWARDS["acc_loss"](0.9, {"loss": 2.0}, Budget.parse("size=0.5")) == pytest.approx(0.88)


CHANNEL = EvalConfig(granularity="channel", calib_images=256, round_to=1)


@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet])
def test_physical_and_masked_scoring_agree(tiny_splits, make):
    from amc.train import recalibrate_bn

    budget = Budget.parse("macs=0.5")
    masked = Evaluator(make(), tiny_splits, budget, replace(CHANNEL, score_on="masked"))
    physical = Evaluator(make(), tiny_splits, budget, replace(CHANNEL, score_on="physical"))
    assert physical.physical and not masked.physical
    g = torch.Generator().manual_seed(0)
    policies = [masked.uniform_policy()] + [
        masked.projector.project({n: float(torch.rand((), generator=g)) for n in masked.names}) for _ in range(3)]
    for pol in policies:
        a, b = masked.evaluate(pol), physical.evaluate(pol)
        assert a.accuracy == b.accuracy and a.feasible == b.feasible, (a, b)
        for kind in ("size", "macs", "params"):
            assert a.cost(kind) == pytest.approx(b.cost(kind), abs=1e-9)
        # the masked working copy (as just scored) and the physically pruned copy give the same outputs
        small, _ = physical.build(pol)
        recalibrate_bn(small, physical._calib)
        x = physical._eval[0][0]
        with torch.no_grad():
            torch.testing.assert_close(small(x), masked.work(x), rtol=1e-4, atol=1e-4)


def test_auto_scores_channel_policies_physically_on_the_cpu(tiny_splits):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_score_on(CHANNEL, cpu) == "physical"
    assert resolve_score_on(CHANNEL, cuda) == "masked"  # on a GPU the dense masked copy is the fast one
    assert resolve_score_on(replace(CHANNEL, recovery="finetune"), cpu) == "masked"
    assert resolve_score_on(FAST, cpu) == "masked"  # fine-grained: no smaller model
    assert resolve_score_on(replace(CHANNEL, score_on="masked"), cpu) == "masked"
    assert Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("macs=0.5"), CHANNEL).physical
    with pytest.raises(PolicyError, match="channel pruning"):
        EvalConfig(score_on="physical")  # fine-grained
    with pytest.raises(PolicyError, match="score_on"):
        EvalConfig(granularity="channel", score_on="nope")


def test_physical_scoring_keeps_the_infeasible_and_nan_paths(tiny_splits):
    cfg = replace(CHANNEL, score_on="physical")
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("macs=0.5"), cfg)
    dense = ev.evaluate({})
    assert not dense.feasible and "macs" in dense.reason  # measured on the (unpruned) physical copy
    model = make_tiny_vgg()
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    ev = Evaluator(model, tiny_splits, Budget.parse("macs=0.5"), cfg)
    res = ev.evaluate(ev.uniform_policy())
    assert not res.feasible and "NaN" in res.reason and math.isnan(res.reward)


def test_physical_scoring_with_a_finetune_recovery(tiny_splits):
    cfg = replace(CHANNEL, score_on="physical", recovery="finetune", recovery_steps=2)
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("macs=0.5"), cfg)
    pol = ev.uniform_policy()
    first, again = ev.evaluate(pol), ev.evaluate(pol)
    assert first.feasible and 0.0 <= first.accuracy <= 1.0
    assert first.accuracy == again.accuracy  # the same batches every time: the policy alone decides


RECONSTRUCT = EvalConfig(granularity="channel", calib_images=128, round_to=1, recovery="reconstruct",
                         reconstruct_images=128)


@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet])
def test_reconstruct_recovery_refits_the_pruned_copy_and_keeps_the_dense_outputs(tiny_splits, make):
    dense = make()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    cfg = RECONSTRUCT
    ev = Evaluator(dense, tiny_splits, Budget.parse("macs=0.5"), cfg)
    assert ev.physical  # it refits the physically smaller copy
    bn = Evaluator(dense, tiny_splits, Budget.parse("macs=0.5"), replace(cfg, recovery="bn", score_on="physical"))
    pol = ev.uniform_policy()
    r1 = ev.evaluate(pol)
    assert r1.feasible and 0.0 <= r1.accuracy <= 1.0 and r1.macs <= 0.5 + 1e-6
    assert ev._dense_out  # the dense layers' outputs are kept for the next policies
    r2 = ev.evaluate(pol)  # from the kept outputs: the same refit, the same score
    assert r2.accuracy == r1.accuracy and r2.macs == r1.macs
    assert bn.evaluate(pol).macs == r1.macs  # the same architecture as without the refit
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reconstruct_recovery_refits_what_reconstruct_refits(tiny_splits):
    from amc.pruners.channel import prune_channels
    from amc.pruners.reconstruct import reconstruct

    cfg = RECONSTRUCT
    ev = Evaluator(make_tiny_resnet(), tiny_splits, Budget.parse("macs=0.5"), cfg)
    pol = ev.uniform_policy()
    ev.evaluate(pol)
    plan = ev.plan(pol)
    kept, fresh = prune_channels(ev.dense, plan, torch.zeros(1, 3, 32, 32)), \
        prune_channels(ev.dense, plan, torch.zeros(1, 3, 32, 32))
    reconstruct(ev.dense, kept, plan, ev._calib, images=128, dense_outputs=ev._dense_out)  # the kept outputs
    report = reconstruct(ev.dense, fresh, plan, ev._calib, images=128)  # computed afresh
    assert report.layers  # something was refitted
    for (k, a), b in zip(kept.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("bad", [dict(granularity="fine"), dict(granularity="channel", score_on="masked"),
                                 dict(granularity="channel", reconstruct_images=0)])
def test_reconstruct_recovery_refuses_what_it_cannot_refit(bad):
    with pytest.raises(PolicyError):
        EvalConfig(recovery="reconstruct", **bad)


def test_aim_search_retargets_the_evaluator_to_the_measured_budget(tiny_splits, tmp_path, monkeypatch):
    """``amc.latency_check.aim_search``: a table that over-predicts the measurement by 1/0.9 makes the
    evaluator search at budget / 0.9 on the table; its starting policy and results follow; the final fit
    (``fit_to_budget``) brings a policy found there back within the user's budget by measurement."""
    from amc.latency_check import aim_search, fit_to_budget

    latency = pytest.importorskip("amc.latency")
    monkeypatch.setattr(latency.LatencyTable, "_measure_key", lambda self, key: 0.001 + key[1] * key[2] * key[5] ** 2
                        * key[3] * key[4] / (key[6] ** 2 * key[7]) * 1e-6)
    lut = latency.LatencyTable(tmp_path / "lut.csv", "cpu", batch=1, threads=1)
    cfg = EvalConfig(granularity="channel", calib_images=256, round_to=4)
    dense = make_tiny_vgg()
    budget = Budget("latency", 0.6)
    ev = Evaluator(dense, tiny_splits, budget, cfg, latency_table=lut)

    def fraction(model):  # the "measurement": 0.9 of the table's prediction
        return 0.9 * lut.predict(model) / lut.predict(dense)

    said: list[str] = []
    target, steps = aim_search(ev, budget, fraction, rounds=2, say=said.append)
    assert len(steps) == 2 and steps[-1]["measured"] <= 0.6
    assert ev.budget == Budget("latency", target) and ev.projector.budget == ev.budget
    assert 0.6 / 0.9 * 0.97 <= target <= 0.6 / 0.9 * 1.03  # channels rounded to 4: the line through 2 points
    assert "aims at" in said[0]
    uniform = ev.uniform_policy()  # the least uniform ratio within the aim (channels in steps of 4: under it)
    res = ev.evaluate(uniform)
    assert res.feasible and res.latency <= target + 1e-9
    assert 0.6 < ev.evaluate(ev.projector.top_up(uniform)).latency <= target + 1e-9  # the aim spent beyond 0.6
    fit = fit_to_budget(ev, budget, uniform, fraction, rounds=4, say=said.append)
    assert fit.within and fit.measured <= 0.6 and said[-1].startswith("latency fit")
    with pytest.raises(BudgetError, match="cannot be met"):
        ev.retarget(ev.projector.floor_cost * 0.5)
