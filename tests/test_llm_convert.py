import torch

from mmchat.llm_convert import TIE_TOLERANCE, tie_duplicate_output


def tiny_untied_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def test_a_duplicate_output_matrix_is_tied_and_saved_once(tmp_path):
    from safetensors import safe_open
    from transformers import Qwen2ForCausalLM

    model = tiny_untied_model()
    with torch.no_grad():  # the GGUF case: the same matrix, quantised twice
        model.lm_head.weight.copy_(model.model.embed_tokens.weight + TIE_TOLERANCE / 4)
    assert tie_duplicate_output(model)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    loaded = Qwen2ForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(loaded.lm_head.weight, model.model.embed_tokens.weight)


def test_a_different_output_matrix_is_kept():
    model = tiny_untied_model()
    before = model.lm_head.weight.detach().clone()
    assert not tie_duplicate_output(model)  # independent random init: far apart
    assert not model.config.tie_word_embeddings and torch.equal(model.lm_head.weight, before)
