"""Model references of every form resolve in one place; weights load without pickle; bad input is one error."""

import pytest
import torch
from torch import nn

from amc.errors import CheckpointError
from amc.models import ModelRef, build_model, resolve_model


class TwoLayer(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean([2, 3]))


def make_two_layer(num_classes: int = 3) -> nn.Module:
    return TwoLayer(num_classes)


def make_fixed() -> nn.Module:  # takes no num_classes: called without it
    return TwoLayer(4)


def not_a_module() -> int:
    return 1


@pytest.mark.parametrize(("ref", "canonical"), [("resnet20", "zoo:resnet20"), ("zoo:vgg8", "zoo:vgg8"),
                                                ("torchvision:resnet18", "torchvision:resnet18"),
                                                ("mobilenet_v2", "torchvision:mobilenet_v2"),
                                                ("tests.test_model_refs:make_two_layer",
                                                 "tests.test_model_refs:make_two_layer")])
def test_references_parse_to_a_string_that_rebuilds(ref, canonical):
    parsed = ModelRef.parse(ref)
    assert str(parsed) == canonical
    assert ModelRef.parse(str(parsed)) == parsed


def test_torchvision_reference_at_five_classes():
    model = resolve_model("torchvision:resnet18", num_classes=5)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    assert not model.training


def test_timm_reference():
    pytest.importorskip("timm")
    model = resolve_model("timm:resnet10t", num_classes=4)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_factory_reference_gets_num_classes_when_it_takes_it():
    assert resolve_model("tests.test_model_refs:make_two_layer", num_classes=7).fc.out_features == 7
    assert resolve_model("tests.test_model_refs:make_fixed", num_classes=7).fc.out_features == 4


@pytest.mark.parametrize(("ref", "match"), [
    ("no_such_net", "known forms"),
    ("timm:no_such_net", "timm has no model"),
    ("torchvision:no_such_net", "torchvision has no model"),
    ("no_such_package.mod:make", "cannot import no_such_package"),
    ("tests.test_model_refs:missing", "no callable 'missing'"),
    ("tests.test_model_refs:not_a_module", "not an nn.Module"),
])
def test_unknown_references_are_one_clear_error(ref, match):
    with pytest.raises(CheckpointError, match=match):
        resolve_model(ref)


def test_build_model_keeps_its_message_for_bare_names():
    with pytest.raises(CheckpointError, match="unknown model"):
        build_model("no_such_net")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_load_from_pt_and_safetensors(tmp_path, suffix):
    src = make_two_layer(5)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(src.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    model = resolve_model("tests.test_model_refs:make_two_layer", weights=path)  # 5 classes, from the weights
    assert torch.equal(model.fc.weight, src.fc.weight)


def test_weights_for_other_class_count_are_one_clear_error(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(make_two_layer(5).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"for 5 classes.*num_classes=3"):
        resolve_model("tests.test_model_refs:make_two_layer", num_classes=3, weights=path)


def test_corrupt_weights_are_one_clear_error(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(make_two_layer(3).state_dict(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        resolve_model("tests.test_model_refs:make_two_layer", weights=path)


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(make_two_layer(10).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        resolve_model("resnet20", weights=path)
