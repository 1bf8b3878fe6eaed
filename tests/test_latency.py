import copy
import csv

import pytest
import torch

from amc.errors import AmcError
from amc.latency import LatencyTable, measure, validate
from amc.pruners.channel import channel_table, find_uniform_ratio, plan_channels, prune_channels, uniform_policy
from tests.conftest import make_tiny_resnet


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_measure_returns_a_median_and_restores_threads(tiny_vgg, backend):
    before = torch.get_num_threads()
    ms = measure(tiny_vgg, "cpu", batch=2, threads=1, backend=backend, warmup=1, runs=5)
    assert ms > 0
    assert torch.get_num_threads() == before
    assert not any(p.is_cuda for p in tiny_vgg.parameters())  # the argument is untouched


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "tensorrt"}, "unknown latency backend"),
    ({"runs": 0}, "runs >= 1"),
])
def test_measure_rejects_bad_arguments(tiny_vgg, kwargs, message):
    with pytest.raises(AmcError, match=message):
        measure(tiny_vgg, **kwargs)


def test_lookup_table_caches_predicts_and_validates(tmp_path, monkeypatch):
    dense = make_tiny_resnet()
    plan = plan_channels(dense, uniform_policy(dense, find_uniform_ratio(dense, 0.5, 1)), "l2", 1)
    small = prune_channels(dense, plan)
    path = tmp_path / "lut.csv"
    lut = LatencyTable(path, "cpu", batch=1, threads=1, warmup=1, runs=3)
    pred_plan = lut.predict(dense, plan)
    assert pred_plan == pytest.approx(lut.predict(small))  # a plan on the dense model = the pruned model
    dense_ms = lut.predict(dense)
    # Tiny layers on a shared CPU need not time faster when thinner, so the check is on what is summed:
    # one measured entry per layer, the pruned model's keys with fewer channels, each read back as stored.
    dense_keys = LatencyTable.layer_keys(channel_table(dense))
    small_keys = LatencyTable.layer_keys(channel_table(small))
    assert dense_ms == pytest.approx(sum(lut.entries[k] for k in dense_keys)) and dense_ms > 0
    assert pred_plan == pytest.approx(sum(lut.entries[k] for k in small_keys)) and pred_plan > 0
    assert sum(k[1] * k[2] for k in small_keys) < sum(k[1] * k[2] for k in dense_keys)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(lut.entries) > 0 and {r["kind"] for r in rows} >= {"conv", "linear"}

    calls = []
    again = LatencyTable(path, "cpu", batch=1, threads=1)
    monkeypatch.setattr(again, "_measure_key", lambda key: calls.append(key) or 1.0)
    assert again.predict(small) == pytest.approx(pred_plan) and calls == []  # read from the CSV
    other = LatencyTable(path, "cpu", batch=4, threads=1)  # another target: nothing reused
    monkeypatch.setattr(other, "_measure_key", lambda key: calls.append(key) or 1.0)
    other.predict(small)
    other.save()
    assert calls and len(list(csv.DictReader(open(path, newline="")))) == len(lut.entries) + len(other.entries)

    rows = validate(lut, {"dense": dense, "pruned": small}, dense="dense", backend_runs=3)
    assert [r["model"] for r in rows] == ["dense", "pruned"]
    assert rows[0]["calibrated_error"] == pytest.approx(0.0)
    assert all(r["measured_ms"] > 0 and "error" in r for r in rows)


def test_counts_cost_follows_the_plan(tmp_path, monkeypatch):
    dense = make_tiny_resnet()
    table = channel_table(dense)
    lut = LatencyTable(None, "cpu")
    monkeypatch.setattr(lut, "_measure_key", lambda key: float(key[1] * key[2]))  # ~ in x out channels
    cost = lut.counts_cost(table)
    full = cost({})
    assert cost({table.roots[0]: 4}) < full


