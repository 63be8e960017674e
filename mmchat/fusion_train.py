"""Train the fusion projectors against the frozen LLM, on cached encoder features.

1. Encode every sample's media once (CLIP patch tokens, Whisper frames of the speech present) into
   a feature cache keyed by the dataset hash and the encoders' fingerprints.
2. Turn each question/answer pair into an :class:`Example`: the user turn is
   ``<image>[media]</image>\\n{question}`` under mmchat's own system prompt, and the target is the
   answer followed by the end-of-turn token — exactly the prompt the chat builds.
3. Align (a minute or two on 2 cores; no LLM run): each media token group is pulled towards the LLM's own input
   embeddings of the words its sample's answers use (cosine softmax over those words' tokens and
   sampled other tokens). A frozen LLM reads such tokens like the words, which the answer loss alone
   does not find in a few hundred steps (measured: image loss with real vs. shuffled features was
   1.142 vs. 1.144 without this stage, though the features carry colour and position linearly).
   Whole-image projectors (``slots_mlp``) are instead taught to spell the caption, token by token.
4. Train with AdamW. The prompt text before the media group is the same for every example of a
   modality, so its KV cache is computed once and shared; only the media group, the question and
   the answer run through the LLM each step, and logits are computed only where the answer is.

Batches are drawn from a generator seeded by (seed, epoch), so a run resumed from its saved state
(``train-state/``: projector + optimizer as safetensors, step in JSON) continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from mmchat import fusion as fusion_mod
from mmchat import paths
from mmchat.context import MEDIA_PLACEHOLDER
from mmchat.errors import MMChatError
from mmchat.llm.torch_runtime import cache_of, with_cache

log = logging.getLogger(__name__)

STATE_DIR = "train-state"
IGNORE = -100  # label for positions that are not part of an answer

TRAINABLE = ("all", "weights")


@dataclass(frozen=True)
class TrainConfig:
    """The defaults are the recipe of the checkpoint shipped for the default LLM
    (``scripts/train-fusion-asset.sh``), so training from the app or a bare ``mmchat train-fusion``
    makes one as good: whole-image slots, CTC audio, alignment only."""

    steps: int = 0  # answer-loss steps after the alignment (they cost 4-7 s each on 2 cores)
    batch_size: int = 8
    lr: float = 5e-3
    weight_decay: float = 0.01
    warmup_steps: int = 15
    seed: int = 0
    checkpoint_every: int = 25  # steps between resumable saves
    audio_every: int = 3  # every n-th batch is an audio batch (when there is audio data)
    image_projector: str = "slots_mlp"
    audio_projector: str = "ctc_mlp"
    # Every CLIP patch (7×7), standardised by the training images' statistics (FusionConfig.image_stats),
    # into 32 tokens: in an images-only run it lifted held-out shape from 27 to 37 of 40 over 4×4 cells,
    # LayerNorm alone and 16 tokens (assets/fusion/README.md, session 10).
    image_grid: int = 7
    image_slots: int = 32  # tokens per image for a whole-image projector
    image_stats: bool = True
    audio_cells: int = 32  # time cells and tokens per clip for a whole-clip audio projector
    audio_slots: int = 16
    align_steps: int = 4500  # alignment before the answer loss (0: none)
    align_batch_size: int = 64
    align_lr: float = 3e-3
    # The audio branch's alignment learning rate (align_lr is the image branch's). Measured with CTC from
    # one start: 3e-3 read held-out clips with a token error rate of 48 %, 1e-3 with 39 %
    # (assets/fusion/README.md, session 11).
    audio_align_lr: float = 1e-3
    align_cosine: bool = True  # the alignment's learning rate decays to 0 over align_steps (cosine)
    # Audio CTC alignment only: each step drops the first 0..audio_stack-1 frames of every clip (so
    # word boundaries fall at every phase of the frame stacks, as they do in use) and zeroes this
    # fraction of frame features (dropout). Without them the CTC loss on 1200 clips fell to 0.001
    # (memorised); with them, from two starts, held-out token error rate 40 → 33 % and 58 → 46 %.
    audio_shift: bool = True
    audio_dropout: float = 0.1
    # Audio CTC alignment only, off in the shipped recipe: each clip's frames are resampled in time by
    # a factor within 1 ± audio_stretch (a faster or slower speaker), then audio_time_masks spans of up
    # to AUDIO_TIME_MASK frames and audio_feature_masks bands of up to AUDIO_FEATURE_MASK feature
    # dimensions are zeroed (SpecAugment, on encoder frames). With 0.15, 2 and 2, 1500 audio-only steps
    # from two starts read the held-out clips made only of heard tokens with a token error rate of
    # 4.8 % instead of 10.8 %, and 21.1 % instead of 34.3 %. In the whole shipped run they took the
    # spoken requests answered from 5 to 9 of 79, but its image batches moved, and seed-7 shape fell
    # from 86 to 78 % (assets/fusion/README.md, "Stretched and masked clips").
    audio_stretch: float = 0.0
    audio_time_masks: int = 0
    audio_feature_masks: int = 0
    # Run the alignment's matrix products in bfloat16 (autocast; weights and optimizer stay fp32).
    align_bf16: bool = True
    train: str = "all"  # what the answer loss trains: "all" (projectors and weights) or "weights" (wᵢ only)

    @property
    def answer_audio_every(self) -> int:
        """Every n-th answer-loss batch is audio. Trained alone, each weight learns from its own
        modality's batches, so 1:1 gives both the same number of steps."""
        return 2 if self.train == "weights" else self.audio_every


