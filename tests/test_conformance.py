"""Conformance of the reference model to the official implementation (fixture A).

Every run recorded in `../shared/fixtures/official_tiny` is replayed:
* dithered runs from the recorded model input `fbank` (which holds the exact dither noise);
* dither-0 runs end to end from the waveform with our deterministic front-end;
* decoding of every recorded set of codes;
* the padded batch runs item by item: the official batched code is not batch-invariant
  (spec §1.4), so its B = 1 runs are the ground truth for our batched items.

Tolerances: tests/tolerances.py ("reference" rows). The official audio itself moves by
1.5e-7 between thread counts (fixture README); on this machine ours is bit-exact.
"""

import json

import pytest
import torch
from tolerances import assert_audio_close, assert_elementwise

import flexicodec_fast as ff

CLIPS = ("clipA", "clipB", "clipC")
THRESHOLDS = ("1", "0.95", "0.91", "0.85")


@pytest.fixture(scope="module")
def model(fixture_dir):
    return ff.prepare_model(
        fixture_dir / "model.safetensors", fixture_dir / "config.yaml", device="cpu"
    )


@pytest.fixture(scope="module")
def runs(fixture_dir):
    return json.loads((fixture_dir / "meta.json").read_text())["runs"]


def _expect_close_audio(got, want):
    assert got.shape == want.shape
    assert_elementwise(got, want, "audio", "reference")
    assert_audio_close(got, want, "reference")


def test_every_recorded_run_is_covered(runs, fixture_outputs):
    keys = {r["key"] for r in runs}
    single = {k for k in keys if not k.startswith("batch")}
    assert len(single) == 36  # 3 clips x 4 thresholds x {nq1, nq4} + 12 dither-0 runs
    for key in single:
        assert f"{key}/token_lengths" in fixture_outputs


@pytest.mark.parametrize("clip", CLIPS)
def test_similarity_and_features_from_recorded_fbank(model, fixture_outputs, fixture_clips, clip):
    with torch.no_grad():
        enc = model.encode(
            fixture_clips[clip][None],
            num_quantizers=4,
            features=fixture_outputs[f"{clip}/fbank"][None],
        )
    want = fixture_outputs[f"{clip}/semantic_feat_12p5hz"]
    got = enc["semantic_features"][0].T
    assert got.shape == want.shape
    assert_elementwise(got, want, "semantic_features", "reference")
    sim = enc["similarity"][0]
    assert_elementwise(
        sim, fixture_outputs[f"{clip}/adjacent_cos_sim"], "official_similarity", "reference"
    )


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("nq", (1, 4))
def test_dithered_run_from_recorded_fbank(
    model, fixture_outputs, fixture_clips, clip, threshold, nq
):
    prefix = f"{clip}/th{threshold}/nq{nq}/"
    with torch.no_grad():
        enc = model.encode(
            fixture_clips[clip][None],
            num_quantizers=nq,
            merging_threshold=float(threshold),
            features=fixture_outputs[f"{clip}/fbank"][None],
        )
    assert torch.equal(enc["token_lengths"], fixture_outputs[prefix + "token_lengths"])
    assert torch.equal(enc["total_frames"], fixture_outputs[prefix + "total_frames"])
    assert enc["semantic_codes"].dtype == torch.int32
    assert torch.equal(enc["semantic_codes"], fixture_outputs[prefix + "semantic_codes"])
    if nq == 1:
        assert enc["acoustic_codes"] is None
    else:
        assert enc["acoustic_codes"].dtype == torch.int64
        assert torch.equal(enc["acoustic_codes"], fixture_outputs[prefix + "acoustic_codes"])
    latent = fixture_outputs[prefix + "decoder_latent"]
    assert_elementwise(enc["decoder_latent"], latent, "latent", "reference")


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_dither_free_run_from_waveform(model, fixture_outputs, fixture_clips, clip, threshold):
    prefix = f"{clip}/nodither/th{threshold}/nq4/"
    with torch.no_grad():
        enc = model.encode(
            fixture_clips[clip][None], num_quantizers=4, merging_threshold=float(threshold)
        )
    for key in ("token_lengths", "total_frames", "semantic_codes", "acoustic_codes"):
        assert torch.equal(enc[key], fixture_outputs[prefix + key]), key


