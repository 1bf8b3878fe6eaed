import pandas as pd

from amc.plots import param_bars, sensitivity_curves, weight_histograms
from amc.pruners.finegrained import apply_policy
from tests.conftest import make_tiny_vgg


def test_plots_write_png_files(tmp_path, tiny_vgg):
    pruned = make_tiny_vgg()
    apply_policy(pruned, {"backbone.conv1": 0.8})
    curves = pd.DataFrame({"layer": ["a", "a", "b", "b"], "ratio": [0, 0.5, 0, 0.5], "accuracy": [0.9, 0.8, 0.9, 0.5]})
    paths = [weight_histograms(tiny_vgg, tmp_path / "w.png", pruned=pruned),
             sensitivity_curves(curves, tmp_path / "s.png"), param_bars(tiny_vgg, tmp_path / "p.png", pruned)]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "s.png", "w.png"]  # no temporary files left
