"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (for memory search), offline.

Plain transformers ``AutoModel`` plus the package's ``tokenizer.json`` through ``tokenizers``:
mean pooling of the last hidden states over the attention mask, then L2 normalisation — what
sentence-transformers' Transformer → Pooling(mean) → Normalize pipeline for this model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmchat import registry
from mmchat.errors import MMChatError

DEFAULT_MODEL = "minilm-l6"
MAX_TOKENS = 256  # per text; longer texts are truncated (the model's max_seq_length)
BATCH_SIZE = 32  # texts per forward pass


class TextEmbedder:
    """Text → 384-d unit vectors; cosine similarity is a dot product."""

    def __init__(self, model, tokenizer, *, name: str, batch_size: int = BATCH_SIZE) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.dim = int(model.config.hidden_size)

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, *, batch_size: int = BATCH_SIZE) -> TextEmbedder:
        """Load the bundled model ``name`` from its pip package (no network)."""
        spec = registry.get(name)
        if spec.role is not registry.Role.TEXT_EMBED:
            raise MMChatError(f"{name} is not a text embedding model (it is a {spec.role.value} model).")
        directory = spec.locate_parts()[0].parent
        return cls.from_directory(directory, name=name, batch_size=batch_size)

    @classmethod
    def from_directory(cls, directory: Path, *, name: str = DEFAULT_MODEL,
                       batch_size: int = BATCH_SIZE) -> TextEmbedder:
        from safetensors import SafetensorError
        from tokenizers import Tokenizer
        from transformers import AutoModel

        try:
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as exc:  # tokenizers reports a missing or malformed file as a bare Exception
            raise _broken(directory, exc) from None
        try:
            model = AutoModel.from_pretrained(directory, local_files_only=True, dtype=torch.float32,
                                              use_safetensors=True)  # never a pickled .bin
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise _broken(directory, exc) from None
        pad_id = tokenizer.token_to_id("[PAD]")
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")  # to the longest
        return cls(model, tokenizer, name=name, batch_size=batch_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings; wrap a single text in a list")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = [self._embed_batch(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(rows).astype(np.float32, copy=False)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        types = torch.tensor([e.type_ids for e in encodings], dtype=torch.long)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def _broken(directory: Path, exc: BaseException) -> MMChatError:
    return MMChatError(f"The text embedding model in {directory} could not be loaded ({exc}).",
                       hint="Reinstall the model packages: the README's setup command does this.")