def test_decode_every_recorded_run(model, fixture_outputs):
    keys = [
        k for k in fixture_outputs if k.endswith("/decoded_audio") and not k.startswith("batch")
    ]
    assert len(keys) == 27
    for key in keys:
        prefix = key[: -len("decoded_audio")]
        with torch.no_grad():
            audio = model.decode(
                fixture_outputs[prefix + "semantic_codes"],
                fixture_outputs.get(prefix + "acoustic_codes"),
                fixture_outputs[prefix + "token_lengths"],
            )
        _expect_close_audio(audio, fixture_outputs[key])


def test_dither_free_batch_items_equal_official_single_runs(model, fixture_outputs, fixture_clips):
    lens = fixture_outputs["batch/audio_lens"]
    audio = torch.zeros(2, int(lens.max()))
    for i, clip in enumerate(("clipA", "clipB")):
        audio[i, : lens[i]] = fixture_clips[clip]
    with torch.no_grad():
        enc = model.encode(audio, audio_lens=lens, num_quantizers=4, merging_threshold=0.91)
    for i, clip in enumerate(("clipA", "clipB")):
        prefix = f"{clip}/nodither/th0.91/nq4/"
        groups = fixture_outputs[prefix + "token_lengths"].shape[1]
        assert enc["total_frames"][i] == groups
        assert torch.equal(
            enc["token_lengths"][i, :groups], fixture_outputs[prefix + "token_lengths"][0]
        )
        assert not enc["token_lengths"][i, groups:].any()
        for key in ("semantic_codes", "acoustic_codes"):
            assert torch.equal(enc[key][i, :, :groups], fixture_outputs[prefix + key][0]), key


def test_batched_decode_items_equal_official_single_decodes(model, fixture_outputs):
    prefixes = ["clipA/nodither/th0.91/nq4/", "clipB/nodither/th0.91/nq4/"]
    groups = max(fixture_outputs[p + "token_lengths"].shape[1] for p in prefixes)

    def padded(key):
        parts = [fixture_outputs[p + key] for p in prefixes]
        return torch.cat([torch.nn.functional.pad(x, (0, groups - x.shape[-1])) for x in parts])

    with torch.no_grad():
        audio = model.decode(
            padded("semantic_codes"), padded("acoustic_codes"), padded("token_lengths")
        )
    for i, p in enumerate(prefixes):
        want = fixture_outputs[p + "decoded_audio"][0]
        _expect_close_audio(audio[i, :, : want.shape[-1]], want)
        assert not audio[i, :, want.shape[-1] :].any()


def test_dithered_batch_fbank_items_equal_their_single_runs(model, fixture_outputs, fixture_clips):
    """The recorded batched features (item 1 has its own dither draw) run batched and one by
    one give the same codes, so batch mates never change an item's codes."""
    fbank, fbank_lens = fixture_outputs["batch/fbank"], fixture_outputs["batch/fbank_lens"]
    lens = fixture_outputs["batch/audio_lens"]
    audio = torch.zeros(2, int(lens.max()))
    for i, clip in enumerate(("clipA", "clipB")):
        audio[i, : lens[i]] = fixture_clips[clip]
    with torch.no_grad():
        batched = model.encode(audio, lens, 4, 0.91, features=fbank, feature_lens=fbank_lens)
        for i in range(2):
            single = model.encode(
                audio[i : i + 1, : lens[i]],
                None,
                4,
                0.91,
                features=fbank[i : i + 1, : fbank_lens[i]],
            )
            groups = int(single["total_frames"][0])
            for key in ("token_lengths", "semantic_codes", "acoustic_codes"):
                assert torch.equal(batched[key][i, ..., :groups], single[key][0]), key
