"""Learned weighted fusion: image (the image encoder's patch features) and audio (Whisper) features into
the LLM's embedding space.

Each modality has a projector chosen by name (``linear``, ``mlp2x_gelu``; LLaVA's builder pattern)
that maps encoder features to a group of tokens of the LLM's hidden size:

* image: the encoder's 7×7 grid of patch features (CLIP's 768-d tokens; EfficientNet-Lite0's 1280-d
  head features with each cell's mean colour, 1283-d), optionally standardised per dimension by the
  training set's statistics (``image_stats``) → average-pooled to a k×k grid (k = 7 keeps every
  patch) → projector → k² tokens;
* audio: Whisper encoder frames of the speech actually present → ``audio_stack`` consecutive frames
  concatenated → projector → one token per stack (capped at ``max_audio_tokens``); the ``ctc_mlp``
  projector's per-stack tokens are trained with CTC to spell the transcript in the LLM's input
  embeddings, and the stacks it reads as blank are dropped and repeats merged, so the LLM gets
  about one token per word piece heard;
* or, with a whole-media projector (``slots_mlp``, ``slots_attn``), a fixed number of tokens made from
  every cell (or time cell) together, which the trainer first teaches to spell the caption/transcript.

Learned per-modality weights wᵢ = exp(αᵢ) (1 at α = 0) scale each modality's token group, and one fused
summary token x̂ = Σ wᵢ x̂ᵢ (x̂ᵢ the mean of modality i's tokens) follows each group. Each weight is its
modality's own: checkpoints written before ``modality_weights`` existed tied them as w = softmax(α)
(×2), so a turn with audio alone heard it louder when the image weight fell (measured with the
shipped EfficientNet checkpoint: image 0.76, audio 1.24, and spoken requests answered from the audio
tokens alone fell from 5 to 4 of 45). The LLM stays frozen.
In the prompt each group sits between text delimiters: ``<image>…</image>``, ``<audio>…</audio>``.

Checkpoints are safetensors + JSON metadata recording the LLM, each encoder's name and weight
fingerprint, dims, training-data hash and eval metrics, with the sha256 of the weights file.
Loading against another LLM or encoder raises :class:`FusionMismatch` with a clear message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmchat.errors import MMChatError

MODALITIES = ("image", "audio")
DELIMITERS = {"image": ("<image>", "</image>"), "audio": ("<audio>", "</audio>")}
WEIGHTS_FILE = "fusion.safetensors"
META_FILE = "fusion.json"
FORMAT_VERSION = 1
CTC_TEMPERATURE = 20.0  # cosine logits ×20: CTC needs a peaked blank/word read-out per stack
COLLAPSE_FRAMES = 1500  # 30 s of Whisper frames (20 ms each)


@dataclass(frozen=True)
class FusionConfig:
    llm: str  # registry name of the frozen LLM
    hidden_size: int  # its embedding width
    image_encoder: str = "clip-vit-b-32"  # registry name of the image encoder the projector reads
    image_fingerprint: str = ""  # sha256 of the encoder weights the projector was trained against
    image_dim: int = 768  # its patch width (CLIP ViT-B/32: 768; EfficientNet-Lite0 + colour: 1283)
    image_grid: int = 4  # patches pooled from 7×7 to grid×grid cells
    # Standardise each CLIP feature dimension by the training features' mean and std (buffers
    # image_mean, image_std) before the projector. The seeded random-init CLIP's patch tokens share a
    # large common part, which the per-token LayerNorm keeps: their mean over the training images has
    # norm 34, a token's own deviation from it 9. Measured, an MLP probe reads the shape of a single
    # drawn shape 95 % right after standardising, 81 % after the LayerNorm alone.
    image_stats: bool = False
    image_projector: str = "mlp2x_gelu"
    image_slots: int = 16  # tokens a whole-image projector (``slots_*``) makes; per-cell ones make grid²
    audio_encoder: str = "whisper-base"
    audio_fingerprint: str = ""
    audio_dim: int = 512  # Whisper-base d_model
    audio_stack: int = 4  # encoder frames (20 ms each) per audio token
    max_audio_tokens: int = 64  # 64 × 4 frames × 20 ms ≈ 5 s at full resolution
    audio_projector: str = "mlp2x_gelu"
    audio_cells: int = 32  # a whole-clip projector reads the speech pooled in time to this many cells ...
    audio_slots: int = 16  # ... and makes this many tokens
    embed_rms: float = 0.02  # RMS of the LLM's token embeddings; projector outputs start at this scale
    mlp_hidden: int = 512  # inner width of the MLP projectors (keeps the shipped checkpoint a few MB)
    audio_vocab: int = 0  # ``ctc_mlp``: how many LLM token ids the collapse reads stacks against (stored with the weights)
    # "own": wᵢ = exp(αᵢ), each modality's weight its own; "softmax": w = softmax(α) ×2, one trade
    # between the two (what checkpoints without this field were trained with; read_meta fills it in).
    modality_weights: str = "own"

    def whole(self, modality: str) -> bool:
        """True when ``modality``'s projector makes a fixed number of tokens (``<modality>_slots``)
        from the whole image or clip, rather than one token per cell or frame stack."""
        return getattr(self, f"{modality}_projector") in WHOLE_MEDIA_PROJECTORS

    @property
    def audio_collapse(self) -> bool:
        """True for a CTC-trained per-stack audio projector (``ctc_mlp``): blank stacks are dropped
        and repeats merged, so the LLM gets about one token per word piece heard."""
        return self.audio_projector in COLLAPSING_PROJECTORS

    @property
    def image_tokens(self) -> int:
        group = self.image_slots if self.whole("image") else self.image_grid ** 2
        return group + 1  # group + summary token


class FusionMismatch(MMChatError):
    """A checkpoint trained against another LLM or encoder than the one loaded."""


# -- projectors: a registry keyed by name ---------------------------------------------------------
# Per-token projectors map (..., in_dim) → (..., out_dim); whole-image ones map (B, cells, in_dim) →
# (B, slots, out_dim).
def _linear(in_dim: int, out_dim: int, *, hidden: int, cells: int = 0, slots: int = 0) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


def _mlp2x_gelu(in_dim: int, out_dim: int, *, hidden: int, cells: int = 0, slots: int = 0) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class SlotProjector(nn.Module):
    """The whole grid → ``slots`` tokens, so token j can say the j-th thing about the image.

    A per-cell MLP (in_dim → ``cell_dim``) reads each cell; an MLP over all cells together makes
    each slot's coordinates in a shared ``rank``-dimensional basis of the embedding space. Per-cell
    tokens cannot spell a sentence (shape and count are not properties of one cell); these can, and
    :class:`mmchat.fusion_train.Aligner` first trains them to spell the image's caption."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden: int, cells: int, slots: int,
                 cell_dim: int = 128, rank: int = 96, dropout: float = 0.1) -> None:
        super().__init__()
        if cells < 1 or slots < 1:
            raise ValueError("a whole-image projector needs cells ≥ 1 and slots ≥ 1")
        self.slots, self.rank = slots, rank
        # Dropout on the cell features while training: measured, it (with 4× the images) lifted
        # held-out caption-word accuracy from 48 % to 60 %, where the projector had memorised.
        self.cell = nn.Sequential(nn.Linear(in_dim, cell_dim), nn.GELU(), nn.Dropout(dropout))
        self.mix = nn.Sequential(nn.Linear(cells * cell_dim, hidden), nn.GELU(), nn.Linear(hidden, slots * rank))
        self.basis = nn.Linear(rank, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        coords = self.mix(self.cell(x).flatten(1)).view(b, self.slots, self.rank)
        return self.basis(coords)


class AttentionSlotProjector(nn.Module):
    """The whole grid → ``slots`` tokens by attention: learned slot queries attend over the cells
    (each read by one shared MLP, plus a learned position per cell) in ``layers`` rounds, the
    later rounds asking with what the earlier ones found (a small Perceiver resampler). It shares
    the cell reader across positions, so it has far fewer weights than :class:`SlotProjector`
    (0.8 M vs 3.5 M), but measured it learns much more slowly: 25 % held-out caption-word accuracy
    after 2000 alignment steps, where :class:`SlotProjector` had 48 %."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden: int, cells: int, slots: int,
                 width: int = 256, heads: int = 4, layers: int = 2, rank: int = 96) -> None:
        super().__init__()
        if cells < 1 or slots < 1:
            raise ValueError("a whole-image projector needs cells ≥ 1 and slots ≥ 1")
        self.cell = nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, width))
        self.where = nn.Parameter(torch.randn(cells, width) * 0.02)
        self.queries = nn.Parameter(torch.randn(slots, width) * 0.02)
        self.rounds = nn.ModuleList(nn.MultiheadAttention(width, heads, batch_first=True) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, rank))
        self.basis = nn.Linear(rank, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = self.cell(x) + self.where
        slots = self.queries.expand(x.shape[0], -1, -1)
        for attend, norm in zip(self.rounds, self.norms):
            found, _ = attend(norm(slots), cells, cells, need_weights=False)
            slots = slots + found
        return self.basis(self.out(slots))


# ``ctc_mlp`` (audio only) is ``mlp2x_gelu`` per stack of frames, trained with CTC and collapsed (Fusion._collapse).
PROJECTORS = {"linear": _linear, "mlp2x_gelu": _mlp2x_gelu, "slots_mlp": SlotProjector,
              "slots_attn": AttentionSlotProjector, "ctc_mlp": _mlp2x_gelu}
WHOLE_MEDIA_PROJECTORS = frozenset({"slots_mlp", "slots_attn"})
COLLAPSING_PROJECTORS = frozenset({"ctc_mlp"})


def build_projector(name: str, in_dim: int, out_dim: int, *, hidden: int | None = None, cells: int = 0,
                    slots: int = 0) -> nn.Module:
    """A projector by name; ``hidden`` is the MLP's inner width (default: ``out_dim``); ``cells`` and
    ``slots`` size the whole-image projectors (input cells, output tokens)."""
    try:
        factory = PROJECTORS[name]
    except KeyError:
        raise ValueError(f"unknown projector {name!r}; known: {', '.join(PROJECTORS)}") from None
    return factory(in_dim, out_dim, hidden=hidden or out_dim, cells=cells, slots=slots)


class _Branch(nn.Module):
    """LayerNorm on encoder features → projector → learned output scale (starts at the LLM's embedding RMS)."""

    def __init__(self, projector: str, in_dim: int, out_dim: int, embed_rms: float, hidden: int, *,
                 cells: int = 0, slots: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = build_projector(projector, in_dim, out_dim, hidden=hidden, cells=cells, slots=slots)
        self.log_scale = nn.Parameter(torch.tensor(math.log(embed_rms)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.norm(x))
        y = y / y.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()  # unit RMS per token
        return y * self.log_scale.exp()


class Fusion(nn.Module):
    """Projectors for both modalities plus the learned modality weights α."""

    def __init__(self, config: FusionConfig, *, seed: int | None = None) -> None:
        """``seed``: draw each modality's initial weights from a generator of its own (seeded by
        ``seed`` and the modality), so that one branch's shape does not move the other's start —
        measured, a larger image projector alone took the audio read-out's held-out token error
        rate from 40 % to 58 %. None draws them from torch's global generator."""
        super().__init__()
        self.config = config
        with _branch_seed(seed, "image"):
            self.image = _Branch(config.image_projector, config.image_dim, config.hidden_size, config.embed_rms,
                                 config.mlp_hidden, cells=config.image_grid ** 2, slots=config.image_slots)
        audio_in = config.audio_dim * (1 if config.whole("audio") else config.audio_stack)
        with _branch_seed(seed, "audio"):
            self.audio = _Branch(config.audio_projector, audio_in, config.hidden_size, config.embed_rms,
                                 config.mlp_hidden, cells=config.audio_cells, slots=config.audio_slots)
            if config.audio_collapse:
                self.audio_blank = nn.Parameter(torch.randn(config.hidden_size) * 0.02)
        self.alpha = nn.Parameter(torch.zeros(len(MODALITIES)))
        if config.image_stats:
            self.register_buffer("image_mean", torch.zeros(config.image_dim))
            self.register_buffer("image_std", torch.ones(config.image_dim))
        if config.modality_weights not in ("own", "softmax"):
            raise ValueError(f"unknown modality_weights={config.modality_weights!r}; choose own or softmax")
        if config.image_projector in COLLAPSING_PROJECTORS:
            raise ValueError(f"{config.image_projector} is an audio projector")
        if config.audio_collapse:
            if config.audio_vocab < 1:
                raise ValueError(f"the {config.audio_projector} audio projector needs audio_vocab ≥ 1")
            self.register_buffer("audio_vocab_ids", torch.zeros(config.audio_vocab, dtype=torch.long))
        self._vocab: torch.Tensor | None = None  # unit rows of the LLM's input embeddings of audio_vocab_ids

    def use_vocabulary(self, embed: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Give a collapsing audio projector the LLM's input embeddings of its token ids (``embed``:
        token ids → embeddings, e.g. ``LLM.embed``); without them :meth:`audio_tokens` cannot tell
        blank stacks from words. Other projectors need nothing."""
        if self.config.audio_collapse:
            with torch.no_grad():
                self._vocab = F.normalize(embed(self.audio_vocab_ids).float(), dim=-1)

    def fit_image_stats(self, patches: Sequence[torch.Tensor]) -> None:
        """Set the standardisation of an ``image_stats`` config from training images' (49, image_dim)
        patch tokens (at least one image)."""
        if not self.config.image_stats:
            raise ValueError("this fusion config does not standardise image features (image_stats=False)")
        total = torch.zeros(self.config.image_dim, dtype=torch.float64)
        square = torch.zeros_like(total)
        n = 0
        for p in patches:  # one image at a time: 8000 images' patches in fp32 would be 1.2 GB
            p = p.double().reshape(-1, self.config.image_dim)
            total += p.sum(0)
            square += p.pow(2).sum(0)
            n += len(p)
        if not n:
            raise ValueError("image statistics need at least one image")
        mean = total / n
        std = (square / n - mean.pow(2)).clamp(min=0).sqrt()
        self.image_mean.copy_(mean.float())
        self.image_std.copy_(std.float().clamp(min=1e-3))  # a constant dimension stays finite (and fp16-safe)

    def weights(self) -> dict[str, float]:
        """Each modality's weight wᵢ, rounded for reports: the gain on its token group (1 at α = 0)."""
        return {m: round(self.weight(m), 4) for m in MODALITIES}

    def weight(self, modality: str) -> float:
        with torch.no_grad():
            return float(self._scale(modality))

    def set_weight(self, modality: str, weight: float) -> None:
        """Make ``modality``'s weight ``weight`` (an ``own``-weights fusion only: a softmax ties the two)."""
        if self.config.modality_weights != "own":
            raise ValueError("a softmax's weights are one trade between the modalities: set α instead")
        with torch.no_grad():
            self.alpha[MODALITIES.index(modality)] = math.log(weight)

    def _scale(self, modality: str) -> torch.Tensor:
        i = MODALITIES.index(modality)
        if self.config.modality_weights == "own":
            return self.alpha[i].exp()
        # ×M so that equal weights (α = 0) leave a group at unit gain.
        return torch.softmax(self.alpha, 0)[i] * len(MODALITIES)

    def image_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, 49, image_dim) CLIP patch tokens → (B, group + 1, hidden): weighted group + summary
        (group: grid² per-cell tokens, or ``image_slots`` from a whole-image projector)."""
        if self.config.image_stats:
            patches = (patches - self.image_mean) / self.image_std
        b, n, d = patches.shape
        side = math.isqrt(n)
        grid = patches.transpose(1, 2).reshape(b, d, side, side)
        pooled = nn.functional.adaptive_avg_pool2d(grid, self.config.image_grid).flatten(2).transpose(1, 2)
        group = self.image(pooled) * self._scale("image")
        return torch.cat([group, group.mean(1, keepdim=True)], dim=1)

    def audio_tokens(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, audio_dim) Whisper frames → (B, tokens + 1, hidden). Frames beyond ``lengths`` are padding.

        Per-token projectors make one token per ``audio_stack`` frames (zero past a clip's length); a
        whole-clip projector pools each clip's frames to ``audio_cells`` cells and makes ``audio_slots``."""
        if self.config.whole("audio"):
            lengths = torch.full((len(frames),), frames.shape[1]) if lengths is None else lengths
            cells = torch.stack([nn.functional.adaptive_avg_pool1d(f[:max(1, int(n))].T.unsqueeze(0),
                                                                   self.config.audio_cells)[0].T
                                 for f, n in zip(frames, lengths)])
            group = self.audio(cells) * self._scale("audio")
            return torch.cat([group, group.mean(1, keepdim=True)], dim=1)
        group, mask = self.audio_stacks(frames, lengths)
        if self.config.audio_collapse:
            group, mask = self._collapse(group, mask)
        summary = group.sum(1, keepdim=True) / mask.sum(1).clamp(min=1).view(-1, 1, 1)
        return torch.cat([group, summary], dim=1)

    def audio_stacks(self, frames: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, audio_dim) frames → one weighted token per ``audio_stack`` frames (zero past a
        clip's length) and the (B, stacks) mask of live ones."""
        stacked, mask = self._stack(frames, lengths)
        return self.audio(stacked) * self._scale("audio") * mask.unsqueeze(-1), mask

    def readout_logits(self, stacks: torch.Tensor) -> torch.Tensor:
        """(..., hidden) stack tokens → (..., audio_vocab + 1) cosine logits against the vocabulary's
        embeddings and the blank (last column): what the CTC alignment trains and the collapse reads."""
        if self._vocab is None:
            raise RuntimeError("a collapsing audio projector needs Fusion.use_vocabulary(LLM input embeddings) first")
        table = torch.cat([self._vocab, F.normalize(self.audio_blank, dim=0).unsqueeze(0)])
        return CTC_TEMPERATURE * F.normalize(stacks, dim=-1) @ table.T

    def heard(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[int]]:
        """The LLM token ids a ``ctc_mlp`` projector reads from each clip (what its tokens say)."""
        with torch.no_grad():
            labels = self._read(*self.audio_stacks(frames, lengths)).tolist()
        return [[int(self.audio_vocab_ids[row[run[0]]]) for run in runs] for row, runs in zip(labels, self._runs(labels))]

    def _read(self, stacks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, stacks) read-out labels; padding reads as blank (``audio_vocab``)."""
        return self.readout_logits(stacks).argmax(-1).masked_fill(mask == 0, self.config.audio_vocab)

    def _runs(self, labels: list[list[int]]) -> list[list[list[int]]]:
        """Per clip, CTC's greedy read-out as runs of stack indices: blank stacks dropped, each run
        of stacks read as the same token kept together; the first ``max_audio_tokens`` runs."""
        blank, out = self.config.audio_vocab, []
        for row in labels:
            runs: list[list[int]] = []
            for t, label in enumerate(row):
                if label != blank:
                    if t and row[t - 1] == label:
                        runs[-1].append(t)
                    else:
                        runs.append([t])
            out.append(runs[:self.config.max_audio_tokens])
        return out

    def _collapse(self, stacks: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each run of stacks read as one token becomes their mean (at the run's RMS). Returns the
        (B, n, hidden) zero-padded groups and their mask."""
        groups = [torch.stack([_run_mean(tokens[r]) for r in runs]) if runs else stacks.new_zeros(0, stacks.shape[-1])
                  for tokens, runs in zip(stacks, self._runs(self._read(stacks, mask).tolist()))]
        counts = torch.tensor([len(g) for g in groups])
        padded = nn.utils.rnn.pad_sequence(groups, batch_first=True)
        live = (torch.arange(padded.shape[1]).unsqueeze(0) < counts.unsqueeze(1)).to(stacks.dtype)
        return padded, live

    def _stack(self, frames: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = frames.shape
        s = self.config.audio_stack
        pad = (-t) % s
        if pad:
            frames = nn.functional.pad(frames, (0, 0, 0, pad))
        stacked = frames.reshape(b, (t + pad) // s, d * s)
        lengths = torch.full((b,), t, dtype=torch.long) if lengths is None else lengths
        n_tokens = (lengths + s - 1) // s
        mask = (torch.arange(stacked.shape[1]).unsqueeze(0) < n_tokens.unsqueeze(1)).to(stacked.dtype)
        return stacked, mask

    def fit_audio_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, audio_dim) frames of one clip, averaged down in time so they make at most
        ``max_audio_tokens`` tokens (long clips keep their whole span, coarser). A collapsing
        projector reads words, not stacks: it keeps up to 30 s at full resolution."""
        limit = COLLAPSE_FRAMES if self.config.audio_collapse else self.config.max_audio_tokens * self.config.audio_stack
        if frames.shape[0] <= limit:
            return frames
        return nn.functional.adaptive_avg_pool1d(frames.T.unsqueeze(0), limit).squeeze(0).T

    def fused(self, image: torch.Tensor | None, audio: torch.Tensor | None) -> torch.Tensor:
        """One token Σ wᵢ x̂ᵢ over the modalities present (each (B, n, hidden) token groups)."""
        parts = [g[:, :-1].mean(1) for g in (image, audio) if g is not None]
        return torch.stack(parts, 0).sum(0).unsqueeze(1)


@contextlib.contextmanager
def _branch_seed(seed: int | None, modality: str) -> Iterator[None]:
    """Within: torch's global generator seeded for ``modality``'s branch (restored after), or untouched for None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + MODALITIES.index(modality))
        yield


def _run_mean(tokens: torch.Tensor) -> torch.Tensor:
    """The mean of (n, hidden) tokens, scaled back to their RMS (a mean of near-parallel vectors is shorter)."""
    mean = tokens.mean(0)
    return mean * (tokens.pow(2).mean().sqrt() / mean.pow(2).mean().add(1e-12).sqrt())


# -- checkpoints ----------------------------------------------------------------------------------
@dataclass
class FusionMeta:
    config: FusionConfig
    data_hash: str = ""
    metrics: dict = field(default_factory=dict)
    weights_sha256: str = ""
    trained_steps: int = 0
    format_version: int = FORMAT_VERSION


def save(fusion: Fusion, directory: Path, *, data_hash: str = "", metrics: dict | None = None,
         trained_steps: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``fusion.safetensors`` (fp16 by default: half the size, no measurable loss) and
    ``fusion.json`` (with the weights' sha256) atomically."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous()
             for k, v in fusion.state_dict().items()}
    save_file(state, tmp, metadata={"format": "mmchat-fusion"})
    tmp.replace(weights)
    meta = FusionMeta(fusion.config, data_hash, dict(metrics or {}), _sha256(weights), trained_steps)
    meta_tmp = directory / (META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps(dataclasses.asdict(meta), indent=2, sort_keys=True))
    meta_tmp.replace(directory / META_FILE)
    return directory


def read_meta(directory: Path) -> FusionMeta:
    try:
        raw = json.loads((directory / META_FILE).read_text())
        config = FusionConfig(**{"modality_weights": "softmax", **raw.pop("config")})
        return FusionMeta(config=config, **raw)
    except FileNotFoundError:
        raise MMChatError(f"No fusion checkpoint in {directory}.", hint="Train one with `mmchat train-fusion`.") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise MMChatError(f"The fusion checkpoint metadata in {directory} is unreadable ({exc}).") from None


def load(directory: Path, *, llm: str, hidden_size: int, image_fingerprint: str | None = None,
         audio_fingerprint: str | None = None, embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Fusion:
    """Load a checkpoint, verifying its sha256 and that it was trained for this LLM and these encoders.

    A fingerprint of ``None`` skips that modality's check (its encoder is not loaded yet). ``embed``
    (the LLM's token ids → input embeddings) is what a ``ctc_mlp`` audio projector reads against."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(directory)
    cfg = meta.config
    if meta.format_version != FORMAT_VERSION:
        raise MMChatError(f"The fusion checkpoint in {directory} has format {meta.format_version}; "
                          f"this mmchat reads format {FORMAT_VERSION}.", hint="Retrain with `mmchat train-fusion`.")
    if cfg.llm != llm or cfg.hidden_size != hidden_size:
        raise FusionMismatch(f"The fusion checkpoint was trained for the LLM {cfg.llm} (hidden {cfg.hidden_size}), "
                             f"not {llm} (hidden {hidden_size}).", hint="Run `mmchat train-fusion` for this model.")
    for modality, wanted, have in (("image", cfg.image_fingerprint, image_fingerprint),
                                   ("audio", cfg.audio_fingerprint, audio_fingerprint)):
        if have is not None and wanted and wanted != have:
            raise FusionMismatch(
                f"The fusion checkpoint's {modality} projector was trained against different {modality} encoder "
                f"weights ({wanted[:12]}…) than the ones loaded ({have[:12]}…), e.g. real CLIP weights after "
                "training on the random init.", hint="Run `mmchat train-fusion` to train it for these weights.")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file() or _sha256(weights) != meta.weights_sha256:
        raise MMChatError(f"The fusion weights in {directory} are missing or do not match their sha256 (corrupt or tampered).",
                          hint="Restore them (e.g. reinstall mmchat) or retrain with `mmchat train-fusion`.")
    fusion = Fusion(cfg)
    try:
        fusion.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()})
    except (SafetensorError, RuntimeError, ValueError, OSError) as exc:  # matching sha256, unusable content
        raise MMChatError(f"The fusion weights in {directory} could not be read ({exc}).",
                          hint="Retrain with `mmchat train-fusion`.") from None
    if embed is not None:
        fusion.use_vocabulary(embed)
    fusion.eval()
    return fusion


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
