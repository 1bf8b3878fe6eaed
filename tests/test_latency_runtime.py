"""The latency machinery on a fake runtime whose times are known: no test here reads this machine's clock."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from amc.errors import AmcError
from amc.latency import FakeRuntime, LatencyTable, MeasuredRuntime, Target, measure, paired, use_runtime
from amc.latency.runtime import current_runtime
from amc.layers import count_macs
from amc.pruners.channel import channel_table, plan_channels, prune_channels, uniform_policy
from tests.conftest import make_tiny_resnet


def _pair() -> tuple[nn.Module, nn.Module]:
    wide = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    thin = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    return wide, thin


def test_target_is_one_checked_object():
    t = Target(threads=2, batch=4, input_shape=(3, 16, 16))
    assert t.describe() == "cpu torch 2 threads bs4 3x16x16 contiguous"
    assert json.loads(json.dumps(t.row()))["input_shape"] == [3, 16, 16]
    assert t.with_input((8,)).input_shape == (8,) and t.with_input((8,)).threads == 2
    assert Target.of("cpu", "onnxruntime").runtime == "onnxruntime"
    for bad in ({"runtime": "tensorrt"}, {"threads": 0}, {"layout": "nhwc"}, {"runtime": "cuda"},
                {"input_shape": (3, 0, 4)}):
        with pytest.raises(AmcError):
            Target(**bad)  # type: ignore[arg-type]


def test_fake_runtime_times_are_overhead_plus_macs():
    wide, _ = _pair()
    fake = FakeRuntime(ms_per_mmac=0.5, overhead_ms=1.0)
    macs = count_macs(wide, (2, 3, 16, 16))[0]
    ms = measure(wide, runs=3, target=Target(batch=2, input_shape=(3, 16, 16)), runtime=fake)
    assert ms == pytest.approx(1.0 + 0.5 * macs / 1e6)
    with use_runtime(fake):  # where none is passed, the current runtime times it
        assert current_runtime() is fake
        assert measure(wide, input_shape=(3, 16, 16), batch=2) == pytest.approx(ms)
    assert isinstance(current_runtime(), MeasuredRuntime)


def test_a_real_runtime_with_an_injected_clock():
    ticks = iter(range(1000))
    rt = MeasuredRuntime(clock=lambda: next(ticks) * 0.002)  # every clock read 2 ms later
    wide, _ = _pair()
    assert measure(wide, warmup=1, runs=5, target=Target(input_shape=(3, 8, 8)), runtime=rt) == pytest.approx(2.0)


def test_paired_ratio_is_the_median_of_rounds_and_immune_to_a_drifting_load():
    wide, thin = _pair()
    target = Target(input_shape=(3, 16, 16))
    base = FakeRuntime(0.01, 0.1)
    true = base.ms(count_macs(thin, (1, 3, 16, 16))[0]) / base.ms(count_macs(wide, (1, 3, 16, 16))[0])
    # the machine gets slower every round (the two warm-up calls, then two calls a round): the pair shares it
    drifting = FakeRuntime(0.01, 0.1, load=lambda call: 1.0 + 0.5 * (call // 2))
    p = paired(thin, wide, target, rounds=5, runs=3, runtime=drifting)
    assert p.fraction == pytest.approx(true) and p.spread == pytest.approx(0.0)
    assert p.speedup == pytest.approx(1 / true) and len(p.ratios) == 5
    assert p.dense_ms > p.model_ms > 0
    big, small = max(drifting.timed), min(drifting.timed)
    assert drifting.timed[2:6] == [big, small, small, big]  # rounds alternate which side goes first
    # two timings taken apart (dense alone, then the model under a heavier load) are off
    apart = FakeRuntime(0.01, 0.1, load=lambda call: 1.0 + 0.5 * call)
    unpaired = measure(thin, target=target, runtime=apart, runs=1) / measure(wide, target=target, runtime=apart)
    assert abs(unpaired - true) > 0.1
    m = p.metrics()
    assert m["latency_fraction"] == p.fraction and m["latency_device"] == target.describe()
    assert {"latency_speedup", "latency_ms", "dense_latency_ms", "latency_fraction_spread"} <= set(m)


def test_paired_spread_follows_the_rounds():
    wide, thin = _pair()
    jitter = [1.0, 1.3, 1.0, 0.8, 1.1]  # the load of the model's side in each round
    def load(call: int) -> float:
        r, side = divmod(call - 2, 2)  # after the two warm-up calls
        model_side = (side == 1) if r % 2 == 0 else (side == 0)
        return jitter[r] if call >= 2 and model_side else 1.0

    p = paired(thin, wide, Target(input_shape=(3, 16, 16)), rounds=5, runs=2,
               runtime=FakeRuntime(0.01, 0.1, load=load), spread_limit=float("inf"))  # these 5 rounds alone
    base = p.ratios[0]
    assert [r / base for r in p.ratios] == pytest.approx(jitter)
    assert p.fraction == pytest.approx(base * 1.0)  # the median round, not the mean
    assert p.low == pytest.approx(base) and p.high == pytest.approx(base * 1.1)
    assert p.spread == pytest.approx(base * 0.05)
    with pytest.raises(AmcError):
        paired(thin, wide, rounds=0)


def test_a_paired_measurement_hit_by_a_stall_is_extended():
    """Two of five rounds stalled on the model's side: the ratios spread, more rounds are timed until they
    do not (the median then the quiet rounds' ratio); a machine that never settles stops at max_rounds."""
    wide, thin = _pair()
    target = Target(input_shape=(3, 16, 16))
    base = FakeRuntime(0.01, 0.1)
    true = base.ms(count_macs(thin, (1, 3, 16, 16))[0]) / base.ms(count_macs(wide, (1, 3, 16, 16))[0])

    def model_side(call: int) -> bool:
        r, side = divmod(call - 2, 2)  # after the two warm-up calls
        return call >= 2 and ((side == 1) if r % 2 == 0 else (side == 0))

    def stalled(call: int) -> float:  # rounds 1 and 3 of the first five: the model's side 1.8x slower
        return 1.8 if model_side(call) and (call - 2) // 2 in (1, 3) else 1.0

    p = paired(thin, wide, target, rounds=5, runs=2, runtime=FakeRuntime(0.01, 0.1, load=stalled))
    assert len(p.ratios) > 5 and p.fraction == pytest.approx(true)
    assert sorted(p.ratios)[-2:] == pytest.approx([1.8 * true] * 2)
    once = paired(thin, wide, target, rounds=5, runs=2, runtime=FakeRuntime(0.01, 0.1, load=stalled),
                  spread_limit=float("inf"))
    assert len(once.ratios) == 5 and once.spread > 0.05 * once.fraction  # as it was: 5 rounds, a wide spread

    def noisy(call: int) -> float:  # every other round stalled, for ever
        return 1.8 if model_side(call) and ((call - 2) // 2) % 2 else 1.0

    capped = paired(thin, wide, target, rounds=5, runs=2, runtime=FakeRuntime(0.01, 0.1, load=noisy), max_rounds=9)
    assert len(capped.ratios) == 9


def test_the_table_predicts_and_the_calibration_fits_the_fake(tmp_path):
    """Each table entry is one block's time; the dense model and its thinner copies measured end to end
    fit ``scale * summed + overhead`` exactly when the runtime is affine in the MACs."""
    dense = make_tiny_resnet()
    fake = FakeRuntime(ms_per_mmac=0.02, overhead_ms=0.0)
    target = Target(input_shape=(3, 32, 32))
    lut = LatencyTable(tmp_path / "lut.csv", target=target, runtime=fake)
    table = channel_table(dense)
    keys = LatencyTable.layer_keys(table)
    assert lut.predict(dense) == pytest.approx(sum(lut.entries[k] for k in keys))
    dense_ms = lut.calibrate(dense, thin=(0.5, 0.8))
    assert dense_ms == pytest.approx(fake.ms(count_macs(dense, (1, 3, 32, 32))[0]))
    x = torch.zeros(1, 3, 32, 32)
    plan = plan_channels(dense, uniform_policy(table, 0.3), example_inputs=x)
    small = prune_channels(dense, plan, x)
    predicted, measured = lut.predict(dense, plan), measure(small, target=target, runtime=fake)
    assert predicted == pytest.approx(measured, rel=0.02)  # the fake's conv MACs are what the table sums
    again = LatencyTable(tmp_path / "lut.csv", target=target, runtime=FakeRuntime(0.02, 0.0))
    assert again.entries.keys() == lut.entries.keys()  # the fake's rows are its own, cached
    assert all(again.entries[k] == pytest.approx(v, abs=1e-6) for k, v in lut.entries.items())
    assert LatencyTable(tmp_path / "lut.csv", target=target, runtime=FakeRuntime(0.03, 0.0)).entries == {}
