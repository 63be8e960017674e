"""Fusion training on the real (small) SmolLM2 with synthetic encoder features: the loss must fall,
resuming must continue exactly, and the media tokens must matter to the answer."""

from dataclasses import replace

import pytest
import torch

from mmchat.chat import SYSTEM_PROMPT
from mmchat.fusion import Fusion, FusionConfig
from mmchat.fusion_eval import is_correct, losses
from mmchat.fusion_train import Example, Trainer, TrainConfig, build_examples, media_tokens, modality_for

COLOURS = ("red", "green", "blue")


@pytest.fixture(scope="module")
def llm():
    from mmchat.llm import LLM

    return LLM.load("smollm2-135m-instruct")


def synthetic(n_images=24, n_clips=9):
    """Image 'patches' whose colour is written into three feature channels; clips saying a number."""
    g = torch.Generator().manual_seed(0)
    features, examples = {}, []
    for i in range(n_images):
        f = torch.randn(49, 768, generator=g) * 0.1
        f[:, i % 3] += 3.0
        features[f"img{i}"] = f.half()
        examples.append(Example("image", f"img{i}", "What colour is the shape?", COLOURS[i % 3], "colour"))
    for i in range(n_clips):
        f = torch.randn(30 + 5 * i, 512, generator=g) * 0.1
        f[:, 100 + i % 3] += 3.0
        features[f"clip{i}"] = f.half()
        examples.append(Example("audio", f"clip{i}", "Answer the spoken request in one word.",
                                ("one", "two", "three")[i % 3], "arithmetic"))
    return features, examples


def make_trainer(llm, steps, seed=0, **options):
    features, examples = synthetic()
    torch.manual_seed(seed)
    with torch.no_grad():  # start at the LLM's own embedding scale, as train_fusion does
        rms = float(llm.model.get_input_embeddings().weight.float().pow(2).mean().sqrt())
    fusion = Fusion(FusionConfig(llm=llm.name, hidden_size=llm.hidden_size, embed_rms=rms))
    config = TrainConfig(**{"steps": steps, "batch_size": 6, "lr": 1e-2, "warmup_steps": 2, "seed": seed,
                            "audio_every": 3, **options})
    return Trainer(llm, fusion, features, examples, config=config, system_prompt=SYSTEM_PROMPT), features, examples


@pytest.mark.slow
def test_training_lowers_loss_and_media_matters(llm):
    trainer, features, examples = make_trainer(llm, steps=24)
    before = losses(llm, trainer.fusion, features, examples, system_prompt=SYSTEM_PROMPT)
    trainer.train()
    after = losses(llm, trainer.fusion, features, examples, system_prompt=SYSTEM_PROMPT)
    assert after["image"]["real"] < 0.5 * before["image"]["real"]
    # With the real features the answer is far more likely than with another sample's features.
    assert after["image"]["real"] < after["image"]["shuffled"] - 0.5
    assert after["audio"]["real"] < before["audio"]["real"]
    # Greedy answers through the chat's own generation path follow the features.
    from mmchat.fusion_train import media_tokens, user_turn
    from mmchat.llm import GenerationConfig

    hits = 0
    for e in [e for e in examples if e.modality == "image"][:6]:
        tokens, _ = media_tokens(trainer.fusion, features, [e])
        chat = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_turn("image", e.question)}]
        hits += is_correct(llm.generate(chat, media=[tokens[0].detach()], config=GenerationConfig(max_new_tokens=5, temperature=0)), e.answer)
    assert hits >= 5


