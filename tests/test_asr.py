"""The small phoneme recogniser (flexicodec_fast.asr) and the corpus script, CI-sized."""

import json
import math
import os
import shutil

import pytest
import soundfile as sf
import torch
import yaml
from make_corpus_module import load_make_corpus
from tone_corpus import TINY_FLAGS, TONES, tone_audio, write_tone_corpus

from flexicodec_fast.asr import (
    DEFAULT_RECOGNIZER_CONFIG,
    PhonemeRecognizer,
    add_white_noise,
    band_limit,
    ctc_greedy_decode,
    edit_distance,
    identification_rate,
    load_recognizer,
    phoneme_error_rate,
    save_recognizer,
    train_recognizer,
)
from flexicodec_fast.reference.config import SenseVoiceConfig
from flexicodec_fast.reference.errors import CheckpointError, InputError
from flexicodec_fast.reference.resample import downsample_semantic
from flexicodec_fast.reference.sensevoice import SenseVoiceEncoder

TINY = SenseVoiceConfig(output_size=32, attention_heads=4, linear_units=32, num_blocks=2)


def test_forward_shapes_and_key_layout():
    torch.manual_seed(0)
    model = PhonemeRecognizer(TINY, ["a", "b", "c"]).eval()
    feats, lens = torch.randn(2, 12, 560), torch.tensor([12, 7])
    with torch.no_grad():
        hidden = model(feats, lens)
        logits = model.ctc_logits(feats, lens)
    assert hidden.shape == (2, 12, 32) and logits.shape == (2, 12, 4)
    assert torch.all(hidden[1, 7:] == 0)
    keys = set(model.state_dict())
    assert {"embed.weight", "encoder.encoders0.0.self_attn.linear_q_k_v.weight"} <= keys
    assert {"encoder.encoders.0.norm1.weight", "encoder.after_norm.weight"} <= keys
    assert {"ctc.ctc_lo.weight", "ctc.ctc_lo.bias"} <= keys
    # The encoder part loads strictly into the plain SenseVoice encoder and runs identically.
    plain = SenseVoiceEncoder(TINY).eval()
    plain.load_state_dict(model.encoder_state_dict())
    with torch.no_grad():
        assert torch.equal(plain(feats, lens), hidden)


def test_default_config_fits_flexicodec_and_asset_budget():
    model = PhonemeRecognizer(DEFAULT_RECOGNIZER_CONFIG, [f"p{i}" for i in range(120)])
    assert model.cfg.output_size == 512 and model.cfg.input_size == 560
    fp16_bytes = 2 * sum(p.numel() for p in model.parameters())
    assert fp16_bytes <= 8e6


def test_bad_inventory_and_unknown_tokens_raise():
    with pytest.raises(CheckpointError, match="phonemes"):
        PhonemeRecognizer(TINY, ["a", "a"])
    with pytest.raises(CheckpointError, match="phonemes"):
        PhonemeRecognizer(TINY, ["a b"])
    model = PhonemeRecognizer(TINY, ["a", "b"])
    assert model.encode_phonemes(["b", "a", "b"]) == [2, 1, 2]
    with pytest.raises(InputError, match="'z'"):
        model.encode_phonemes(["a", "z"])


def test_ctc_greedy_decode():
    path = [0, 1, 1, 0, 1, 2, 2, 0, 3, 3]
    logits = torch.full((2, len(path), 4), -5.0)
    logits[0, torch.arange(len(path)), torch.tensor(path)] = 5.0
    logits[1, :, 0] = 5.0
    logits[1, 4:6, 2] = 10.0
    assert ctc_greedy_decode(logits) == [[1, 1, 2, 3], [2]]
    assert ctc_greedy_decode(logits, torch.tensor([6, 4])) == [[1, 1, 2], []]
    with pytest.raises(InputError, match="logits"):
        ctc_greedy_decode(torch.zeros(3, 4))


