"""Exports: sparse files and pruned safetensors + config reload to identical outputs; writes are atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from amc import io as amc_io
from amc.errors import CheckpointError
from amc.export.files import (
    ExportError,
    encoding_sizes,
    export_compressed,
    load_pruned,
    load_sparse,
    save_pruned,
    save_sparse,
)
from amc.layers import prunable_names
from amc.pruners.finegrained import apply_policy
from tests.conftest import make_tiny_resnet, make_tiny_vgg


@pytest.fixture(autouse=True)
def _tiny_zoo(monkeypatch):
    """Zoo names that build the tiny models, so exports can name an architecture cheaply."""
    from amc import models

    monkeypatch.setitem(models.MODELS, "tinyvgg", lambda num_classes=10: make_tiny_vgg())
    monkeypatch.setitem(models.MODELS, "tinyresnet", lambda num_classes=10: make_tiny_resnet())


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics so that a wrong buffer would change the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _pruned_with_tp(model: nn.Module, ratio: float = 0.5) -> nn.Module:
    """A physically smaller model made by torch-pruning (the library the channel code builds on)."""
    example = torch.randn(1, 3, 32, 32)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=head)
    pruner.step()
    return model.eval()


X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("arch", ["tinyvgg", "tinyresnet"])
def test_sparse_fp32_reloads_bit_identical(tmp_path, arch, sparsity):
    model = _randomise_bn(make_tiny_vgg() if arch == "tinyvgg" else make_tiny_resnet())
    apply_policy(model, dict.fromkeys(prunable_names(model), sparsity))
    exp = save_sparse(model, tmp_path / "m.safetensors", "fp32", arch=arch)
    loaded = load_sparse(exp.path)
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)
    assert torch.equal(model(X), loaded(X))
    assert exp.file_bytes == exp.path.stat().st_size
    assert exp.lab_bits == 32 * sum(int(p.count_nonzero()) for p in model.parameters())
    for key, enc in exp.encodings.items():  # the smallest encoding was chosen for every float tensor
        t = sa[key]
        if t.is_floating_point():
            sizes = encoding_sizes(t, 4)
            assert sizes[enc] == min(sizes.values())


def test_all_encodings_occur_and_sparse_file_is_small(tmp_path):
    model = make_tiny_vgg()
    apply_policy(model, {"backbone.conv1": 0.6, "backbone.conv2": 0.995})
    exp = save_sparse(model, tmp_path / "m.safetensors")
    assert exp.encodings["backbone.conv0.weight"] == "dense"
    assert exp.encodings["backbone.conv1.weight"] == "bitmask"
    assert exp.encodings["backbone.conv2.weight"] == "csr"
    assert exp.encodings["backbone.bn0.num_batches_tracked"] == "raw"
    assert torch.equal(load_sparse(exp.path, "tinyvgg")(X), model(X))
    dense_file = save_pruned(model, "tinyvgg", tmp_path / "dense").weights.stat().st_size
    assert exp.file_bytes < dense_file


def test_sparse_fp16_within_rounding_and_smaller(tmp_path):
    model = _randomise_bn(make_tiny_vgg())
    apply_policy(model, dict.fromkeys(prunable_names(model), 0.8))
    e32 = save_sparse(model, tmp_path / "a.safetensors", "fp32", arch="tinyvgg")
    e16 = save_sparse(model, tmp_path / "b.safetensors", "fp16", arch="tinyvgg")
    loaded = load_sparse(e16.path)
    for k, v in model.state_dict().items():
        w = loaded.state_dict()[k]
        assert w.dtype == v.dtype
        assert torch.equal(w, v.half().to(v.dtype) if v.is_floating_point() else v)
    assert e16.file_bytes < e32.file_bytes
    assert torch.allclose(loaded(X), model(X), atol=1e-2, rtol=1e-2)


def test_sparse_fp16_overflow_is_refused(tmp_path):
    model = make_tiny_vgg()
    with torch.no_grad():
        model.classifier.weight[0, 0] = 1e6
    with pytest.raises(ExportError, match="fp16"):
        save_sparse(model, tmp_path / "m.safetensors", "fp16")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("arch", ["tinyvgg", "tinyresnet"])
def test_pruned_safetensors_config_rebuilds_identical_outputs(tmp_path, arch):
    dense = make_tiny_vgg() if arch == "tinyvgg" else make_tiny_resnet()
    model = _pruned_with_tp(_randomise_bn(dense))
    exp = save_pruned(model, arch, tmp_path / "out")
    config = json.loads(exp.config.read_text())
    assert config["arch"] == arch and config["weights_sha256"]
    loaded = load_pruned(tmp_path / "out")
    assert torch.equal(loaded(X), model(X))
    assert sum(p.numel() for p in loaded.parameters()) == exp.params
    assert exp.params < sum(p.numel() for p in (make_tiny_vgg() if arch == "tinyvgg" else make_tiny_resnet())
                            .parameters())


class TinyDepthwise(nn.Module):
    """Inverted-residual style: pointwise expand, depthwise 3x3 (groups = channels), pointwise project."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False),
                                nn.BatchNorm2d(32), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.project(self.dw(self.expand(x))) + x[:, :, ::2, ::2]
        return self.fc(x.mean([2, 3]))


def test_pruned_depthwise(tmp_path, monkeypatch):
    from amc import models

    monkeypatch.setitem(models.MODELS, "tinydw", lambda num_classes=10: TinyDepthwise())
    model = _pruned_with_tp(_randomise_bn(TinyDepthwise().eval()), ratio=0.5)
    dw = model.dw[0]
    assert dw.groups == dw.in_channels == dw.out_channels < 32  # pruned and still depthwise
    save_pruned(model, "tinydw", tmp_path / "dw")
    loaded = load_pruned(tmp_path / "dw")
    assert loaded.dw[0].groups == dw.groups
    assert torch.equal(loaded(X), model(X))


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