@pytest.mark.slow
def test_resume_continues_exactly(llm, tmp_path):
    straight, _, _ = make_trainer(llm, steps=4)
    straight.train()

    first, _, _ = make_trainer(llm, steps=4)
    for _ in range(2):
        first.train_step()
    first.save_state(tmp_path)
    resumed, _, _ = make_trainer(llm, steps=4, seed=0)
    assert resumed.load_state(tmp_path) and resumed.step == 2
    resumed.train()
    for (name, a), b in zip(straight.fusion.state_dict().items(), resumed.fusion.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_weights_only_training_moves_the_weights_and_nothing_else(llm):
    """``--train weights``: the answer loss learns wᵢ = exp(αᵢ) and leaves the projectors alone."""
    trainer, _, _ = make_trainer(llm, steps=6, train="weights", lr=0.2)
    before = {k: v.clone() for k, v in trainer.fusion.state_dict().items()}
    trainer.train()
    after = trainer.fusion.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["alpha"]
    assert abs(trainer.fusion.weights()["image"] - 1.0) > 0.01
    with pytest.raises(ValueError, match="all, weights"):
        make_trainer(llm, steps=1, train="bias")


def test_examples_from_samples():
    from pathlib import Path

    from mmchat.fusion_data import QA, Sample

    samples = [Sample("a", "image", Path("a.png"), (QA("What colour?", "red", "colour"),), caption="a red circle"),
               Sample("b", "audio", Path("b.flac"), (QA("Answer in one word.", "five", "arithmetic"),), transcript="two plus three")]
    examples = build_examples(samples)
    assert [(e.modality, e.question, e.answer) for e in examples] == [
        ("image", "What colour?", "red"), ("image", "Describe the image in a few words.", "a red circle"),
        ("audio", "Answer in one word.", "five")]
    assert [e.transcript for e in examples] == ["", "", "two plus three"]


def test_audio_accuracy_splits_out_requests_made_of_heard_tokens(monkeypatch):
    """With the training transcripts' tokens, each audio kind also reports its requests whose every
    token was heard, and the report prints them."""
    from mmchat import fusion_eval

    class Tokenizer:  # one id per word
        ids: dict[str, int] = {}

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [self.ids.setdefault(w, len(self.ids)) for w in text.split()]}

    class FakeLLM:  # answers right with the audio tokens only when the request uses no unheard word
        tokenizer = Tokenizer()

        def generate(self, chat, config, media=None):
            said = chat[1]["content"]
            return "five" if media is not None and "fish" not in said else "no idea"

    monkeypatch.setattr(fusion_eval, "media_tokens", lambda fusion, features, batch: (torch.ones(1, 2, 4),
                                                                                      torch.ones(1, 2)))
    monkeypatch.setattr(fusion_eval, "user_turn", lambda modality, q, with_media=True: q)
    said = ["two plus three", "one plus four", "fish plus five"]
    examples = [Example("audio", f"c{i}", t, "five", "arithmetic", t) for i, t in enumerate(said)]
    heard = {i for t in said[:2] for i in Tokenizer()(f" {t}")["input_ids"]}
    out = fusion_eval.accuracy(FakeLLM(), None, {}, examples, system_prompt="", heard=heard)["audio"]["arithmetic"]
    assert out == {"n": 3, "accuracy": 0.6667, "no_media_accuracy": 0.0, "chance": 1.0,
                   "heard": {"n": 2, "accuracy": 1.0, "no_media_accuracy": 0.0}}
    assert "heard" not in fusion_eval.accuracy(FakeLLM(), None, {}, examples, system_prompt="")["audio"]["arithmetic"]
    report = {"llm": "x", "weights": {}, "tokens_per_item": {}, "loss": {}, "accuracy": {"audio": {"arithmetic": out}},
              "audio_readout": {"n": 3, "exact": 0.0, "token_error_rate": 0.5,
                                "heard": {"n": 2, "exact": 0.5, "token_error_rate": 0.25}}}
    text = fusion_eval.format_report(report)
    assert "arithmetic" in text and "100.0%" in text and "2 of 3" in text
    assert "of the 2 whose every token was heard in training: 50.0% exact, token error rate 25.0%" in text


def test_is_correct_scoring():
    assert is_correct("It is in the center.", "centre") and is_correct("There are 4 shapes.", "four")
    assert is_correct("Gray.", "grey") and not is_correct("There are 14 shapes.", "four")
    assert is_correct("Red.", "red") and is_correct("The shape is red.", "red")
    assert not is_correct("It is blue, not red at all, I think maybe", "green")
    assert is_correct("The answer is five", "five") and not is_correct("fifty", "five")


