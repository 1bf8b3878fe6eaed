import onnx
import onnxruntime as ort
import pytest
import torch

from amc.errors import AmcError
from amc.export.onnx import INPUT, check_onnx, export_onnx
from amc.models import build_model
from amc.pruners.channel import plan_channels, prune_channels, uniform_policy
from tests.conftest import make_tiny_resnet, make_tiny_vgg


def pruned(make):
    model = make().eval()
    return prune_channels(model, plan_channels(model, uniform_policy(model, 0.4), "l2", 1))


@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet, lambda: build_model("mobilenet_v2")],
                         ids=["vgg", "resnet", "mobilenet_v2"])
def test_pruned_model_round_trips_through_onnxruntime(tmp_path, make):
    small = pruned(make)
    path = export_onnx(small, tmp_path / "m.onnx")
    assert check_onnx(small, path) <= 1e-4
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version >= 17
    x = torch.randn(3, 3, 32, 32)  # the batch dimension is dynamic
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), small(x), atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary left behind


def test_old_opset_is_refused(tmp_path, tiny_vgg):
    with pytest.raises(AmcError, match="opset"):
        export_onnx(tiny_vgg, tmp_path / "m.onnx", opset=13)


def test_mismatch_is_reported(tmp_path, tiny_vgg):
    path = export_onnx(tiny_vgg, tmp_path / "m.onnx")
    with torch.no_grad():
        tiny_vgg.classifier.bias.add_(1.0)  # the exported file no longer matches this model
    with pytest.raises(AmcError, match="differs"):
        check_onnx(tiny_vgg, path)
