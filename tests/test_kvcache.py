"""The in-place KV cache layer against transformers' concatenating one (no model needed)."""

import copy

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from mmchat.kvcache import GROWTH_STEP, GrowingLayer, new_cache


def _states(generator, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 2, positions, 8)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def test_appends_match_concatenation_and_write_in_place():
    generator = torch.Generator().manual_seed(0)
    ours, theirs = GrowingLayer(), DynamicLayer()
    pointers = set()
    for positions in (37, 1, 1, 100, 1, 1):
        keys, values = _states(generator, positions)
        got, want = ours.update(keys, values), theirs.update(keys, values)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        assert ours.get_seq_length() == theirs.get_seq_length()
        pointers.add(ours.keys.data_ptr())
    assert len(pointers) == 1  # 141 positions fit the first buffer: no copy of the cache per token
    assert ours.capacity() == GROWTH_STEP


def test_growth_keeps_the_filled_part_and_leaves_room():
    generator = torch.Generator().manual_seed(1)
    ours, theirs = GrowingLayer(), DynamicLayer()
    for _ in range(3):
        keys, values = _states(generator, 300)
        ours.update(keys, values)
        theirs.update(keys, values)
    assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    assert 900 < ours.capacity() <= 900 + 900 // 4 + GROWTH_STEP
    assert ours.capacity() % GROWTH_STEP == 0


def test_reserve_grows_for_a_caller_that_writes_positions_itself():
    """The scripted decode step's protocol: reserve room, write a position, set the length."""
    generator = torch.Generator().manual_seed(4)
    ours, theirs = GrowingLayer(), DynamicLayer()
    keys, values = _states(generator, GROWTH_STEP)  # fills the first buffer exactly
    ours.update(keys, values)
    theirs.update(keys, values)
    for _ in range(3):
        keys, values = _states(generator, 1)
        position = ours.get_seq_length()
        buffers = ours.reserve(position + 1)
        for buffer, new in zip(buffers, (keys, values)):
            buffer[:, :, position:position + 1].copy_(new)
        ours.set_length(position + 1)
        theirs.update(keys, values)
    assert ours.capacity() > GROWTH_STEP
    assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    assert ours.reserve(ours.get_seq_length())[0].data_ptr() == ours.keys.data_ptr()  # room left: no regrowth


def test_crop_then_update_overwrites_the_removed_positions():
    generator = torch.Generator().manual_seed(2)
    ours, theirs = GrowingLayer(), DynamicLayer()
    keys, values = _states(generator, 20)
    ours.update(keys, values)
    theirs.update(keys, values)
    ours.crop(-5)
    theirs.crop(-5)
    assert ours.get_seq_length() == 15
    keys, values = _states(generator, 3)
    got, want = ours.update(keys, values), theirs.update(keys, values)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    with pytest.raises(ValueError, match="negative"):
        ours.crop(4)


def test_a_deep_copy_is_independent():
    generator = torch.Generator().manual_seed(3)
    layer = GrowingLayer()
    layer.update(*_states(generator, 10))
    twin = copy.deepcopy(layer)
    before = twin.keys.clone()
    layer.crop(-4)
    layer.update(*_states(generator, 4))
    assert torch.equal(twin.keys, before) and twin.get_seq_length() == 10
    twin.update(*_states(generator, 1))
    assert twin.keys.data_ptr() == twin._buffers[0].data_ptr()  # the copy's views still share its buffer


def test_reset_empties_the_layer():
    layer = GrowingLayer()
    layer.update(*_states(torch.Generator().manual_seed(4), 6))
    layer.reset()
    assert layer.get_seq_length() == 0 and layer.capacity() == 0


def test_new_cache_uses_growing_layers_for_full_attention_only():
    from transformers import Qwen2Config

    config = Qwen2Config(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=100)
    assert all(type(layer) is GrowingLayer for layer in new_cache(config).layers)
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 16, 1
    config.layer_types = ["full_attention", "sliding_attention", "sliding_attention"]
    kinds = [type(layer) for layer in new_cache(config).layers]
    assert kinds[0] is GrowingLayer and GrowingLayer not in kinds[1:]