@dataclass(frozen=True)
class Example:
    modality: str  # "image" | "audio"
    sample_id: str
    question: str
    answer: str
    kind: str
    transcript: str = ""  # what an audio sample says (its transcript), when known


def build_examples(samples: Sequence) -> list[Example]:
    """One example per QA pair of each sample, plus a caption example for images."""
    examples = []
    for s in samples:
        for qa in s.qa:
            examples.append(Example(s.modality, s.id, qa.q, qa.a, qa.kind, s.transcript or ""))
        if s.modality == "image" and s.caption:
            examples.append(Example("image", s.id, "Describe the image in a few words.", s.caption, "caption"))
    return examples


def user_turn(modality: str, question: str, *, with_media: bool = True) -> str:
    """The user message for one example; ``with_media=False`` is the no-features control."""
    start, end = fusion_mod.DELIMITERS[modality]
    media = f"{start}{MEDIA_PLACEHOLDER}{end}\n" if with_media else ""
    return f"{media}{question}"


# -- feature cache ---------------------------------------------------------------------------------
def encode_features(samples: Sequence, *, image_encoder=None, whisper=None, data_hash: str,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Encoder features per sample id (fp16), computed once and cached in the user cache dir."""
    from safetensors.torch import load_file, save_file

    fingerprints = f"{getattr(image_encoder, 'fingerprint', '')}:{getattr(whisper, 'fingerprint', '')}"
    key = hashlib.sha256(f"{data_hash}:{fingerprints}".encode()).hexdigest()[:20]
    path = paths.cache_dir() / "fusion-features" / f"{key}.safetensors"
    if path.is_file():
        try:
            features = load_file(path)
            if all(s.id in features for s in samples):
                return features
        except Exception as exc:  # a damaged cache is rebuilt
            log.warning("feature cache %s unreadable (%s); re-encoding", path, exc)
    features = _encode_all(samples, image_encoder=image_encoder, whisper=whisper, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(features, tmp)
    tmp.replace(path)
    return features


def _encode_all(samples, *, image_encoder, whisper, progress) -> dict[str, torch.Tensor]:
    from mmchat.audio import load_audio
    from mmchat.images import load_image

    features: dict[str, torch.Tensor] = {}
    images = [s for s in samples if s.modality == "image"]
    clips = [s for s in samples if s.modality == "audio"]
    if images and image_encoder is None or clips and whisper is None:
        raise ValueError("an encoder is missing for the dataset's modalities")
    total, done = len(samples), 0
    with tqdm(total=total, desc="encoding features", unit="sample", file=sys.stderr, disable=None, leave=False) as bar:
        for i in range(0, len(images), 16):
            batch = images[i:i + 16]
            patches = image_encoder.encode([load_image(s.path) for s in batch]).patches
            for s, p in zip(batch, patches):
                features[s.id] = p.to(torch.float16).contiguous()
            done += len(batch)
            bar.update(len(batch))
            if progress:
                progress(done, total)
        for s in clips:
            features[s.id] = whisper.encode(load_audio(s.path)).to(torch.float16).contiguous()
            done += 1
            bar.update(1)
            if progress:
                progress(done, total)
    return features


# -- batches ---------------------------------------------------------------------------------------
class _Batcher:
    """Tokenised examples and the shared prompt prefix (with its KV cache) per modality."""

    def __init__(self, llm, system_prompt: str) -> None:
        self.llm = llm
        self.system_prompt = system_prompt
        self._prefix: dict[str, tuple[list[int], list]] = {}
        self.end_ids = [i for i in llm.stop_ids if i == llm.tokenizer.convert_tokens_to_ids("<|im_end|>")] or \
            sorted(llm.stop_ids)[:1]

    def split(self, modality: str, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the media placeholder, as the chat renders them."""
        chat = [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user_turn(modality, question)}]
        text = self.llm.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        before, after = text.split(MEDIA_PLACEHOLDER)
        tok = self.llm.tokenizer
        return tok(before, add_special_tokens=False)["input_ids"], tok(after, add_special_tokens=False)["input_ids"]

    def prefix(self, modality: str) -> tuple[list[int], list]:
        """The ids before the media group (identical for every question) and their KV per layer."""
        if modality not in self._prefix:
            ids, _ = self.split(modality, "x")
            with torch.no_grad():
                out = self.llm.model(input_ids=torch.tensor([ids]), use_cache=True)
            kv = [(layer[0], layer[1]) for layer in cache_of(out)]
            self._prefix[modality] = (ids, kv)
        return self._prefix[modality]

    def suffix(self, example: Example) -> tuple[list[int], list[int]]:
        """(input ids after the media group, labels): the answer and end-of-turn are the targets."""
        before, after = self.split(example.modality, example.question)
        if before != self.prefix(example.modality)[0]:
            raise RuntimeError("the chat template rendered a question-dependent prefix")
        answer = self.llm.tokenizer(example.answer, add_special_tokens=False)["input_ids"] + self.end_ids
        ids = after + answer
        labels = [IGNORE] * len(after) + answer
        # Predict token t+1 from position t: shift left by one.
        return ids, labels[1:] + [IGNORE]