def test_calibrate_counts_what_the_layers_leave_out(monkeypatch):
    """The dense model measured end to end: the part its summed layers do not explain is kept as a
    fixed overhead in every prediction, so a pruned model's predicted fraction is no longer optimistic;
    a model faster than its table gets no negative overhead."""
    import amc.latency.table

    dense = make_tiny_resnet()
    table = channel_table(dense)
    lut = LatencyTable(None, "cpu")
    monkeypatch.setattr(lut, "_measure_key", lambda key: 0.01 * key[1] * key[2])
    bare = lut.counts_cost(table)
    layers, thin = bare({}), bare({table.roots[0]: 4})
    monkeypatch.setattr(amc.latency.table, "measure", lambda *a, **k: layers + 2.0)
    assert lut.calibrate(dense) == pytest.approx(layers + 2.0) and lut.overhead_ms == pytest.approx(2.0)
    cost = lut.counts_cost(table)
    assert cost({}) == pytest.approx(layers + 2.0) and cost({table.roots[0]: 4}) == pytest.approx(thin + 2.0)
    assert cost({table.roots[0]: 4}) / cost({}) > thin / layers  # the overhead does not shrink
    assert lut.predict(dense) == pytest.approx(layers + 2.0)
    assert lut.predict(dense, overhead=False) == pytest.approx(layers)
    monkeypatch.setattr(amc.latency.table, "measure", lambda *a, **k: 0.5 * layers)
    lut.calibrate(dense)
    assert lut.overhead_ms == 0.0


def test_malformed_table_is_one_clear_error(tmp_path):
    path = tmp_path / "lut.csv"
    path.write_text("target,backend,batch,threads,kind,in_c,out_c,in_h,in_w,kernel,stride,groups,ms\n"
                    "x,torch,one,1,conv,3,8,32,32,3,1,1,0.1\n")
    with pytest.raises(AmcError, match="malformed"):
        LatencyTable(path, "cpu")


@pytest.mark.gpu
def test_measure_on_cuda(tiny_vgg):
    ms = measure(tiny_vgg, "cuda", batch=256, warmup=2, runs=5)
    assert ms > 0
    lut = LatencyTable(None, "cuda", batch=256, warmup=1, runs=3)
    assert lut.predict(tiny_vgg) > 0


def test_calibrate_with_thinner_copies_fits_a_scale(monkeypatch):
    """With ``thin`` ratios the dense model and its uniformly thinner copies are measured end to end and
    ``measured = scale * summed + overhead`` is fitted: a gap that grows with the layers (here 10% of
    them) becomes a scale, not a fixed overhead that would make thin models look slow."""
    import amc.latency.table

    dense = make_tiny_resnet()
    lut = LatencyTable(None, "cpu")
    monkeypatch.setattr(lut, "_measure_key", lambda key: 0.01 * key[1] * key[2])

    def e2e(m, *a, **k):
        return 1.1 * lut.predict(m, overhead=False) + 0.3  # what the layers leave out: 10% of them and 0.3 ms

    monkeypatch.setattr(amc.latency.table, "measure", e2e)
    layers = lut.predict(dense, overhead=False)
    assert lut.calibrate(dense, thin=(0.5, 0.8)) == pytest.approx(1.1 * layers + 0.3)
    assert lut.scale == pytest.approx(1.1) and lut.overhead_ms == pytest.approx(0.3)
    thin = amc.latency.table._thin_models(dense, (0.8,), (3, 32, 32))[0]
    assert lut.predict(thin) == pytest.approx(e2e(thin))
    lut.calibrate(dense)  # the dense model alone: the whole gap a fixed overhead again
    assert lut.scale == 1.0 and lut.overhead_ms == pytest.approx(0.1 * layers + 0.3)


def test_fit_line_keeps_the_overhead_non_negative():
    from amc.latency import _fit_line

    assert _fit_line([(2.0, 2.2), (1.0, 1.1), (0.5, 0.55)]) == pytest.approx((1.1, 0.0))
    a, b = _fit_line([(2.0, 2.0), (1.0, 0.8)])  # a free fit would cross below 0 at summed 0
    assert b == 0.0 and a == pytest.approx((2 * 2.0 + 0.8) / 5.0)
    assert _fit_line([(2.0, 2.5), (2.0, 2.5)]) == (1.0, 0.5)  # no spread: the one-point rule
    assert _fit_line([(2.0, 1.0)]) == (1.0, 0.0)  # faster than its table: no negative overhead


def test_the_cpu_copy_is_timed_in_the_contiguous_layout():
    """A finetune leaves channels_last weights (the training layout); the CPU timing converts its copy
    back, so a model measures the same before and after a finetune, and the caller's model is untouched."""
    from amc.cpuconv import inference_layout, training_layout

    model = training_layout(make_tiny_resnet())
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert weights and all(not p.is_contiguous() for p in weights)
    copy_ = inference_layout(copy.deepcopy(model))
    for p in copy_.parameters():
        if p.dim() == 4:
            assert p.stride() == torch.empty_like(p, memory_format=torch.contiguous_format).stride()
    assert all(not p.is_contiguous() for p in weights)  # the original keeps its layout
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(copy_.eval()(x), model.eval()(x), atol=1e-5)
