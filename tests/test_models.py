import pytest
import torch

from amc.data import make_splits, subset
from amc.errors import CheckpointError
from amc.layers import count_macs, count_params, layer_table, prunable_names
from amc.models import VGG8_CFG, build_model, guess_model_name, load_model, read_state_dict
from amc.train import evaluate
from tests.conftest import MODELS, flip_bit


def analytic_vgg_macs(cfg=VGG8_CFG, hw=32, c_in=3, classes=10) -> int:
    macs = 0
    for v in cfg:
        if v == "M":
            hw //= 2
        else:
            macs += c_in * v * 9 * hw * hw
            c_in = v
    return macs + c_in * classes


def test_vgg8_macs_match_analytic_count():
    model = build_model("vgg8")
    total, per_module = count_macs(model)
    assert total == analytic_vgg_macs() == 605_754_368  # 605.75 M, as ../shared/models/README.md says
    assert per_module["backbone.conv0"] == 3 * 64 * 9 * 32 * 32
    assert sum(t.macs for t in layer_table(model)) == total


@pytest.mark.parametrize(("name", "params", "macs_m"), [("vgg8", 9_228_362, 605.75), ("resnet20", 272_474, 40.81),
                                                        ("resnet56", 855_770, 125.75)])
def test_zoo_sizes_match_the_shared_readme(name, params, macs_m):
    model = build_model(name)
    assert count_params(model) == params
    # the README's MACs count convolutions and the classifier; the residual adds and pooling are not MACs
    assert round(count_macs(model)[0] / 1e6, 2) == pytest.approx(macs_m, abs=0.01)


@pytest.mark.parametrize("name", ["vgg8", "resnet20", "resnet56"])
def test_shared_checkpoints_load_strictly(name):
    path = MODELS / f"{name}_dense.pt"
    if not path.exists():
        pytest.skip("shared checkpoints not present")
    model = load_model(None, path)
    assert guess_model_name(path) == name
    sd = read_state_dict(path)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    assert set(sd) == set(model.state_dict())


def test_vgg8_checkpoint_reproduces_its_accuracy(cifar):
    model = load_model("vgg8", MODELS / "vgg8_dense.pt")
    splits = make_splits(subset(cifar, train=256), heldout=0)
    acc = evaluate(model, splits.loader("test", 250, limit=1000))  # 1,000 shuffled test images, CPU
    assert abs(acc - 0.9161) <= 0.02


def test_torchvision_models_by_name():
    model = build_model("mobilenet_v2")
    out = model.eval()(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 10)
    assert "features.0.0" in prunable_names(model)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(CheckpointError, match="unknown model"):
        build_model("no_such_net")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model("vgg8", tmp_path / "nope.pt")


def _saved(tmp_path, model):
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    return path


def test_truncated_checkpoint(tmp_path, tiny_vgg):
    path = _saved(tmp_path, tiny_vgg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        read_state_dict(path)


def test_garbage_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(path)


@pytest.mark.parametrize(("record", "offset"), [("data/0", 5), ("data/3", 0), ("data.pkl", 40)])
def test_bit_flipped_checkpoint_is_refused(tmp_path, tiny_vgg, record, offset):
    path = _saved(tmp_path, tiny_vgg)
    flip_bit(path, record, offset)  # torch.load alone would load flipped tensor data silently
    with pytest.raises(CheckpointError, match="corrupt"):
        read_state_dict(path)


def test_checkpoint_of_another_architecture(tmp_path, tiny_resnet):
    path = _saved(tmp_path, tiny_resnet)
    with pytest.raises(CheckpointError, match=r"does not fit model VGG.*another architecture"):
        load_model("vgg8", path)


def test_shape_mismatch_is_reported(tmp_path):
    small = build_model("resnet20")
    sd = small.state_dict()
    sd["fc.weight"] = torch.zeros(5, 64)
    path = tmp_path / "r.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model("resnet20", path)


def test_pickled_module_is_not_loaded(tmp_path, tiny_vgg):
    path = tmp_path / "module.pt"
    torch.save(tiny_vgg, path)  # a whole pickled module: refused by weights_only=True
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_safetensors_checkpoint(tmp_path, tiny_vgg):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file(tiny_vgg.state_dict(), str(path))
    sd = read_state_dict(path)
    assert all(torch.equal(sd[k], v) for k, v in tiny_vgg.state_dict().items())
