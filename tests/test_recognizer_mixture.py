"""Training the recogniser on a mixture of corpora, from an exported recogniser
(flexicodec_fast.asr.train_recognizer: --corpus repeated, --corpus-weight, --init-from,
--augment-copies)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tone_corpus import write_tone_corpus

from flexicodec_fast.asr import PhonemeRecognizer, load_recognizer, save_recognizer
from flexicodec_fast.asr.train_recognizer import (
    MixtureSchedule,
    init_from_recognizer,
    load_audio,
    main,
    merged_inventory,
    read_jsonl,
)
from flexicodec_fast.augment import random_augment
from flexicodec_fast.reference.config import SenseVoiceConfig
from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.reference.frontend import FrontEnd

TINY = SenseVoiceConfig(output_size=32, attention_heads=4, linear_units=32, num_blocks=2)


def test_inventory_union_keeps_the_first_order_then_sorts_the_new():
    first = ["d", "a", "c"]
    others = [["b", "a"], ["e", "d", "aa"]]
    assert merged_inventory(first, others) == ["d", "a", "c", "aa", "b", "e"]
    assert merged_inventory(first, []) == first


def test_init_from_copies_rows_by_label_and_keeps_new_rows_fresh():
    torch.manual_seed(0)
    old = PhonemeRecognizer(TINY, ["c", "a", "b"])
    # The new inventory reorders the old labels, so a copy by position would be wrong.
    new = PhonemeRecognizer(TINY, ["a", "x", "c", "b", "y"])
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    assert init_from_recognizer(new, old) == []
    state, old_state = new.state_dict(), old.state_dict()
    for key, value in old_state.items():
        if not key.startswith("ctc."):
            assert torch.equal(state[key], value), key
    for label in old.vocab:
        for part in ("weight", "bias"):
            row = state[f"ctc.ctc_lo.{part}"][new.vocab.index(label)]
            assert torch.equal(row, old_state[f"ctc.ctc_lo.{part}"][old.vocab.index(label)])
    for label in ("x", "y"):
        for part in ("weight", "bias"):
            row = new.vocab.index(label)
            assert torch.equal(state[f"ctc.ctc_lo.{part}"][row], fresh[f"ctc.ctc_lo.{part}"][row])


# Two sources (the synthetic + human case, where within one is guaranteed), one, and three
# whose weights keep it too.
@pytest.mark.parametrize("weights", [[1.0, 1.0], [1.0, 3.0], [0.37, 0.63], [0.2, 0.5, 0.3], [2.0]])
def test_mixture_schedule_holds_each_share_within_one_batch(weights):
    schedule = MixtureSchedule(weights)
    shares = [w / sum(weights) for w in weights]
    counts = [0] * len(weights)
    for n in range(1, 401):
        counts[schedule.next()] += 1
        assert all(abs(c - n * s) < 1 for c, s in zip(counts, shares, strict=True)), (n, counts)
    with pytest.raises(InputError, match="weights"):
        MixtureSchedule([1.0, 0.0])


def test_mixture_run_from_an_exported_recogniser(tmp_path):
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    write_tone_corpus(first, n_train=6, n_heldout=2, symbols="cab", lang="one")
    write_tone_corpus(second, n_train=6, n_heldout=2, symbols="edb", lang="two", seed=1)
    torch.manual_seed(0)
    init = PhonemeRecognizer(TINY, ["c", "a", "b"])
    save_recognizer(init, tmp_path / "init")
    init_state = load_recognizer(tmp_path / "init").state_dict()

    args = ["--corpus", str(first), "--corpus", str(second), "--corpus-weight", "1"]
    args += ["--corpus-weight", "3", "--init-from", str(tmp_path / "init"), "--out", str(out)]
    args += ["--steps", "8", "--threads", "1", "--batch-frames", "60", "--lr", "0"]
    args += ["--warmup", "1", "--log-every", "1", "--eval-every", "8", "--save-every", "8"]
    args += ["--augment-copies", "1", "--no-spec-augment"]
    result = main(args)

    trained = load_recognizer(out)
    assert trained.phonemes == ("c", "a", "b", "d", "e")
    # lr 0: the old rows and weights are the initial recogniser's, exactly (fp16 both ways).
    state = trained.state_dict()
    for key, value in init_state.items():
        if not key.startswith("ctc."):
            assert torch.equal(state[key], value), key
    assert torch.equal(state["ctc.ctc_lo.weight"][:4], init_state["ctc.ctc_lo.weight"])

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    counts = [r["batches_by_corpus"] for r in log if "batches_by_corpus" in r]
    assert counts[-1] == {"first": 2, "second": 6}
    evals = {r["corpus"]: r for r in log if r.get("step") == 8 and "corpus" in r}
    assert set(evals["first"]["per_by_language"]) == {"one"}
    assert set(evals["second"]["per_by_language"]) == {"two"}
    assert set(result["by_corpus"]) == {"first", "second"}
    assert result["by_corpus"]["second"]["utterances"] == 2

    # Each corpus's features are cached in its own folder, computed from its own audio;
    # the augmented copy from that audio through random_augment.
    frontend = FrontEnd()
    for corpus in (first, second):
        records = read_jsonl(corpus / "train.jsonl")
        cache = load_file(str(corpus / "features" / "train.safetensors"))
        aug = load_file(str(corpus / "features" / "train_aug1_seed0.safetensors"))
        assert cache["lens"].numel() == len(records) == aug["lens"].numel()
        wave = load_audio(corpus / records[0]["path"])
        feats, lens = frontend(wave[None], torch.tensor([wave.numel()]))
        assert torch.equal(cache["feats"][: int(lens[0])], feats[0, : int(lens[0])].half())
        assert int(cache["lens"][0]) == int(lens[0])
        augmented = random_augment(wave, 10_000_000)[0]
        feats, lens = frontend(augmented[None], torch.tensor([augmented.numel()]))
        assert torch.equal(aug["feats"][: int(lens[0])], feats[0, : int(lens[0])].half())