def test_alignment_pulls_media_tokens_to_their_answer_words(llm):
    from pathlib import Path

    from mmchat.fusion_data.records import QA, Sample
    from mmchat.fusion_train import Aligner, answer_words, word_token_ids

    features, examples = synthetic()
    samples = [Sample(e.sample_id, e.modality, Path(f"{e.sample_id}.png"), qa=(QA(e.question, e.answer, e.kind),))
               for e in examples]
    assert answer_words(samples[0]) == ["red"]
    torch.manual_seed(0)
    fusion = Fusion(FusionConfig(llm=llm.name, hidden_size=llm.hidden_size))
    alpha, scale = fusion.alpha.detach().clone(), fusion.image.log_scale.detach().clone()
    words = word_token_ids(llm, COLOURS)
    colours = torch.nn.functional.normalize(llm.model.get_input_embeddings().weight[
        [words[c][0] for c in COLOURS]].float(), dim=-1)
    images = [e for e in examples if e.modality == "image"]

    def nearest_colour_hits():
        with torch.no_grad():
            summary = fusion.image_tokens(torch.stack([features[e.sample_id].float() for e in images]))[:, -1]
        picked = (torch.nn.functional.normalize(summary, dim=-1) @ colours.T).argmax(1).tolist()
        return sum(COLOURS[p] == e.answer for p, e in zip(picked, images))

    assert nearest_colour_hits() < len(images)
    aligner = Aligner(llm, fusion, features, samples, config=TrainConfig(align_batch_size=8, align_lr=1e-2))
    losses_seen = aligner.run(60)
    assert losses_seen[-1] < 0.7 * losses_seen[0]
    assert nearest_colour_hits() == len(images)  # every image's summary token reads as its colour
    # The modality weights and output scales are left to the answer loss.
    assert torch.equal(fusion.alpha, alpha) and torch.equal(fusion.image.log_scale, scale)

    # Progress after every step; raising from it (how the app's Stop works) ends the run there.
    seen = []

    class Stopped(Exception):
        pass

    def progress(done, total):
        seen.append((done, total))
        if done == 3:
            raise Stopped

    with pytest.raises(Stopped):
        aligner.run(10, progress=progress)
    assert seen == [(1, 10), (2, 10), (3, 10)]