def test_interrupted_sparse_export_keeps_earlier_file(tmp_path, monkeypatch):
    model = make_tiny_vgg()
    path = tmp_path / "m.safetensors"
    save_sparse(model, path, arch="tinyvgg")
    before = path.read_bytes()
    apply_policy(model, dict.fromkeys(prunable_names(model), 0.9))

    def crash(fd):  # the writer has written the new bytes to its temporary file and dies before renaming
        raise OSError("disk went away")

    with monkeypatch.context() as m, pytest.raises(OSError, match="disk went away"):
        m.setattr(amc_io.os, "fsync", crash)
        save_sparse(model, path, arch="tinyvgg")
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)
    assert torch.equal(load_sparse(path)(X), make_tiny_vgg()(X))


def test_interrupted_pruned_export_keeps_earlier_pair_or_refuses(tmp_path, monkeypatch):
    first = _pruned_with_tp(make_tiny_vgg(), 0.25)
    save_pruned(first, "tinyvgg", tmp_path / "out")
    second = _pruned_with_tp(make_tiny_vgg(), 0.5)
    calls = {"n": 0}
    real_fsync = amc_io.os.fsync

    def crash_on_second(fd):  # the weights file lands, the config write dies
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("killed")
        real_fsync(fd)

    with monkeypatch.context() as m, pytest.raises(OSError, match="killed"):
        m.setattr(amc_io.os, "fsync", crash_on_second)
        save_pruned(second, "tinyvgg", tmp_path / "out")
    assert _no_temp_files(tmp_path)
    with pytest.raises(CheckpointError, match="interrupted or mixed export"):
        load_pruned(tmp_path / "out")
    save_pruned(first, "tinyvgg", tmp_path / "again")

    def crash(fd):  # now the very first write dies: the earlier pair stays whole
        raise OSError("killed")

    with monkeypatch.context() as m, pytest.raises(OSError):
        m.setattr(amc_io.os, "fsync", crash)
        save_pruned(second, "tinyvgg", tmp_path / "again")
    assert torch.equal(load_pruned(tmp_path / "again")(X), first(X))


@pytest.mark.parametrize("problem", ["no_config", "bad_json", "other_arch", "garbage_weights"])
def test_load_pruned_errors(tmp_path, problem):
    model = _pruned_with_tp(make_tiny_vgg())
    exp = save_pruned(model, "tinyvgg", tmp_path / "out")
    if problem == "no_config":
        exp.config.unlink()
    elif problem == "bad_json":
        exp.config.write_text("{not json")
    elif problem == "other_arch":
        cfg = json.loads(exp.config.read_text())
        cfg["arch"] = "tinyresnet"
        exp.config.write_text(json.dumps(cfg))
    else:
        exp.weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_pruned(tmp_path / "out")


@pytest.mark.parametrize("granularity", ["fine", "channel"])
def test_export_compressed(tmp_path, granularity):
    model = make_tiny_vgg()
    if granularity == "channel":
        model = _pruned_with_tp(model)
    else:
        apply_policy(model, dict.fromkeys(prunable_names(model), 0.7))
    out = export_compressed(model, "tinyvgg", tmp_path, granularity, onnx=False)
    if granularity == "channel":
        assert torch.equal(load_pruned(out["pruned_dir"])(X), model(X))
    else:
        assert out["sparse_bytes"] == Path(out["sparse_path"]).stat().st_size
        assert torch.equal(load_sparse(out["sparse_path"])(X), model(X))


def test_cli_export_checkpoint_and_pruned_folder(tmp_path, capsys):
    from amc.cli import main

    model = make_tiny_vgg()
    apply_policy(model, dict.fromkeys(prunable_names(model), 0.9))
    ckpt = tmp_path / "pruned.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "a"
    assert main(["export", str(ckpt), "--model", "tinyvgg", "--format", "sparse,pruned", "--out", str(out)]) == 0
    assert "lab count" in capsys.readouterr().out
    assert torch.equal(load_sparse(out / "model.sparse.safetensors")(X), model(X))
    small = _pruned_with_tp(make_tiny_vgg())
    save_pruned(small, "tinyvgg", tmp_path / "folder")
    assert main(["export", str(tmp_path / "folder"), "--format", "sparse", "--dtype", "fp16",
                 "--out", str(tmp_path / "b")]) == 0
    back = load_sparse(tmp_path / "b" / "model.sparse.safetensors", load_pruned(tmp_path / "folder"))
    assert torch.allclose(back(X), small(X), atol=1e-2)
    assert json.loads((tmp_path / "b" / "export.json").read_text())["arch"] == "tinyvgg"


def test_cli_export_errors(tmp_path, capsys):
    from amc.cli import main

    ckpt = tmp_path / "m.pt"
    torch.save(make_tiny_vgg().state_dict(), ckpt)
    assert main(["export", str(ckpt), "--model", "tinyvgg", "--format", "zip", "--out", str(tmp_path)]) == 2
    assert "unknown --format zip" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--format", "sparse", "--out", str(tmp_path)]) == 2
    assert "pass --model" in capsys.readouterr().err


def test_export_compressed_with_onnx(tmp_path):
    onnx_export = pytest.importorskip("amc.export.onnx")
    model = _pruned_with_tp(make_tiny_resnet())
    out = export_compressed(model, "tinyresnet", tmp_path, "channel", onnx=True)
    assert out["onnx_bytes"] == Path(out["onnx_path"]).stat().st_size > 0
    assert onnx_export.check_onnx(model, out["onnx_path"]) < 1e-4
