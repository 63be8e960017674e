"""MiniLM sentence embeddings from the bundled package: shape, normalisation, meaning, batching."""

import numpy as np
import pytest

from mmchat.encoders.text import TextEmbedder
from mmchat.errors import MMChatError


@pytest.fixture(scope="module")
def embedder():
    return TextEmbedder.load()


def test_shape_dtype_and_unit_norm(embedder):
    vectors = embedder.embed(["hello", "a much longer sentence about the weather in Lisbon in May", ""])
    assert embedder.dim == 384
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_semantic_neighbours(embedder):
    fact, question, weather = embedder.embed(
        ["I am allergic to peanuts", "What am I allergic to?", "The weather is nice today"])
    assert fact @ question > fact @ weather + 0.2
    names = embedder.embed(["My name is Ada", "What is my name?", "Peanut butter sandwich recipe"])
    assert names[0] @ names[1] > names[0] @ names[2]


def test_matches_sentence_transformers_reference(embedder):
    """Scores printed in sentence-transformers' semantic-search example for all-MiniLM-L6-v2
    (examples/sentence_transformer/applications/semantic-search/README.md), to 4 decimals."""
    queries = embedder.embed(["A man is eating pasta.", "Someone in a gorilla costume is playing a set of drums."])
    corpus = embedder.embed(["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
                             "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
                             "A woman is playing violin."])
    scores = queries @ corpus.T
    np.testing.assert_allclose(scores[0, :4], [0.7035, 0.5272, 0.1889, 0.1047], atol=2e-4)
    np.testing.assert_allclose(scores[1, 2:], [0.1389, 0.1191, 0.6433, 0.2564], atol=2e-4)


def test_batch_equals_individual(embedder):
    texts = ["I am allergic to peanuts", "short", "What am I allergic to? " * 5, "The weather is nice today"]
    batched = embedder.embed(texts)
    single = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    small_batches = TextEmbedder(embedder.model, embedder.tokenizer, name="minilm-l6", batch_size=3).embed(texts)
    np.testing.assert_allclose(small_batches, single, atol=1e-5)


def test_long_text_is_truncated_not_an_error(embedder):
    vector = embedder.embed(["word " * 5_000])
    assert vector.shape == (1, 384) and np.isfinite(vector).all()


def test_wrong_model_role():
    with pytest.raises(MMChatError, match="not a text embedding model"):
        TextEmbedder.load("whisper-base")


def test_broken_directory(tmp_path):
    with pytest.raises(MMChatError, match="could not be loaded"):
        TextEmbedder.from_directory(tmp_path)
