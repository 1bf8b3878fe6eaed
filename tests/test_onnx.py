import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import amc
from amc.errors import AmcError
from amc.export.onnx import INPUT, check_onnx, export_onnx, io_names
from amc.layers import output_shapes
from amc.models import build_model
from amc.pruners.channel import plan_channels, prune_channels, uniform_policy
from tests.conftest import make_tiny_resnet, make_tiny_vgg
from tests.test_model_shapes import ConcatOutputs, TinyDetector, TwoInputs, block, two_inputs


class YoloLike(nn.Module):
    """Returns ``(predictions, [feature maps])`` as a plain tuple, as YOLOv5 and YOLOv8 do in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.s1, self.s2 = block(3, 16, 2), block(16, 32, 2)
        self.h1, self.h2 = nn.Conv2d(16, 6, 1), nn.Conv2d(32, 6, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        p1 = self.s1(x)
        feats = [self.h1(p1), self.h2(self.s2(p1))]
        return torch.cat([f.flatten(2) for f in feats], 2), feats


class ImageList(nn.Module):
    """Takes a list of 3xHxW images, as torchvision's detectors do, and returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = block(3, 16), nn.Conv2d(16, 4, 1)

    def forward(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"maps": self.head(self.body(torch.stack(images)))}


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


def test_several_inputs_and_nested_outputs_are_exported_named(tmp_path):
    image, depth = two_inputs()
    cases = [(TwoInputs(), (image, depth), ["image", "depth"], ["logits"]),
             (TwoInputs(), {"depth": depth, "image": image}, ["depth", "image"], ["logits"]),
             (ConcatOutputs(), torch.randn(1, 3, 16, 16), [INPUT], ["out", "feat"]),
             (TinyDetector(), torch.randn(1, 3, 32, 32), [INPUT], ["boxes.0", "boxes.1", "scores.0", "scores.1"]),
             # a plain tuple's paths are positions, under "output" (an ONNX value named "0" is invalid)
             (YoloLike(), torch.randn(1, 3, 32, 32), [INPUT], ["output.0", "output.1.0", "output.1.1"]),
             # a list of images is one ONNX input per image (its first dimension is not a batch)
             (ImageList(), ([torch.randn(3, 16, 16), torch.randn(3, 16, 16)],), ["images.0", "images.1"], ["maps"])]
    for i, (model, x, ins, outs) in enumerate(cases):
        small, _ = amc.prune_to_budget(model.eval(), x, "macs=0.6")
        assert io_names(small, x) == (ins, outs)
        path = export_onnx(small, tmp_path / f"m{i}.onnx", example_inputs=x)
        proto = onnx.load(str(path))
        assert [v.name for v in proto.graph.input] == ins and [v.name for v in proto.graph.output] == outs
        assert check_onnx(small, path, example_inputs=x) <= 1e-4


def test_a_dict_output_segmenter_prunes_and_exports(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.segmentation.lraspp_mobilenet_v3_large(num_classes=4, weights=None,
                                                              weights_backbone=None).eval()
    x = torch.randn(1, 3, 64, 64)
    small, info = amc.prune_to_budget(model, x, "macs=0.5")
    assert info.met
    with torch.no_grad():
        assert output_shapes(small(x)) == output_shapes(model(x)) == [(1, 4, 64, 64)]
    assert any("model's outputs" in why for why in info.held.values())  # the classifier heads
    path = export_onnx(small, tmp_path / "seg.onnx", example_inputs=x)
    assert [v.name for v in onnx.load(str(path)).graph.output] == ["out"]
    assert check_onnx(small, path, example_inputs=x, atol=1e-3) <= 1e-3