def answer_loss(llm, batcher: _Batcher, media: torch.Tensor, media_mask: torch.Tensor,
                examples: Sequence[Example], *, with_media: bool = True) -> torch.Tensor:
    """Mean cross-entropy of the answers given ``media`` ((B, k, H) token groups, (B, k) mask).

    ``with_media=False`` drops the media group from the sequence (the no-features control)."""
    from transformers import DynamicCache

    modality = examples[0].modality
    prefix_ids, kv = batcher.prefix(modality)
    suffixes = [batcher.suffix(e) for e in examples]
    b, width = len(examples), max(len(ids) for ids, _ in suffixes)
    ids = torch.zeros(b, width, dtype=torch.long)
    labels = torch.full((b, width), IGNORE, dtype=torch.long)
    text_mask = torch.zeros(b, width)
    for i, (s_ids, s_labels) in enumerate(suffixes):
        ids[i, :len(s_ids)] = torch.tensor(s_ids)
        labels[i, :len(s_labels)] = torch.tensor(s_labels)
        text_mask[i, :len(s_ids)] = 1
    text = llm.model.get_input_embeddings()(ids)
    if with_media:
        embeds = torch.cat([media.to(text.dtype), text], dim=1)
        mask = torch.cat([media_mask, text_mask], dim=1)
        labels = torch.cat([torch.full(media_mask.shape, IGNORE, dtype=torch.long), labels], dim=1)
        # The position before the first question token predicts it; nothing is learned there.
    else:
        embeds, mask = text, text_mask
    p = len(prefix_ids)
    cache = DynamicCache([(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv])
    attention = torch.cat([torch.ones(b, p), mask], dim=1).long()
    positions = (p + mask.cumsum(1) - 1).clamp(min=p).long()
    hidden = llm.model.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                             **with_cache(llm.model.model, cache), use_cache=True).last_hidden_state
    where = labels != IGNORE
    logits = llm.model.lm_head(hidden[where]).float()
    return torch.nn.functional.cross_entropy(logits, labels[where])