def test_edit_distance_and_per():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a"]) == 1 and edit_distance(["a"], []) == 1
    assert edit_distance(["aɪ", "t"], ["aɪ", "t"]) == 0
    refs = [["a", "b", "c"], ["d"]]
    assert phoneme_error_rate(refs, [["a", "c"], ["d", "e"]]) == pytest.approx(2 / 4)
    with pytest.raises(InputError, match="hyps"):
        phoneme_error_rate(refs, [["a"]])
    with pytest.raises(InputError, match="refs"):
        phoneme_error_rate([[]], [["a"]])


def test_identification_rate_needs_the_own_sentence_strictly_nearest():
    refs = [["a", "b", "c", "d"], ["a", "b", "x", "y"], ["q", "r"]]
    # Distances over reference length: item 0 is nearest its own sentence (1/4 against 2/4
    # and 3/2); item 1 ties (2/4 and 2/4), a miss; item 2 is half wrong yet nearest its own
    # (1/2 against 4/4 and 4/4).
    hyps = [["a", "b", "c"], ["a", "b"], ["q", "t"]]
    assert identification_rate(refs, hyps) == pytest.approx(2 / 3)
    assert identification_rate(refs, refs) == 1.0
    with pytest.raises(InputError, match="hyps"):
        identification_rate(refs, hyps[:2])
    with pytest.raises(InputError, match="refs"):
        identification_rate([["a"], []], [["a"], ["b"]])


def test_white_noise_has_the_asked_snr_and_is_repeatable():
    t = torch.arange(16000) / 16000
    clip = (0.3 * torch.sin(2 * math.pi * 440 * t)).float()
    for snr in (30.0, 10.0, 0.0):
        noisy = add_white_noise(clip, snr, torch.Generator().manual_seed(1))
        noise = noisy.double() - clip.double()
        measured = 10 * torch.log10(clip.double().pow(2).mean() / noise.pow(2).mean())
        # The noise is scaled in float64 to the SNR exactly; 1e-3 dB covers the fp32 store.
        assert noisy.dtype == torch.float32 and abs(float(measured) - snr) < 1e-3
    same = add_white_noise(clip, 20.0, torch.Generator().manual_seed(1))
    other = add_white_noise(clip, 20.0, torch.Generator().manual_seed(2))
    assert torch.equal(same, add_white_noise(clip, 20.0, torch.Generator().manual_seed(1)))
    assert not torch.equal(same, other)
    with pytest.raises(InputError, match="1-D float"):
        add_white_noise(clip[None], 20.0)


