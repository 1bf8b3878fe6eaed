import torch

from amc.layers import layer_table, prunable_names
from amc.metrics import dense_size_bits, global_sparsity, layer_sparsity, size_fraction, sparse_size_bits
from amc.models import build_model


def test_layer_table_of_tiny_vgg(tiny_vgg):
    table = layer_table(tiny_vgg)
    assert [t.name for t in table] == prunable_names(tiny_vgg) == [
        "backbone.conv0", "backbone.conv1", "backbone.conv2", "classifier"]
    conv1 = table[1]
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel, conv1.in_hw) == (8, 16, 3, (16, 16))
    assert conv1.macs == 8 * 16 * 9 * 16 * 16
    assert conv1.params == 8 * 16 * 9
    assert table[-1].kind == "linear" and table[-1].macs == 16 * 10
    assert 0 < sum(t.size_share for t in table) < 1  # BatchNorm parameters make up the rest


def test_depthwise_layers_are_marked():
    table = {t.name: t for t in layer_table(build_model("mobilenet_v2"))}
    assert table["features.1.conv.0.0"].kind == "dwconv"
    assert table["features.1.conv.0.0"].stride == 1 and table["features.2.conv.1.0"].stride == 2


def test_size_counts_non_zeros(tiny_vgg):
    dense = dense_size_bits(tiny_vgg)
    assert dense == 32 * sum(p.numel() for p in tiny_vgg.parameters())
    start = sparse_size_bits(tiny_vgg)  # fresh BatchNorm biases are zeros already
    assert start < dense
    w = tiny_vgg.get_submodule("backbone.conv1").weight
    with torch.no_grad():
        w.view(-1)[: w.numel() // 2] = 0
    assert sparse_size_bits(tiny_vgg) == start - 32 * (w.numel() // 2)
    assert size_fraction(tiny_vgg) < 1
    assert layer_sparsity(tiny_vgg)["backbone.conv1"] == (w.numel() // 2) / w.numel()
    total = sum(tiny_vgg.get_submodule(n).weight.numel() for n in prunable_names(tiny_vgg))
    assert global_sparsity(tiny_vgg) == (w.numel() // 2) / total