def assert_bf16_loss_matches_fp32(aligner, modality):
    """The alignment runs under bf16 autocast (TrainConfig.align_bf16): its loss is still an fp32
    number within 2 % of the fp32 one."""
    batch = aligner.by_modality[modality][:8]
    with torch.no_grad():
        fp32 = aligner.loss(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = aligner.loss(batch)
    assert bf16.dtype == torch.float32 and abs(bf16 - fp32) < 0.02 * fp32, (float(bf16), float(fp32))


def test_whole_image_alignment_spells_the_caption(llm):
    """A ``slots_mlp`` group is taught to read, token by token, as its image's caption."""
    from pathlib import Path

    from mmchat.fusion_data.records import QA, Sample
    from mmchat.fusion_train import CAPTION_PAD, Aligner, caption_ids

    features, examples = synthetic()
    images = [e for e in examples if e.modality == "image"]
    samples = [Sample(e.sample_id, "image", Path(f"{e.sample_id}.png"), caption=f"a {e.answer} circle",
                      qa=(QA(e.question, e.answer, e.kind),)) for e in images]
    ids = caption_ids(llm, "a red circle", 5)
    assert len(ids) == 5 and llm.tokenizer.decode(ids).startswith(" a red circle")
    assert ids[-1] == llm.tokenizer(CAPTION_PAD, add_special_tokens=False)["input_ids"][0]
    torch.manual_seed(0)
    with torch.no_grad():
        rms = float(llm.model.get_input_embeddings().weight.float().pow(2).mean().sqrt())
    fusion = Fusion(FusionConfig(llm=llm.name, hidden_size=llm.hidden_size, embed_rms=rms,
                                 image_projector="slots_mlp", image_slots=5))
    vocab = torch.nn.functional.normalize(llm.model.get_input_embeddings().weight.float(), dim=-1)

    def spelt():
        fusion.eval()  # no dropout
        with torch.no_grad():
            group = fusion.image_tokens(torch.stack([features[e.sample_id].float() for e in images]))[:, :-1]
        nearest = (torch.nn.functional.normalize(group, dim=-1) @ vocab.T).argmax(-1)
        return [llm.tokenizer.decode(row) for row in nearest]

    truth = [llm.tokenizer.decode(caption_ids(llm, s.caption, 5)) for s in samples]
    assert sum(a == b for a, b in zip(spelt(), truth)) == 0
    assert_bf16_loss_matches_fp32(Aligner(llm, fusion, features, samples, config=TrainConfig()), "image")
    aligner = Aligner(llm, fusion, features, samples, config=TrainConfig(align_batch_size=8, align_lr=1e-2))
    losses_seen = aligner.run(80)
    assert losses_seen[-1] < 0.3 * losses_seen[0]
    assert spelt() == truth  # e.g. " a green circle.." for every image, nearest token by token


def test_alignment_and_training_share_one_image_audio_schedule():
    both = {"image": [1], "audio": [1]}
    assert [modality_for(step, both, audio_every=3) for step in range(6)] == ["image", "image", "audio"] * 2
    assert {modality_for(step, {"image": [1], "audio": []}, audio_every=3) for step in range(6)} == {"image"}
    assert {modality_for(step, {"image": [], "audio": [1]}, audio_every=3) for step in range(6)} == {"audio"}


def test_training_the_weights_alone_gives_each_modality_an_equal_say():
    """The weights are one softmax trade between the image and audio gains: batches alternate, or the
    modality with more batches buys its gain with the other's."""
    both = {"image": [1], "audio": [1]}
    weights = TrainConfig(train="weights")
    assert [modality_for(s, both, audio_every=weights.answer_audio_every) for s in range(4)] == ["image", "audio"] * 2
    assert TrainConfig().answer_audio_every == TrainConfig().audio_every == 3


def test_audio_augmentation_stretches_and_masks_and_draws_nothing_when_off():
    from mmchat.fusion_train import AUDIO_FEATURE_MASK, AUDIO_TIME_MASK, augment_frames

    clip = torch.rand(100, 512) + 1  # no zeros of its own
    config = TrainConfig(audio_stretch=0.15, audio_time_masks=2, audio_feature_masks=2)
    lengths, zeroed_frames, zeroed_dims = set(), [], []
    for seed in range(40):
        out = augment_frames(clip, config, torch.Generator().manual_seed(seed))
        assert torch.equal(out, augment_frames(clip, config, torch.Generator().manual_seed(seed)))  # seeded
        assert 85 <= len(out) <= 115 and out.shape[1] == 512
        lengths.add(len(out))
        zeroed_frames.append(int((out == 0).all(1).sum()))
        zeroed_dims.append(int((out == 0).all(0).sum()))
        assert (out == 0).sum() == (out == 0).all(1).sum() * 512 + (out == 0).all(0).sum() * len(out) \
            - (out == 0).all(1).sum() * (out == 0).all(0).sum()  # zeros only in whole frames and bands
    assert len(lengths) > 10 and min(lengths) < 95 and max(lengths) > 105  # speeds across the range
    assert 0 < max(zeroed_frames) <= 2 * AUDIO_TIME_MASK and 0 < max(zeroed_dims) <= 2 * AUDIO_FEATURE_MASK
    assert clip.min() >= 1  # the cached features are left alone
    # Off, a clip comes back as it was (a copy), and nothing is drawn.
    off = TrainConfig(audio_stretch=0.0, audio_time_masks=0, audio_feature_masks=0)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    out = augment_frames(clip, off, generator)
    assert torch.equal(out, clip) and out is not clip and torch.equal(generator.get_state(), state)


def test_ctc_alignment_reads_words_in_new_combinations(llm):
    """A ``ctc_mlp`` projector learns to read each word where it is spoken, so a clip saying words
    in an order never trained on is read right too (one MLP shared across time)."""
    from pathlib import Path

    from mmchat.fusion_data.records import QA, Sample
    from mmchat.fusion_train import Aligner, audio_vocabulary, heard_tokens, transcript_ids

    words = ("one", "two", "three", "four")
    g = torch.Generator().manual_seed(0)

    def frames(n, channel):  # like an encoder's, a pause has features of its own
        f = torch.randn(n, 512, generator=g) * 0.1
        f[:, channel] += 3.0
        return f

    def clip(said):
        parts = [frames(3, 99)]
        for w in said:
            parts += [frames(6, 100 + words.index(w)), frames(3, 99)]
        return torch.cat(parts).half()

    pairs = [(a, b) for a in words for b in words if a != b]
    unseen = [("four", "one"), ("two", "four")]
    features, samples = {}, []
    for i, pair in enumerate(p for p in pairs * 5 if p not in unseen):  # 5 takes of each
        features[f"clip{i}"] = clip(pair)
        samples.append(Sample(f"clip{i}", "audio", Path(f"clip{i}.flac"), transcript=" ".join(pair),
                              qa=(QA("Answer the spoken request.", pair[0], "repeat"),)))
    vocabulary = audio_vocabulary(llm, samples, seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        rms = float(llm.model.get_input_embeddings().weight.float().pow(2).mean().sqrt())
    fusion = Fusion(FusionConfig(llm=llm.name, hidden_size=llm.hidden_size, embed_rms=rms, audio_stack=2,
                                 audio_projector="ctc_mlp", audio_vocab=len(vocabulary), mlp_hidden=128))
    fusion.audio_vocab_ids.copy_(torch.tensor(vocabulary))
    fusion.use_vocabulary(llm.embed)
    aligner = Aligner(llm, fusion, features, samples, config=TrainConfig(align_batch_size=8, align_lr=3e-3))
    assert set(aligner.spoken) == set(features)  # every clip is taught by CTC, none by the word loss
    assert [g["lr"] for g in aligner.optimizer.param_groups] == [TrainConfig().audio_align_lr]
    plain = TrainConfig(audio_shift=False, audio_dropout=0.0)  # the same clips both times
    assert_bf16_loss_matches_fp32(Aligner(llm, fusion, features, samples, config=plain), "audio")
    # Stretch and masks, when asked for, change the clips the CTC loss reads.
    stretched = replace(plain, audio_stretch=0.15, audio_time_masks=2, audio_feature_masks=2)
    batch = aligner.by_modality["audio"][:8]
    with torch.no_grad():
        assert Aligner(llm, fusion, features, samples, config=plain)._ctc_loss(batch) \
            != Aligner(llm, fusion, features, samples, config=stretched)._ctc_loss(batch)
    losses_seen = aligner.run(300)
    assert losses_seen[-1] < 0.1 * losses_seen[0]

    fusion.eval()
    for pair in [*unseen, ("one", "two")]:
        heard = fusion.heard(clip(pair).float().unsqueeze(0))[0]
        assert heard == transcript_ids(llm, " ".join(pair)), llm.tokenizer.decode(heard)
    tokens, mask = media_tokens(fusion, {"x": clip(unseen[0])}, [Example("audio", "x", "q", "a", "repeat")])
    assert mask.sum() == len(transcript_ids(llm, "four one")) + 1  # one token per word piece + the summary

    from mmchat.fusion_eval import readout

    said = {"new0": unseen[0], "new1": unseen[1], "old": ("one", "two"), "wrong": ("two", "one")}
    heldout = {k: clip(pair) for k, pair in said.items()}
    heldout["wrong"] = clip(("three", "one"))  # its transcript below says "two one": one substitution
    examples = [Example("audio", k, "Write down what the speaker said.", " ".join(pair), "transcript")
                for k, pair in said.items()]
    rates = {"n": 4, "exact": 0.75, "token_error_rate": round(1 / sum(len(transcript_ids(llm, " ".join(p)))
                                                                      for p in said.values()), 4)}
    assert readout(llm, fusion, heldout, examples) == rates
    # "five" was never heard in training: the clip cannot be read right, and "heard" leaves it out
    heldout["unheard"] = clip(("three", "one"))
    examples.append(Example("audio", "unheard", "Write down what the speaker said.", "five one", "transcript"))
    both = readout(llm, fusion, heldout, examples, heard=heard_tokens(llm, samples))
    assert both["heard"] == rates and (both["n"], both["exact"]) == (5, 0.6)
