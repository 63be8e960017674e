"""Half-size linear layers: close to the float layer, batch-invariant, differentiable w.r.t. the
input, counted right."""

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from mmchat import quant

pytestmark = pytest.mark.skipif(not quant.available(), reason="this torch build has no fbgemm kernels")


def _linear(seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(256, 96, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_half_linear_is_close_to_the_float_layer(bias):
    linear = _linear(0, bias)
    x = torch.randn(5, 7, 256)
    want = linear(x).detach()
    got = quant.HalfLinear(linear)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).norm() / want.norm() < 1e-3
    # ... and another layer of the same scale is far off (the comparison can fail)
    assert (quant.HalfLinear(_linear(1, bias))(x) - want).norm() / want.norm() > 0.5


def test_each_row_depends_on_that_row_only():
    """What keeps a cached prefix and a fresh prefill in agreement (int8's per-call activation
    scale broke this)."""
    layer = quant.HalfLinear(_linear(0))
    rows = torch.randn(9, 256)
    rows[4] *= 50  # an outlier row must not change the others
    together = layer(rows)
    alone = torch.cat([layer(rows[i:i + 1]) for i in range(len(rows))])
    assert torch.allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_half_linear_passes_gradients_to_its_input():
    linear = _linear(0)
    x = torch.randn(3, 256, requires_grad=True)
    linear(x).pow(2).sum().backward()
    want = x.grad.clone()
    x.grad = None
    quant.HalfLinear(linear)(x).pow(2).sum().backward()
    assert (x.grad - want).norm() / want.norm() < 1e-3


def test_convert_layers_replaces_nested_linears_and_counts_half_bytes():
    model = nn.Sequential(nn.Embedding(10, 256), nn.Sequential(_linear(0), nn.GELU(), nn.Linear(96, 256)))
    float_bytes = quant.weight_bytes(model)
    assert quant.convert_layers(model) == 2
    assert [type(m) for m in model[1]] == [quant.HalfLinear, nn.GELU, quant.HalfLinear]
    embedding = 10 * 256 * 4
    half = (2 * 256 * 96 + 4 * 96) + (2 * 96 * 256 + 4 * 256)
    assert quant.weight_bytes(model) == embedding + half < float_bytes
    assert quant.convert_layers(model) == 0  # nothing left to replace


def test_fused_layers_equal_the_separate_ones():
    parts = [quant.HalfLinear(nn.Linear(256, n, bias=bias)) for n, bias in ((96, True), (32, False), (32, True))]
    x = torch.randn(3, 256)
    fused = quant.fuse(parts)
    assert fused.out_features == 160 and fused.nbytes == 2 * 256 * 160 + 4 * 160
    assert torch.equal(fused(x), torch.cat([p(x) for p in parts], -1))


def test_fusing_float_layers_without_bias_adds_none():
    parts = [nn.Linear(64, n, bias=False) for n in (48, 16)]
    fused = quant.fuse(parts)
    assert fused.nbytes == 2 * 64 * 64  # no zero bias
    x = torch.randn(2, 64)
    assert torch.equal(fused(x), torch.cat([quant.HalfLinear(p)(x) for p in parts], -1))


def test_float_embedding_reads_rows_of_the_given_table_as_float32():
    table = nn.Embedding(50, 16)
    table.weight.data = table.weight.data.to(torch.bfloat16)
    embedding = quant.FloatEmbedding(table)
    ids = torch.tensor([[3, 49, 0]])
    rows = embedding(ids)
    assert rows.dtype == torch.float32 and rows.shape == (1, 3, 16)
    assert torch.equal(rows[0], table.weight[ids[0]].float())
    assert embedding.weight is table.weight  # the table itself (e.g. memory-mapped), not a copy
    # decoding a token reads one row of it: not counted in the per-token bytes
    model = nn.Sequential(embedding, quant.HalfLinear(nn.Linear(16, 50, bias=False)))
    assert quant.weight_bytes(model) == 50 * 16 * 2 + 16 * 50 * 2
    assert quant.weight_bytes(model, per_token=True) == 16 * 50 * 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/maps are Linux's")
def test_released_file_pages_leave_rss_and_read_back_unchanged(tmp_path):
    path = tmp_path / "weights.bin"
    values = np.arange(16 * 2**20, dtype=np.float32)  # 64 MiB
    values.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    assert float(mapped.sum(dtype=np.float64)) == float(values.sum(dtype=np.float64))  # every page read
    before = _rss_mib()
    assert quant.release_file_pages(tmp_path) >= values.nbytes
    assert before - _rss_mib() > 48  # most of the 64 MiB left the resident set
    assert np.array_equal(mapped[::4096], values[::4096])  # and the data is still there


def _rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
