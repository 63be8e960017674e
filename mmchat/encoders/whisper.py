"""Speech recognition and audio features with Whisper, fully offline.

The bundled CTranslate2 weights are converted once into an openai-whisper checkpoint in the user
cache (:mod:`mmchat.encoders.whisper_convert`) and run by our PyTorch port
(:mod:`mmchat.encoders.whisper_model`). Decoding is greedy with a key/value cache, no timestamps,
English by default. Speed on CPU comes from not paying for 30 s of padding: silence is trimmed by
the energy gate and the encoder runs only on the mel frames the speech needs plus a short tail
(whisper.cpp's ``audio_ctx``); should the decoder then loop, that window is decoded again with
the full 30 s context it was trained on.

Silence never becomes text: audio without a :func:`mmchat.audio.speech_span` returns an empty
transcript without running the decoder, and a window the model itself rates as no-speech is
dropped as openai-whisper does (no-speech probability and average log-probability thresholds).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mmchat import cache, quant
from mmchat.audio import SAMPLE_RATE, frame_dbfs, speech_span
from mmchat.encoders import whisper_convert
from mmchat.encoders.whisper_model import (CHUNK_S, HOP_LENGTH, N_FRAMES, ModelDimensions, WhisperNet,
                                           log_mel_spectrogram)
from mmchat.errors import MMChatError

DEFAULT_MODEL = "whisper-base"
DEFAULT_LANGUAGE = "en"
MAX_NEW_TOKENS = 224  # tokens per 30 s window (openai-whisper's sample_len, n_text_ctx // 2)
# The encoder sees the speech plus >= 1 s of silence, and at least 8 s in all: on 54 test clips
# (0.6-7 s) that matched the stock 30 s window's accuracy (WER 0.025 vs 0.023) with no decoding
# loops, where shorter contexts made the decoder repeat short utterances.
TAIL_PAD_S = 1.0  # s of silence after the speech, so the decoder knows it ended
MIN_CONTEXT_S = 8.0  # s, shortest encoder input
CUT_SEARCH_S = 5.0  # s, long audio is cut at the quietest moment in the last 5 s of a window
NO_SPEECH_THRESHOLD = 0.6  # drop a window whose <|nospeech|> probability is above this ...
LOGPROB_THRESHOLD = -1.0  # ... and whose average token log-probability is below this
# Everything runs in float32 except the decoder's vocabulary projection (51865 x 512 per token,
# memory-bound): float16 halves its time (measured 13 ms vs 26 ms, one thread). Elsewhere float16
# is slower on this AVX2 CPU (a 512x2048 layer 465 us vs 270 us; attention 1.8 ms vs 0.13 ms).
LOGITS_DTYPE = torch.float16
LOOP_REPEATS = 4  # the same phrase this many times in a row is a decoding loop ...
MAX_LOOP_TOKENS = 48  # ... for phrases up to this many tokens,
LONG_PHRASE_TOKENS = 8  # but twice is enough for a phrase this long

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str  # ISO code ("en"); "" when there was no speech to identify
    duration_s: float  # of the audio given
    speech: bool  # False when nothing was heard (silence, noise)


@dataclass(frozen=True)
class SpecialTokens:
    eot: int
    sot: int
    transcribe: int
    no_timestamps: int
    no_speech: int
    languages: dict[str, int]  # "en" -> <|en|>

    @classmethod
    def from_tokenizer(cls, tokenizer, lang_ids: list[int]) -> SpecialTokens:
        def required(token: str) -> int:
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise MMChatError(f"The Whisper tokenizer has no {token} token.")
            return token_id

        no_speech = tokenizer.token_to_id("<|nospeech|>") or required("<|nocaptions|>")
        languages = {tokenizer.id_to_token(i)[2:-2]: i for i in lang_ids}
        return cls(eot=required("<|endoftext|>"), sot=required("<|startoftranscript|>"),
                   transcribe=required("<|transcribe|>"), no_timestamps=required("<|notimestamps|>"),
                   no_speech=no_speech, languages=languages)


@dataclass(frozen=True)
class _Decoded:
    tokens: list[int]
    no_speech_prob: float
    avg_logprob: float
    looped: bool = False  # stopped on a repetition loop or the token limit


_lock = threading.Lock()
_loaded: dict[str, Whisper] = {}


class Whisper:
    """A loaded Whisper model. Use :meth:`load`; it is loaded once per process."""

    def __init__(self, name: str, *, net: WhisperNet, tokenizer, specials: SpecialTokens,
                 suppress: list[int], suppress_begin: list[int], fingerprint: str) -> None:
        self.name = name
        self.net = net
        self.tokenizer = tokenizer
        self.specials = specials
        self.fingerprint = fingerprint  # sha256 of the converted weights
        self.d_model = net.dims.n_audio_state
        n_vocab = net.dims.n_vocab
        # No timestamps: every special token except end-of-text is suppressed, as are
        # openai-whisper's non-speech symbols; at the first step also blank and end-of-text.
        self._suppress = torch.zeros(n_vocab)
        self._suppress[[i for i in suppress if i < n_vocab]] = -np.inf
        self._suppress[specials.eot + 1:] = -np.inf
        self._suppress_begin = self._suppress.clone()
        self._suppress_begin[[i for i in suppress_begin if i < n_vocab]] = -np.inf

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, *, progress: Progress | None = None) -> Whisper:
        """Convert (first time, cached) and load registry model ``name``."""
        with _lock:
            if name not in _loaded:
                _loaded[name] = cls._load(name, progress=progress)
            return _loaded[name]

    @classmethod
    def _load(cls, name: str, *, progress: Progress | None) -> Whisper:
        from tokenizers import Tokenizer

        source = whisper_convert.locate_source(name)
        directory = whisper_convert.converted_dir(name, progress=progress)
        dims = ModelDimensions(**json.loads((directory / whisper_convert.DIMS_FILE).read_text()))
        with torch.device("meta"):  # no random init to overwrite: the file's tensors become the weights
            net = WhisperNet(dims)
        try:
            state = load_file(str(directory / whisper_convert.WEIGHTS_FILE))
            net.load_state_dict(state, strict=True, assign=True)  # as stored (fp16): no float copy of all
        except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
            raise MMChatError(f"The converted speech model in {directory} could not be read ({exc}).",
                              hint="Delete that folder; it is rebuilt on the next start.") from None
        del state
        if quant.available():  # fp16 weights, fp32 arithmetic: 0.40 s instead of 0.48 s for a 5 s clip, same words
            quant.convert_layers(net)  # one layer's float copy at a time
        net.decoder.use_output_dtype(LOGITS_DTYPE)  # the token table stays half-size (lookups come out float)
        quant.float_the_rest(net, keep=net.decoder.token_embedding.weight)
        quant.release_file_pages(directory)  # the file's pages and the freed copies
        net.eval().requires_grad_(False)
        config = json.loads(source.config.read_text())
        tokenizer = Tokenizer.from_file(str(source.tokenizer))
        specials = SpecialTokens.from_tokenizer(tokenizer, config.get("lang_ids", []))
        return cls(name, net=net, tokenizer=tokenizer, specials=specials,
                   suppress=config.get("suppress_ids", []),
                   suppress_begin=config.get("suppress_ids_begin", []),
                   fingerprint=_weights_sha256(directory))

    def transcribe(self, audio: np.ndarray, *, language: str | None = DEFAULT_LANGUAGE) -> Transcript:
        """Text of 16 kHz mono ``audio``; ``language=None`` detects it from the first speech."""
        audio = _checked(audio)
        duration_s = len(audio) / SAMPLE_RATE
        if language is not None and language not in self.specials.languages:
            raise MMChatError(f"Whisper does not know the language {language!r}.",
                              hint="Use an ISO code such as 'en', 'de' or 'fr'.")
        span = speech_span(audio)
        if span is None:
            return Transcript(text="", language=language or "", duration_s=duration_s, speech=False)
        texts = []
        with torch.inference_mode():
            for window in _windows(audio[span[0]:span[1]]):
                if speech_span(window) is None:
                    continue
                pad_s = max(TAIL_PAD_S, MIN_CONTEXT_S - len(window) / SAMPLE_RATE)
                xa = self._encode_window(window, tail_pad_s=pad_s)
                language = language or self._detect_language(xa)
                decoded = self._greedy(xa, language)
                if decoded.looped:  # rare on trimmed input: retry as trained, with 30 s of context
                    decoded = self._greedy(self._encode_window(window, tail_pad_s=CHUNK_S), language)
                if (decoded.no_speech_prob > NO_SPEECH_THRESHOLD
                        and decoded.avg_logprob < LOGPROB_THRESHOLD):
                    continue
                texts.append(self.tokenizer.decode(decoded.tokens, skip_special_tokens=True).strip())
        text = " ".join(t for t in texts if t)
        return Transcript(text=text, language=language or "", duration_s=duration_s, speech=bool(text))

    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """Encoder states (n_frames, d_model), one per 20 ms of the speech present (0 rows if none)."""
        audio = _checked(audio)
        span = speech_span(audio)
        if span is None:
            return torch.zeros(0, self.d_model)
        with torch.inference_mode():
            states = [self._encode_window(w, tail_pad_s=0.0)[0] for w in _windows(audio[span[0]:span[1]])]
        return torch.cat(states).clone()

    def _encode_window(self, audio: np.ndarray, *, tail_pad_s: float) -> torch.Tensor:
        """(1, frames / 2, d_model) encoder output for at most 30 s of audio."""
        pad = int(tail_pad_s * SAMPLE_RATE)
        mel = log_mel_spectrogram(audio, n_mels=self.net.dims.n_mels, padding=pad)
        n_frames = min(N_FRAMES, max(2, (len(audio) + pad) // HOP_LENGTH))
        return self.net.encoder(mel[None, :, :n_frames])

    def _detect_language(self, xa: torch.Tensor) -> str:
        logits = self.net.decoder(torch.tensor([[self.specials.sot]]), xa, self.net.new_cache())[0, -1]
        codes = list(self.specials.languages)
        ids = torch.tensor([self.specials.languages[c] for c in codes])
        return codes[int(logits[ids].argmax())]

    def _greedy(self, xa: torch.Tensor, language: str) -> _Decoded:
        s = self.specials
        prompt = [s.sot, s.languages[language], s.transcribe, s.no_timestamps]
        cache_ = self.net.new_cache()
        logits = self.net.decoder(torch.tensor([prompt]), xa, cache_)[0]
        no_speech_prob = float(logits[0].softmax(-1)[s.no_speech])
        logits = logits[-1]
        tokens: list[int] = []
        sum_logprob, looped = 0.0, False
        limit = min(MAX_NEW_TOKENS, self.net.dims.n_text_ctx - len(prompt))
        for step in range(limit):
            logprobs = (logits + (self._suppress_begin if step == 0 else self._suppress)).log_softmax(-1)
            token = int(logprobs.argmax())
            sum_logprob += float(logprobs[token])
            if token == s.eot:
                break
            tokens.append(token)
            if period := _loop_period(tokens):
                copies = 2 if period >= LONG_PHRASE_TOKENS else LOOP_REPEATS
                del tokens[len(tokens) - (copies - 1) * period:]  # keep one copy
                looped = True
                break
            if step + 1 == limit:
                break
            logits = self.net.decoder(torch.tensor([[token]]), xa, cache_)[0, -1]
        return _Decoded(tokens, no_speech_prob, sum_logprob / (len(tokens) + 1),
                        looped=looped or len(tokens) == limit)


def _checked(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected 16 kHz mono audio (1-D), got shape {audio.shape}")
    return audio


def _loop_period(tokens: list[int]) -> int:
    """Length of the phrase the tokens end by repeating (a decoding loop), else 0.

    Short phrases must repeat ``LOOP_REPEATS`` times in a row; a phrase of ``LONG_PHRASE_TOKENS``
    or more (a whole sentence said twice) counts after two.
    """
    for n in range(1, min(MAX_LOOP_TOKENS, len(tokens) // 2) + 1):
        repeats = 2 if n >= LONG_PHRASE_TOKENS else LOOP_REPEATS
        if len(tokens) < repeats * n:
            continue
        tail = tokens[-n:]
        if all(tokens[-(k + 1) * n: len(tokens) - k * n] == tail for k in range(1, repeats)):
            return n
    return 0


def _windows(audio: np.ndarray) -> list[np.ndarray]:
    """Split into pieces of at most 30 s, cutting long audio at the quietest nearby moment."""
    window, search = CHUNK_S * SAMPLE_RATE, int(CUT_SEARCH_S * SAMPLE_RATE)
    pieces, start = [], 0
    while len(audio) - start > window:
        tail = audio[start + window - search: start + window]
        levels = frame_dbfs(tail)
        frame = len(tail) // max(1, len(levels))
        cut = start + window - search + int(np.argmin(levels)) * frame + frame // 2
        pieces.append(audio[start:cut])
        start = cut
    pieces.append(audio[start:])
    return pieces


def _weights_sha256(directory: Path) -> str:
    manifest = json.loads((directory / cache.MANIFEST).read_text())
    return manifest["files"][whisper_convert.WEIGHTS_FILE]["sha256"]
