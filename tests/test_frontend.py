"""Front-end (spec §2.1) against the official fixture, batching, dither and bad input."""

import pytest
import torch
from tolerances import assert_close, assert_elementwise

from flexicodec_fast.reference.errors import CheckpointError, InputError
from flexicodec_fast.reference.frontend import (
    DEFAULT_CMVN_PATH,
    FEAT_DIM,
    MIN_SAMPLES,
    FrontEnd,
    load_cmvn,
    num_lfr_frames,
)

CLIPS = ("clipA", "clipB", "clipC")


@pytest.fixture(scope="module")
def frontend():
    return FrontEnd()


@pytest.mark.parametrize("clip", CLIPS)
def test_matches_official_without_dither(frontend, fixture_clips, fixture_outputs, clip):
    feats, lens = frontend(fixture_clips[clip][None])
    ref = fixture_outputs[f"{clip}/fbank_nodither"]
    assert feats.dtype == torch.float32 and feats.shape == (1, *ref.shape)
    assert lens.tolist() == [ref.shape[0]]
    assert_close(feats[0], ref, "official_fbank", "reference")


@pytest.mark.parametrize("clip", CLIPS)
def test_dither_reproduces_official_random_stream(frontend, fixture_clips, fixture_outputs, clip):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        feats, _ = frontend(fixture_clips[clip][None], dither=1.0)
    assert_close(feats[0], fixture_outputs[f"{clip}/fbank"], "official_fbank", "reference")


def test_batch_dither_consumes_rng_item_by_item(frontend, fixture_clips, fixture_outputs):
    lens = fixture_outputs["batch/audio_lens"]
    audio = torch.zeros(2, int(lens.max()))
    for i, clip in enumerate(("clipA", "clipB")):
        audio[i, : lens[i]] = fixture_clips[clip]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        feats, feat_lens = frontend(audio, lens, dither=1.0)
    assert feat_lens.tolist() == fixture_outputs["batch/fbank_lens"].tolist()
    assert_close(feats, fixture_outputs["batch/fbank"], "official_fbank", "reference")


def test_no_dither_draws_nothing(frontend, fixture_clips):
    state = torch.get_rng_state()
    frontend(fixture_clips["clipC"][None])
    assert torch.equal(state, torch.get_rng_state())


def test_batch_equals_items_and_ignores_padding(frontend, fixture_clips, fixture_outputs):
    """Items of different lengths, padded with noise: each equals its own single run."""
    clips = [fixture_clips[c] for c in CLIPS]
    # Odd lengths exercise partial frames and partial LFR groups.
    clips[2] = clips[2][: MIN_SAMPLES + 777]
    lens = torch.tensor([len(c) for c in clips])
    audio = torch.randn(len(clips), int(lens.max()), generator=torch.Generator().manual_seed(3))
    for i, c in enumerate(clips):
        audio[i, : len(c)] = c
    feats, feat_lens = frontend(audio, lens)
    assert feat_lens.tolist() == num_lfr_frames(lens).tolist()
    assert feats.shape == (len(clips), int(feat_lens.max()), FEAT_DIM)
    for i, c in enumerate(clips):
        single, single_lens = frontend(c[None])
        assert single_lens.item() == feat_lens[i].item()
        assert_elementwise(feats[i, : feat_lens[i]], single[0], "fbank")
        assert torch.all(feats[i, feat_lens[i] :] == 0)


def test_official_batch_lengths(frontend, fixture_outputs):
    lens = fixture_outputs["batch/audio_lens"]
    assert num_lfr_frames(lens).tolist() == fixture_outputs["batch/fbank_lens"].tolist()


def test_length_rules():
    # spec §1.3: N = 16000 / 32000 / 96000 -> Tl = 17 / 33 / 100; N = 1360 is the minimum.
    lens = torch.tensor([16000, 32000, 96000, MIN_SAMPLES])
    assert num_lfr_frames(lens).tolist() == [17, 33, 100, 2]


def test_buffers_not_in_state_dict(frontend):
    assert frontend.state_dict() == {}
    assert frontend.mel_banks.shape == (80, 257)


def test_cmvn_file():
    shift, scale = load_cmvn(DEFAULT_CMVN_PATH)
    assert shift.shape == scale.shape == (FEAT_DIM,)
    # spec §2.1: 80 values tiled 7 times; first values.
    assert torch.equal(shift, shift[:80].repeat(7))
    assert shift[0].item() == pytest.approx(-8.311879)
    assert scale[0].item() == pytest.approx(0.155775)


def test_cmvn_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="cmvn_path"):
        load_cmvn(tmp_path / "missing.mvn")
    bad = tmp_path / "bad.mvn"
    bad.write_text("<Nnet>\n<AddShift> 2 2\n<LearnRateCoef> 0 [ 1 x ]\n</Nnet>\n")
    with pytest.raises(CheckpointError, match="cmvn_path"):
        load_cmvn(bad)
    shift_only = "<Nnet>\n<AddShift> 2 2\n<LearnRateCoef> 0 [ 1 2 ]\n"
    bad.write_text(shift_only + "</Nnet>\n")
    with pytest.raises(CheckpointError, match="Rescale"):
        load_cmvn(bad)
    bad.write_text(shift_only + "<Rescale> 2 2\n<LearnRateCoef> 0 [ 3 4 ]\n</Nnet>\n")
    assert load_cmvn(bad)[1].tolist() == [3.0, 4.0]
    with pytest.raises(CheckpointError, match="expected 560"):
        FrontEnd(bad)


@pytest.mark.parametrize(
    ("audio", "audio_lens", "name"),
    [
        (torch.zeros(4000), None, "audio"),
        (torch.zeros(1, 4000, dtype=torch.int16), None, "audio"),
        (torch.zeros(0, 4000), None, "audio"),
        (torch.zeros(1, MIN_SAMPLES - 1), None, "audio"),
        (torch.zeros(2, 4000), torch.tensor([4000]), "audio_lens"),
        (torch.zeros(2, 4000), torch.tensor([4000.0, 4000.0]), "audio_lens"),
        (torch.zeros(2, 4000), torch.tensor([4000, 4001]), "audio_lens"),
        (torch.zeros(2, 4000), torch.tensor([4000, MIN_SAMPLES - 1]), "audio_lens"),
        (torch.zeros(2, 4000), [4000, 4000], "audio_lens"),
    ],
)
def test_bad_input(frontend, audio, audio_lens, name):
    with pytest.raises(InputError, match=name):
        frontend(audio, audio_lens)


def test_minimum_length_message(frontend):
    with pytest.raises(InputError, match=f"at least {MIN_SAMPLES}.*got 400"):
        frontend(torch.zeros(1, 400))


@pytest.mark.parametrize("dither", [-1.0, float("nan"), "1.0", True])
def test_bad_dither(frontend, dither):
    with pytest.raises(InputError, match="dither"):
        frontend(torch.zeros(1, 4000), dither=dither)