def test_band_limit_keeps_only_the_band():
    t = torch.arange(16000, dtype=torch.float64) / 16000
    tones = {f: torch.sin(2 * math.pi * f * t) for f in (100.0, 1000.0, 3000.0, 5000.0)}
    clip = sum(tones.values()).float()
    kept = band_limit(clip, 300, 3400)
    # 1e-5: the fp32 rounding of the clip (four unit tones) through the band mask; a removed
    # tone that leaked would be off by up to 1.
    assert torch.allclose(kept.double(), tones[1000.0] + tones[3000.0], atol=1e-5)
    assert torch.allclose(band_limit(clip, 0, 200).double(), tones[100.0], atol=1e-5)
    with pytest.raises(InputError, match="low_hz < high_hz"):
        band_limit(clip, 3400, 300)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = PhonemeRecognizer(TINY, ["a", "b", "ʃ"])
    save_recognizer(model, tmp_path, info={"note": "test"})
    loaded = load_recognizer(tmp_path)
    assert loaded.phonemes == ("a", "b", "ʃ") and loaded.cfg == TINY
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[key], value.half().float())
    # The YAML is SenseVoiceSmall-shaped: the reference config reader understands it.
    assert SenseVoiceConfig.from_yaml(tmp_path / "recognizer.yaml") == TINY
    (tmp_path / "recognizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="recognizer.safetensors"):
        load_recognizer(tmp_path)


def test_training_lowers_ctc_loss(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_tone_corpus(corpus, n_train=8, n_heldout=2)
    args = ["--corpus", str(corpus), "--out", str(out), "--steps", "20", "--threads", "1"]
    args += ["--batch-frames", "100", "--lr", "3e-3", "--warmup", "5", "--log-every", "1"]
    args += ["--eval-every", "10", "--save-every", "10", *TINY_FLAGS]
    result = train_recognizer.main(args)

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    assert [r["step"] for r in log if "heldout_per" in r and "event" not in r] == [10, 20]
    assert result["steps"] == 20 and 0.0 <= result["per"]
    assert (corpus / "features" / "train.safetensors").is_file()
    assert json.loads((out / "eval.json").read_text())["utterances"] == 2

    recognizer = load_recognizer(out)
    hyps = recognizer.transcribe(tone_audio(["a", "b", "c"], torch.Generator())[None])
    assert len(hyps) == 1 and set(hyps[0]) <= set(TONES)


def test_phoneme_tokens_from_espeak_ipa():
    make_corpus = load_make_corpus()
    ipa = "ð_ə k_w_ˈɪ_k l_ə- (en)h_ˈaʊ_s(fr) ʃ_n_ˈɛ_l__ _ˌyː_b_ɜ"
    expected = "ð ə k w ɪ k l ə h aʊ s ʃ n ɛ l yː b ɜ".split()
    assert make_corpus.phoneme_tokens(ipa) == expected


def test_sentence_plan_is_deterministic_and_splits_are_disjoint():
    make_corpus = load_make_corpus()
    plan = make_corpus.make_utterances(40, 10, seed=3)
    assert plan == make_corpus.make_utterances(40, 10, seed=3)
    train = {p["text"] for p in plan if p["path"].startswith("train/")}
    heldout = {p["text"] for p in plan if p["path"].startswith("heldout/")}
    assert len(train) == 40 and len(heldout) == 10 and not train & heldout
    assert {p["lang"] for p in plan} <= {"en", "de", "es", "fr"}


def test_make_corpus_small(tmp_path):
    if shutil.which("espeak-ng") is None:
        # .ci/run installs it: in CI a missing espeak-ng is a broken set-up, not a skip.
        message = "espeak-ng is not on PATH (system package `espeak-ng`); make_corpus.py needs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    make_corpus = load_make_corpus()
    args = ["--out", str(tmp_path), "--num", "4", "--num-heldout", "2", "--workers", "1"]
    stats = make_corpus.main(args)
    assert stats["utterances"] == {"train": 4, "heldout": 2}
    inventory = set((tmp_path / "phonemes.txt").read_text(encoding="utf-8").split())
    for split, count in (("train", 4), ("heldout", 2)):
        records = [json.loads(x) for x in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert len(records) == count
        for record in records:
            info = sf.info(str(tmp_path / record["path"]))
            assert info.samplerate == 16000 and info.channels == 1
            # make_corpus.py rounds seconds to milliseconds.
            assert abs(info.frames / 16000 - record["seconds"]) < 1e-3
            assert record["phonemes"] and (
                split == "heldout" or set(record["phonemes"].split()) <= inventory
            )
    # A rerun with the same settings finds every utterance done.
    assert make_corpus.main(args)["synthesised_now"] == 0
    with pytest.raises(RuntimeError, match="same settings"):
        make_corpus.main(["--out", str(tmp_path), "--num", "5", "--workers", "1"])


def test_similarity_hinge_on_a_hand_made_batch():
    # Factor 1 keeps the frames as they are; the head is the identity, so a frame's label is
    # its largest coordinate. Item 0 (4 frames): pair 0 agrees (label 0, cos 2/sqrt 5),
    # pair 1 crosses a label change, pair 2 agrees at cos 1 (nothing to pull). Item 1 (2 of 4
    # frames): pair 0 agrees (label 2, cos 2/sqrt 5); its padding, which would agree with
    # it and with itself, is no pair at all.
    hidden = torch.tensor(
        [
            [[1.0, 0, 0], [2, 1, 0], [0, 1, 0], [0, 3, 0]],
            [[0.0, 0, 1], [0, 1, 2], [0, 0, 1], [0, 0, 3]],
        ]
    )
    lens = torch.tensor([4, 2])
    hinge = train_recognizer.similarity_hinge(hidden, lens, torch.nn.Identity(), 1, 0.95)
    expected = 2 * (0.95 - 2 / math.sqrt(5)) / 4  # over the 3 + 1 valid pairs
    assert hinge.item() == pytest.approx(expected, rel=1e-6)


def test_similarity_hinge_follows_its_definition_on_codec_frames():
    torch.manual_seed(0)
    factor = train_recognizer.builtin_semantic_factor()
    assert factor == 1.33333  # the codec's 16.67 -> 12.5 Hz factor
    lens = torch.tensor([23, 14, 9])
    hidden = torch.randn(3, 23, 8)
    hidden[torch.arange(23).view(1, -1) >= lens.view(-1, 1)] = 0.0  # the encoder's padding
    head = torch.nn.Linear(8, 3)  # few labels, so that many pairs agree
    target = 0.5
    total, pairs = 0.0, 0
    for b, length in enumerate(lens.tolist()):
        # Each item alone and unpadded, through the codec's resampling.
        frames, _ = downsample_semantic(
            hidden[b : b + 1, :length].transpose(1, 2), lens[b : b + 1], factor
        )
        frames = frames[0].T.double()
        labels = head(frames.float()).argmax(-1).tolist()
        for t in range(frames.shape[0] - 1):
            a, c = frames[t], frames[t + 1]
            cos = float(a @ c / (a.norm() * c.norm()))
            total += max(0.0, target - cos) if labels[t] == labels[t + 1] else 0.0
            pairs += 1
    assert pairs == sum(int(n / factor) - 1 for n in lens.tolist())
    hinge = train_recognizer.similarity_hinge(hidden, lens, head, factor, target)
    assert total > 0 and hinge.item() == pytest.approx(total / pairs, rel=1e-5)


def test_similarity_weight_zero_is_the_ctc_loss_alone():
    torch.manual_seed(0)
    model = PhonemeRecognizer(TINY, ["a", "b", "c"])
    feats, lens = torch.randn(2, 12, 560), torch.tensor([12, 7])
    targets = [[1, 2, 3], [3, 1]]
    log_probs = model.ctc_logits(feats, lens).log_softmax(-1).transpose(0, 1)
    flat, target_lens = torch.tensor([1, 2, 3, 3, 1]), torch.tensor([3, 2])
    ctc = torch.nn.functional.ctc_loss(log_probs, flat, lens, target_lens, zero_infinity=True)
    loss, ctc_term, hinge = train_recognizer.training_loss(model, feats, lens, targets, 0.0)
    assert torch.equal(loss, ctc) and torch.equal(ctc_term, ctc) and hinge is None
    loss, ctc_term, hinge = train_recognizer.training_loss(model, feats, lens, targets, 3.0, 0.99)
    assert torch.equal(ctc_term, ctc) and hinge > 0
    assert torch.equal(loss, ctc + 3.0 * hinge)


def test_training_logs_the_similarity_term(tmp_path):
    corpus = tmp_path / "corpus"
    write_tone_corpus(corpus, n_train=6, n_heldout=2)
    args = ["--corpus", str(corpus), "--steps", "3", "--threads", "1", "--batch-frames", "100"]
    args += ["--warmup", "1", "--log-every", "1", "--eval-every", "10", *TINY_FLAGS]
    train_recognizer.main([*args, "--out", str(tmp_path / "plain")])
    train_recognizer.main(
        [
            *args,
            "--out",
            str(tmp_path / "sim"),
            "--similarity-weight",
            "2",
            "--similarity-target",
            "0.9",
        ]
    )

    def steps(name):
        log = (tmp_path / name / "train_log.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, log) if "loss" in r]

    assert all("similarity_hinge" not in r and "ctc_loss" not in r for r in steps("plain"))
    first = steps("sim")[0]
    assert first["loss"] == pytest.approx(first["ctc_loss"] + 2 * first["similarity_hinge"])
    # The same batches and weights: the first step's CTC term is the plain run's loss.
    assert first["ctc_loss"] == steps("plain")[0]["loss"]
    info = yaml.safe_load((tmp_path / "sim" / "recognizer.yaml").read_text())["info"]
    assert info["similarity_weight"] == 2 and info["similarity_target"] == 0.9
