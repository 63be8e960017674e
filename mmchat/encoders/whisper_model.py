"""The Whisper network and its log-mel front end, in PyTorch.

Follows openai-whisper's ``model.py`` (same module and state-dict names, so its checkpoints load)
with two changes for speed on CPU: the encoder accepts fewer than 3000 mel frames and slices its
positional embedding to match (whisper.cpp's ``audio_ctx``), and the decoder keeps an explicit
key/value cache (self-attention grows per token; cross-attention keys/values are computed once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 16_000  # Hz
N_FFT = 400  # samples, 25 ms window
HOP_LENGTH = 160  # samples, 10 ms per mel frame
CHUNK_S = 30  # s, the window Whisper was trained on
N_FRAMES = CHUNK_S * SAMPLE_RATE // HOP_LENGTH  # 3000 mel frames per window
FRAMES_PER_TOKEN = 2  # conv2 has stride 2: one encoder state per 20 ms


@dataclass
class ModelDimensions:
    """openai-whisper's model sizes (the dims stored beside every checkpoint)."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> Tensor:
    """Slaney-normalised mel filterbank, (n_mels, 201): librosa.filters.mel(sr=16000, n_fft=400),
    the matrix openai-whisper ships as ``mel_filters.npz``."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    widths = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]  # equal area per filter
    return torch.from_numpy(weights.astype(np.float32))


def log_mel_spectrogram(audio: np.ndarray | Tensor, *, n_mels: int = 80, padding: int = 0) -> Tensor:
    """Whisper's log-mel features, (n_mels, len(audio) // HOP_LENGTH + padding // HOP_LENGTH)."""
    audio = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio)
    if padding > 0:
        audio = F.pad(audio, (0, padding))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def sinusoids(length: int, channels: int, max_timescale: float = 10_000) -> Tensor:
    """openai-whisper's sinusoidal positional embedding for the encoder."""
    log_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


@dataclass
class KVCache:
    """Per-layer decoder cache: growing self-attention K/V and fixed cross-attention K/V."""

    self_kv: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)
    cross_kv: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)
    length: int = 0  # tokens already seen

    @classmethod
    def empty(cls, n_layer: int) -> KVCache:
        return cls(self_kv=[None] * n_layer, cross_kv=[None] * n_layer)


class LayerNorm(nn.LayerNorm):
    """Layer norm computed in float32 whatever the weights' and input's dtype (as openai-whisper)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:2], self.n_head, -1).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._heads(self.key(x)), self._heads(self.value(x))

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], *, causal: bool = False) -> Tensor:
        q = self._heads(self.query(x))
        k, v = kv
        mask = None
        n_new, n_all = q.shape[2], k.shape[2]
        if causal and n_new > 1:  # query i (at position n_all - n_new + i) sees keys up to itself
            mask = torch.ones(n_new, n_all, dtype=torch.bool).tril(diagonal=n_all - n_new)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).flatten(start_dim=2))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, *, cross_attention: bool = False) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = LayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = LayerNorm(n_state)

    def encode(self, x: Tensor) -> Tensor:
        h = self.attn_ln(x)
        x = x + self.attn(h, self.attn.project_kv(h))
        return x + self.mlp(self.mlp_ln(x))

    def decode(self, x: Tensor, cache: KVCache, layer: int, xa: Tensor) -> Tensor:
        h = self.attn_ln(x)
        k, v = self.attn.project_kv(h)
        past = cache.self_kv[layer]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        cache.self_kv[layer] = (k, v)
        x = x + self.attn(h, (k, v), causal=True)
        if cache.cross_kv[layer] is None:
            cache.cross_kv[layer] = self.cross_attn.project_kv(xa)
        x = x + self.cross_attn(self.cross_attn_ln(x), cache.cross_kv[layer])
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer)])
        self.ln_post = LayerNorm(n_state)

    def forward(self, mel: Tensor) -> Tensor:
        """(batch, n_mels, n_frames <= 3000) -> (batch, ceil(n_frames / 2), n_state)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.positional_embedding.shape[0]:
            raise ValueError(f"{mel.shape[-1]} mel frames exceed the encoder context")
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block.encode(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)])
        self.ln = LayerNorm(n_state)

    def use_output_dtype(self, dtype: torch.dtype) -> None:
        """Keep the (tied) token embedding in ``dtype`` and compute logits against it.

        One token at a time, the vocabulary projection is a memory-bound matrix-vector product;
        float16 halves the bytes it reads (and is the precision the weights ship in, so the
        lookups, which come out as float32, are exact)."""
        self.token_embedding.weight.data = self.token_embedding.weight.data.to(dtype)

    def forward(self, tokens: Tensor, xa: Tensor, cache: KVCache) -> Tensor:
        """Logits (batch, n_new, n_vocab) for ``tokens`` following the ``cache.length`` already seen."""
        start = cache.length
        x = self.token_embedding(tokens).float() + self.positional_embedding[start: start + tokens.shape[-1]]
        for layer, block in enumerate(self.blocks):
            x = block.decode(x, cache, layer, xa)
        cache.length += tokens.shape[-1]
        weight = self.token_embedding.weight  # tied: the vocabulary projection reads the token table
        return (self.ln(x).to(weight.dtype) @ weight.T).float()


class WhisperNet(nn.Module):
    """Encoder + decoder with openai-whisper's state-dict names."""

    def __init__(self, dims: ModelDimensions) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                    dims.n_audio_head, dims.n_audio_layer)
        self.decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state,
                                   dims.n_text_head, dims.n_text_layer)

    def new_cache(self) -> KVCache:
        return KVCache.empty(self.dims.n_text_layer)
