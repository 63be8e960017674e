"""Half-size linear layers: close to the float layer, batch-invariant, differentiable w.r.t. the
input, counted right."""

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