def media_tokens(fusion: fusion_mod.Fusion, features: dict[str, torch.Tensor], examples: Sequence[Example],
                 *, shuffle: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token groups and masks for a same-modality batch; ``shuffle`` pairs each example with another
    example's features (the shuffled-feature control)."""
    keys = [e.sample_id for e in examples]
    if shuffle is not None:
        keys = [keys[i] for i in torch.randperm(len(keys), generator=shuffle).tolist()]
    feats = [features[k].float() for k in keys]
    if examples[0].modality == "image":
        tokens = fusion.image_tokens(torch.stack(feats))
        return tokens, torch.ones(tokens.shape[:2])
    tokens = fusion.audio_tokens(*_padded_frames(fusion, feats))
    if fusion.config.whole("audio"):
        return tokens, torch.ones(tokens.shape[:2])
    # Past each clip's stacks (or words heard) the group is zero; a live token never is.
    return tokens, (tokens.detach().abs().amax(-1) > 0).float()


def _padded_frames(fusion: fusion_mod.Fusion, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    feats = [fusion.fit_audio_frames(f) for f in feats]
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), torch.tensor([len(f) for f in feats])


def audio_vocabulary(llm, samples: Sequence, *, seed: int) -> list[int]:
    """The LLM token ids a collapsing audio projector reads stacks against: every token of the
    training transcripts, plus random other tokens for them to compete with."""
    spoken = heard_tokens(llm, samples)
    generator = torch.Generator().manual_seed(seed)
    n_vocab = llm.model.get_input_embeddings().weight.shape[0]
    return sorted(spoken | set(torch.randperm(n_vocab, generator=generator)[:ALIGN_NEGATIVES].tolist()))


HEARD_KEY = "heard_token_ids"  # in a checkpoint's metrics["train"]: every token of the training transcripts


def heard_tokens(llm, samples: Sequence) -> set[int]:
    """Token ids of the training transcripts: all a CTC read-out was ever trained to spell."""
    return {i for s in samples if s.modality == "audio" and s.transcript for i in transcript_ids(llm, s.transcript)}


def transcript_ids(llm, transcript: str) -> list[int]:
    """A transcript's token ids as they would follow ``<audio>`` (a caption's, ``<image>``)."""
    return llm.tokenizer(f" {transcript.strip()}", add_special_tokens=False)["input_ids"]


# -- vocabulary alignment ------------------------------------------------------------------------
ALIGN_TEMPERATURE = 10.0  # cosine logits ×10: a softmax sharp enough to single out a few words
ALIGN_NEGATIVES = 2048  # random vocabulary tokens the target words compete with
AUDIO_TIME_MASK = 4  # widest span of Whisper frames a time mask zeroes (80 ms)
AUDIO_FEATURE_MASK = 48  # widest band of feature dimensions a feature mask zeroes (of Whisper-base's 512)
AUGMENT_SEED = 1_000_003  # the stretch and masks' generator is seeded with seed + this
_STOPWORDS = frozenset("a an the and or of on in at to is are it its this that there with what which how "
                       "many one shape shapes picture image background".split())


def answer_words(sample) -> list[str]:
    """The content words a sample's answers use (and its caption or transcript): what the LLM must
    say about the media."""
    texts = [qa.a for qa in sample.qa] + [t for t in (sample.caption, sample.transcript) if t]
    words = {w for t in texts for w in re.findall(r"[a-z]+", t.lower()) if w not in _STOPWORDS and len(w) > 1}
    return sorted(words)


def word_token_ids(llm, words: Sequence[str]) -> dict[str, list[int]]:
    """First token id of each word as it appears mid-sentence (`` word``) and at the start (``Word``)."""
    tok = llm.tokenizer
    out = {}
    for w in words:
        ids = {tok(f" {w}", add_special_tokens=False)["input_ids"][0], tok(w.capitalize(), add_special_tokens=False)[
            "input_ids"][0]}
        out[w] = sorted(ids)
    return out


CAPTION_PAD = "."  # what a whole-image token group says after its caption ends


def caption_ids(llm, caption: str, slots: int) -> list[int]:
    """The caption's token ids as they would follow ``<image>``, cut or padded to ``slots``."""
    ids = transcript_ids(llm, caption)[:slots]
    pad = llm.tokenizer(CAPTION_PAD, add_special_tokens=False)["input_ids"][0]
    return ids + [pad] * (slots - len(ids))


class Aligner:
    """Pulls each modality's tokens towards LLM input embeddings of words about its samples.

    * A whole-media projector (``slots_mlp``, ``slots_attn``) is taught to spell each image's caption: slot j
      regresses onto the input embedding of the caption's j-th token (squared error at the
      embedding's scale plus a cosine softmax against other tokens). The frozen LLM then reads the
      group much as it would read the caption, before any answer-loss step.
    * A collapsing audio projector (``audio_collapse``) is taught with CTC to spell each clip's
      transcript: every stack of frames reads as one of the transcript's tokens or as blank
      (cosine logits against the LLM's input embeddings of ``audio_vocab_ids`` and a learned blank).
      It shares one MLP across time, so a word learnt anywhere in a clip is read anywhere.
    * Other per-token projectors pull every token towards the embeddings of the words the
      sample's answers use."""

    def __init__(self, llm, fusion: fusion_mod.Fusion, features: dict[str, torch.Tensor], samples: Sequence,
                 *, config: TrainConfig) -> None:
        self.fusion, self.features, self.config = fusion, features, config
        cfg = fusion.config
        slots = {m: getattr(cfg, f"{m}_slots") if cfg.whole(m) else 0 for m in fusion_mod.MODALITIES}
        columns = {int(t): c for c, t in enumerate(fusion.audio_vocab_ids.tolist())} if cfg.audio_collapse else {}
        # sample id -> (tokens,) columns of its transcript in audio_vocab_ids, for the CTC loss
        self.spoken = {s.id: torch.tensor([columns[t] for t in ids_]) for s in samples
                       if cfg.audio_collapse and s.modality == "audio" and s.transcript
                       and (ids_ := transcript_ids(llm, s.transcript)) and all(t in columns for t in ids_)}
        # What a whole-media group spells: an image's caption, a clip's transcript (token ids).
        spelt = {s.id: caption_ids(llm, text, slots[s.modality]) for s in samples
                 if slots[s.modality] and (text := s.caption if s.modality == "image" else s.transcript)}
        words = {s.id: answer_words(s) for s in samples if s.id not in spelt and s.id not in self.spoken}
        ids = word_token_ids(llm, sorted({w for ws in words.values() for w in ws}))
        generator = torch.Generator().manual_seed(config.seed)
        vocab = llm.model.get_input_embeddings().weight.detach().float()
        targets = {i for v in ids.values() for i in v} | {i for c in spelt.values() for i in c}
        negatives = torch.randperm(len(vocab), generator=generator)[:ALIGN_NEGATIVES].tolist()
        self.candidates = sorted(targets | set(negatives))
        self.column = {token: c for c, token in enumerate(self.candidates)}
        self.raw = vocab[self.candidates]
        self.rms = float(vocab.pow(2).mean().sqrt())
        self.embeddings = torch.nn.functional.normalize(self.raw, dim=-1)
        # sample id -> (slots,) candidate columns of its caption's tokens, looked up once here
        self.captions = {i: torch.tensor([self.column[t] for t in ids_]) for i, ids_ in spelt.items()}
        self.targets = {}  # sample id -> (n_candidates,) target distribution over its words' tokens
        for sample_id, ws in words.items():
            cols = [self.column[i] for w in ws for i in ids[w]]
            if cols:
                dist = torch.zeros(len(self.candidates))
                dist[cols] = 1.0 / len(cols)
                self.targets[sample_id] = dist
        self.by_modality = {m: [Example(s.modality, s.id, "", "", "align") for s in samples
                                if s.modality == m and (s.id in self.targets or s.id in self.captions
                                                        or s.id in self.spoken)]
                            for m in fusion_mod.MODALITIES}
        # The cosine loss ignores the output scale: leave log_scale (and α) to the answer loss,
        # except where the squared error sets it.
        groups = []
        for m in fusion_mod.MODALITIES:
            if not self.by_modality[m]:
                continue
            branch = getattr(fusion, m)
            params = [*branch.norm.parameters(), *branch.proj.parameters()]
            if any(e.sample_id in self.captions for e in self.by_modality[m]):
                params.append(branch.log_scale)
            if m == "audio" and self.spoken:
                params.append(fusion.audio_blank)
            groups.append({"params": params, "lr": config.audio_align_lr if m == "audio" else config.align_lr})
        self.base_lr = [g["lr"] for g in groups]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.generator = generator
        # Stretch and masks draw from a generator of their own: with them off, a run draws what it drew
        # before they existed (the shipped checkpoint is reproduced bit for bit).
        self.augment_generator = torch.Generator().manual_seed(config.seed + AUGMENT_SEED)

    def loss(self, examples: Sequence[Example]) -> torch.Tensor:
        captioned = [e for e in examples if e.sample_id in self.captions]
        spoken = [e for e in examples if e.sample_id in self.spoken]
        rest = [e for e in examples if e.sample_id not in self.captions and e.sample_id not in self.spoken]
        parts = [self._caption_loss(captioned)] if captioned else []
        if spoken:
            parts.append(self._ctc_loss(spoken))
        if rest:
            parts.append(self._word_loss(rest))
        return sum(parts) / len(parts)

    def _word_loss(self, examples: Sequence[Example]) -> torch.Tensor:
        """Every token (group and summary) against its sample's word distribution."""
        tokens, mask = media_tokens(self.fusion, self.features, examples)
        logits = (ALIGN_TEMPERATURE * torch.nn.functional.normalize(tokens, dim=-1) @ self.embeddings.T).float()
        target = torch.stack([self.targets[e.sample_id] for e in examples]).unsqueeze(1).expand_as(logits)
        per_token = -(target * torch.log_softmax(logits, -1)).sum(-1)
        return (per_token * mask).sum() / mask.sum()

    def _ctc_loss(self, examples: Sequence[Example]) -> torch.Tensor:
        """CTC of each clip's stack read-out (its transcript's tokens, blank = the last column),
        on clips stretched and masked (:func:`augment_frames`), then shifted and dropped out as
        ``config.audio_shift`` / ``audio_dropout`` say."""
        clips = [augment_frames(self.features[e.sample_id].float(), self.config, self.augment_generator)
                 for e in examples]
        if self.config.audio_shift:
            shifts = torch.randint(self.fusion.config.audio_stack, (len(clips),), generator=self.generator).tolist()
            clips = [c[k:] if len(c) > k else c for c, k in zip(clips, shifts)]
        frames, lengths = _padded_frames(self.fusion, clips)
        if self.config.audio_dropout:
            keep = torch.rand(frames.shape, generator=self.generator) >= self.config.audio_dropout
            frames = frames * keep / (1 - self.config.audio_dropout)
        stacks, mask = self.fusion.audio_stacks(frames, lengths)
        log_probs = self.fusion.readout_logits(stacks).float().log_softmax(-1)  # fp32 under autocast
        targets = [self.spoken[e.sample_id] for e in examples]
        return torch.nn.functional.ctc_loss(
            log_probs.transpose(0, 1), torch.cat(targets), mask.sum(1).long(), torch.tensor([len(t) for t in targets]),
            blank=self.fusion.config.audio_vocab, zero_infinity=True)

    def _caption_loss(self, examples: Sequence[Example]) -> torch.Tensor:
        """Slot j of the group against the caption's j-th token (the summary token is left free)."""
        group = media_tokens(self.fusion, self.features, examples)[0][:, :-1].float()  # fp32 under autocast
        columns = torch.stack([self.captions[e.sample_id] for e in examples])
        squared = (group - self.raw[columns]).pow(2).mean() / self.rms ** 2
        logits = (ALIGN_TEMPERATURE * torch.nn.functional.normalize(group, dim=-1) @ self.embeddings.T).float()
        return squared + torch.nn.functional.cross_entropy(logits.flatten(0, 1), columns.flatten())

    def run(self, steps: int, *, progress: Callable[[int, int], None] | None = None) -> list[float]:
        """``steps`` optimizer steps; ``progress(done, steps)`` after each (it may raise to stop)."""
        losses = []
        self.fusion.train()
        for step in range(steps):
            if self.config.align_cosine:
                for group, lr in zip(self.optimizer.param_groups, self.base_lr):
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            pool = self.by_modality[modality_for(step, self.by_modality, audio_every=self.config.audio_every)]
            picked = torch.randint(len(pool), (min(self.config.align_batch_size, len(pool)),),
                                   generator=self.generator)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.align_bf16):
                loss = self.loss([pool[i] for i in picked.tolist()])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            if progress:
                progress(step + 1, steps)
        return losses


def augment_frames(clip: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A (T, audio_dim) clip resampled in time and with spans of frames and bands of features zeroed,
    as ``config`` says (``audio_stretch``, ``audio_time_masks``, ``audio_feature_masks``); a new tensor."""
    if config.audio_stretch:
        factor = 1 + config.audio_stretch * (2 * float(torch.rand((), generator=generator)) - 1)
        length = max(1, round(len(clip) * factor))
        clip = torch.nn.functional.interpolate(clip.T.unsqueeze(0), size=length, mode="linear",
                                               align_corners=False)[0].T
    clip = clip.clone()
    for masks, widest, axis in ((config.audio_time_masks, AUDIO_TIME_MASK, 0),
                                (config.audio_feature_masks, AUDIO_FEATURE_MASK, 1)):
        for _ in range(masks):
            width = int(torch.randint(widest + 1, (), generator=generator))
            if width and clip.shape[axis] > width:
                start = int(torch.randint(clip.shape[axis] - width, (), generator=generator))
                clip.narrow(axis, start, width).zero_()
    return clip


# -- training --------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, llm, fusion: fusion_mod.Fusion, features: dict[str, torch.Tensor],
                 examples: Sequence[Example], *, config: TrainConfig, system_prompt: str,
                 kept: Collection[str] = ()) -> None:
        self.llm, self.fusion, self.features, self.config = llm, fusion, features, config
        # A branch taken as it is from another checkpoint (``kept``) keeps its weight wᵢ too, so no
        # answer-loss batch is of its modality: measured, moving the audio weight of a branch trained
        # at gain 1 to 1.24 cost held-out spoken requests (5 → 4 of 45).
        self.by_modality = {m: [e for e in examples if e.modality == m and m not in kept]
                            for m in fusion_mod.MODALITIES}
        self.batcher = _Batcher(llm, system_prompt)
        llm.model.requires_grad_(False)
        if config.train not in TRAINABLE:
            raise ValueError(f"unknown train={config.train!r}; choose one of {', '.join(TRAINABLE)}")
        # A branch frozen before training (an audio branch taken from another checkpoint) stays as it is.
        self.params = [fusion.alpha] if config.train == "weights" else [p for p in fusion.parameters() if p.requires_grad]
        decay = 0.0 if config.train == "weights" else config.weight_decay  # α = 0 is no prior to pull to
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=decay)
        self.step = 0
        self.losses: list[float] = []

    def _lr(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return c.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _batch(self, step: int) -> list[Example]:
        c = self.config
        modality = modality_for(step, self.by_modality, audio_every=c.answer_audio_every)
        pool = self.by_modality[modality]
        per_epoch = max(1, len(pool) // c.batch_size)
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(
            c.seed * 1_000_003 + epoch * 2 + (modality == "audio")))
        return [pool[i] for i in order[index * c.batch_size:(index + 1) * c.batch_size].tolist()]

    def train_step(self) -> float:
        examples = self._batch(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        self.fusion.train()
        tokens, mask = media_tokens(self.fusion, self.features, examples)
        loss = answer_loss(self.llm, self.batcher, tokens, mask, examples)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.step += 1
        value = loss.item()
        self.losses.append(value)
        return value

    def train(self, *, state_dir: Path | None = None, progress: Callable[[int, int], None] | None = None) -> None:
        trained = {id(p) for p in self.params}
        for p in self.fusion.parameters():  # frozen projectors need no gradients (the alignment stays)
            p.requires_grad_(id(p) in trained)
        with tqdm(total=self.config.steps, initial=self.step, desc="training fusion", unit="step",
                  file=sys.stderr, disable=None) as bar:
            while self.step < self.config.steps:
                loss = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", w=self.fusion.weights())
                if progress:
                    progress(self.step, self.config.steps)
                if state_dir is not None and (self.step % self.config.checkpoint_every == 0
                                              or self.step == self.config.steps):
                    self.save_state(state_dir)

    # -- resumable state ---------------------------------------------------------------------------
    def save_state(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in self.fusion.state_dict().items()}
        names = dict(self.fusion.named_parameters())
        index = {id(p): n for n, p in names.items()}
        for p, state in self.optimizer.state.items():
            for key, value in state.items():
                tensors[f"optim.{index[id(p)]}.{key}"] = value.detach().reshape(value.shape).contiguous()
        tmp = directory / "state.safetensors.tmp"
        save_file(tensors, tmp)
        tmp.replace(directory / "state.safetensors")
        meta = {"step": self.step, "config": asdict(self.config), "losses": self.losses}
        (directory / "state.json.tmp").write_text(json.dumps(meta))
        (directory / "state.json.tmp").replace(directory / "state.json")

    def load_state(self, directory: Path) -> bool:
        """Resume from ``directory`` if it holds a state of the same configuration; True if resumed."""
        from safetensors.torch import load_file

        try:
            meta = json.loads((directory / "state.json").read_text())
            tensors = load_file(directory / "state.safetensors")
        except (OSError, ValueError) as exc:
            log.info("no resumable state in %s (%s)", directory, exc)
            return False
        if meta.get("config") != asdict(self.config):
            log.warning("training state in %s is for another configuration; starting afresh", directory)
            return False
        self.fusion.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        for name, p in self.fusion.named_parameters():
            state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items()
                     if k.startswith(f"optim.{name}.") and k.count(".") == name.count(".") + 2}
            if state:
                self.optimizer.state[p] = state
        self.step, self.losses = meta["step"], meta.get("losses", [])
        return True


def modality_for(step: int, by_modality: dict[str, list], *, audio_every: int) -> str:
    """Which modality's batch ``step`` trains: every ``audio_every``-th is audio when both have data."""
    if not by_modality["image"]:
        return "audio"
    if not by_modality["audio"]:
        return "image"
    return "audio" if step % audio_every == audio_every - 1 else "image"


def require_modalities(samples: Sequence) -> None:
    if not samples:
        raise MMChatError("The training data has no samples.")


# -- the whole job ---------------------------------------------------------------------------------
VISION_RECIPE_ENCODER = "efficientnet-lite0"  # whose shipped projector the vision data trained
VISION_RECIPE_PHOTOS = 1500  # augmented photos in it
AUDIO_DONOR_ENCODER = "clip-vit-b-32"  # the shipped checkpoint whose audio branch the vision recipe keeps


@dataclass(frozen=True)
class DataConfig:
    """The generated dataset used when no ``--data`` is given (train and held-out splits)."""

    train_images: int = 8000  # as shipped: with 2000 the slots projector memorised (assets/fusion/README.md)
    train_speech: int = 1200
    train_photos: int = 0  # > 0: the pretrained image encoders' data (prepare_vision_data)
    heldout_images: int = 240
    heldout_speech: int = 120
    seed: int = 0


def prepare_data(config: DataConfig, *, root: Path | None = None) -> tuple[Path, Path]:
    """Build (or reuse) the generated train and held-out splits in the user cache."""
    from mmchat.fusion_data import build_dataset

    root = root or _data_root(config)
    train = build_dataset(root, split="train", n_images=config.train_images, n_speech=config.train_speech,
                          seed=config.seed)
    return train, prepare_heldout(config, root=root)


def prepare_heldout(config: DataConfig, *, root: Path | None = None) -> Path:
    """Build (or reuse) only the generated held-out split."""
    from mmchat.fusion_data import build_dataset

    return build_dataset(root or _data_root(config), split="heldout", n_images=config.heldout_images,
                         n_speech=config.heldout_speech, seed=config.seed)


@dataclass(frozen=True)
class Recipe:
    """How the shipped checkpoint for an image encoder was trained (scripts/train-*-fusion-asset.sh)."""

    data: DataConfig
    train: TrainConfig
    audio_from: Path | None  # a shipped checkpoint whose audio branch is kept
    vision_data: bool  # prepare_vision_data rather than prepare_data


def shipped_recipe(llm_name: str, image_encoder: str) -> Recipe:
    """The recipe the app's "Train fusion" follows for this LLM and image encoder."""
    if image_encoder != VISION_RECIPE_ENCODER:
        return Recipe(DataConfig(), TrainConfig(), None, vision_data=False)
    donor = paths.assets_dir() / "fusion" / llm_name / AUDIO_DONOR_ENCODER
    has_donor = (donor / fusion_mod.META_FILE).is_file()
    return Recipe(DataConfig(train_photos=VISION_RECIPE_PHOTOS),
                  TrainConfig(steps=60, train="weights", lr=0.05) if has_donor else TrainConfig(),
                  donor if has_donor else None, vision_data=True)


def prepare_vision_data(config: DataConfig, *, root: Path | None = None) -> tuple[Path, Path]:
    """Build (or reuse) the pretrained image encoders' train and held-out splits
    (:func:`mmchat.fusion_data.photos.build_vision_dataset`) in the user cache."""
    from mmchat.fusion_data.photos import build_vision_dataset

    root = root or paths.cache_dir() / "fusion-data" / f"vision-seed{config.seed}"
    return build_vision_dataset(root, n_drawings=config.train_images, n_photos=config.train_photos,
                                n_speech=config.train_speech, seed=config.seed,
                                heldout_drawings=config.heldout_images)


def _data_root(config: DataConfig) -> Path:
    return paths.cache_dir() / "fusion-data" / f"seed{config.seed}"


def _checkpoint(engine, directory: Path, *, image: bool) -> fusion_mod.Fusion:
    """The checkpoint in ``directory``, checked against the loaded LLM and speech encoder, and with
    ``image`` the image encoder too."""
    llm = engine.training_llm
    return fusion_mod.load(directory, llm=llm.name, hidden_size=llm.hidden_size,
                           image_fingerprint=engine.image_encoder.fingerprint if image else None,
                           audio_fingerprint=engine.whisper.fingerprint, embed=llm.embed)


def _encoders_for(engine, samples) -> dict:
    modalities = {s.modality for s in samples}
    return {"image_encoder": engine.image_encoder if "image" in modalities else None,
            "whisper": engine.whisper if "audio" in modalities else None}


def train_fusion(engine, *, train_dir: Path, heldout_dir: Path | None, out: Path, config: TrainConfig,
                 system_prompt: str, resume: bool = True, eval_limit: int = 40,
                 progress: Callable[[int, int], None] | None = None, audio_from: Path | None = None,
                 start_from: Path | None = None) -> dict:
    """Train, evaluate on ``heldout_dir`` and save the checkpoint in ``out``; returns the eval report.

    ``audio_from``: a checkpoint (for the same LLM and speech encoder) whose audio branch is taken
    as it is, bit for bit, and not trained: only the image branch is aligned (a new image encoder
    then does not cost the audio read-out its measured quality), and its weight w_audio with it:
    the answer-loss steps see images only (see :class:`Trainer`).

    ``start_from``: a checkpoint for this LLM and these encoders to go on from, as it is (its
    projectors, image statistics and audio vocabulary; the recipe's projector options are not
    used): no alignment runs, only the answer-loss steps (e.g. ``train="weights"`` retrains wᵢ)."""
    from mmchat.fusion_data import dataset_hash, validate_dataset
    from mmchat.fusion_eval import evaluate

    samples = validate_dataset(train_dir)
    donor = _checkpoint(engine, audio_from, image=False) if audio_from is not None else None
    base = _checkpoint(engine, start_from, image=True) if start_from is not None else None
    require_modalities(samples)
    llm = engine.training_llm
    encoders = _encoders_for(engine, samples)
    data_hash = dataset_hash(train_dir)
    started = time.monotonic()
    features = encode_features(samples, data_hash=data_hash, **encoders)
    with torch.no_grad():
        embed_rms = float(llm.model.get_input_embeddings().weight.float().pow(2).mean().sqrt())
    image_encoder = encoders["image_encoder"]
    fusion_config = fusion_mod.FusionConfig(
        llm=llm.name, hidden_size=llm.hidden_size,
        image_encoder=getattr(image_encoder, "name", fusion_mod.FusionConfig.image_encoder),
        image_dim=getattr(image_encoder, "patch_dim", fusion_mod.FusionConfig.image_dim),
        image_fingerprint=getattr(image_encoder, "fingerprint", ""),
        audio_fingerprint=getattr(encoders["whisper"], "fingerprint", ""),
        image_projector=config.image_projector, audio_projector=config.audio_projector,
        image_grid=config.image_grid, image_slots=config.image_slots, audio_cells=config.audio_cells,
        audio_slots=config.audio_slots, embed_rms=embed_rms,
        image_stats=config.image_stats and image_encoder is not None)
    vocabulary = []
    if donor is not None:
        fusion_config = replace(fusion_config, **{f.name: getattr(donor.config, f.name) for f in fields(donor.config)
                                                  if f.name.startswith("audio_")})
    elif fusion_config.audio_collapse and base is None:
        vocabulary = audio_vocabulary(llm, samples, seed=config.seed)
        fusion_config = replace(fusion_config, audio_vocab=len(vocabulary))
    if base is not None:
        fusion_config = replace(base.config, modality_weights="own")
    torch.manual_seed(config.seed)  # the dropout masks and α depend on the seed alone ...
    fusion = fusion_mod.Fusion(fusion_config, seed=config.seed)  # ... and each projector's start on it and its modality
    if base is not None:
        fusion.load_state_dict(base.state_dict())
        for modality in fusion_mod.MODALITIES:  # the same gains, whichever way base tied them
            fusion.set_weight(modality, base.weight(modality))
    elif fusion_config.image_stats:
        fusion.fit_image_stats([features[s.id] for s in samples if s.modality == "image"])
    if vocabulary:
        fusion.audio_vocab_ids.copy_(torch.tensor(vocabulary))
    if donor is not None:
        fusion.load_state_dict({k: v for k, v in donor.state_dict().items() if k.startswith("audio")}, strict=False)
        fusion.audio.requires_grad_(False)
        fusion.set_weight("audio", donor.weight("audio"))
        if fusion_config.audio_collapse:
            fusion.audio_blank.requires_grad_(False)
    fusion.use_vocabulary(llm.embed)
    trainer = Trainer(llm, fusion, features, build_examples(samples), config=config, system_prompt=system_prompt,
                      kept={"audio"} if donor is not None else ())
    state_dir = paths.cache_dir() / "fusion-train" / llm.name / data_hash[:16]
    if resume and trainer.load_state(state_dir):
        log.info("resuming fusion training at step %d", trainer.step)
    encode_s = time.monotonic() - started
    align_losses = []
    # Progress counts alignment and answer-loss steps together (the callback may raise to stop).
    total = (config.align_steps if base is None else 0) + config.steps
    if trainer.step == 0 and config.align_steps and base is None:  # a resumed or started state is aligned
        aligned = (lambda done, _: progress(done, total)) if progress else None
        aligned_samples = [s for s in samples if donor is None or s.modality == "image"]
        align_losses = Aligner(llm, fusion, features, aligned_samples, config=config).run(config.align_steps,
                                                                                   progress=aligned)
    align_s = time.monotonic() - started - encode_s
    trainer.train(state_dir=state_dir,
                  progress=(lambda done, _: progress(total - config.steps + done, total)) if progress else None)
    train_s = time.monotonic() - started - encode_s - align_s
    fusion.eval()
    # A CTC read-out spells only tokens it heard in training: keep them, so that eval-fusion can
    # also score, on their own, the held-out requests made only of these tokens.
    heard = heard_tokens(llm, samples) if fusion_config.audio_collapse else None
    if donor is not None and heard is not None:  # the audio branch heard the donor's training clips
        heard = set(fusion_mod.read_meta(audio_from).metrics.get("train", {}).get(HEARD_KEY, heard))
    report: dict = {"train": {"steps": trainer.step, "batch_size": config.batch_size, "encode_s": round(encode_s, 1),
                              "align_s": round(align_s, 1), "align_loss": [*align_losses[:2], *align_losses[-2:]],
                              "train_s": round(train_s, 1), "first_loss": trainer.losses[:5],
                              "last_loss": trainer.losses[-5:], "samples": len(samples),
                              **({HEARD_KEY: sorted(heard)} if heard is not None else {})}}
    if start_from is not None:
        base_meta = fusion_mod.read_meta(start_from)
        report["train"]["started_from"] = {"weights_sha256": base_meta.weights_sha256,
                                           "trained_steps": base_meta.trained_steps, "data_hash": base_meta.data_hash}
    if heldout_dir is not None:
        held = validate_dataset(heldout_dir)
        held_features = encode_features(held, data_hash=dataset_hash(heldout_dir), **_encoders_for(engine, held))
        report["heldout"] = evaluate(llm, fusion, held_features, build_examples(held), system_prompt=system_prompt,
                                     limit_per_kind=eval_limit, heard=heard)
    fusion_mod.save(fusion, out, data_hash=data_hash, metrics=report, trained_steps=trainer.step)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report
