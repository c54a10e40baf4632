"""The fast pipeline against the reference model and the official fixtures.

Codes must be identical (fp32); audio and latents within the tolerances of
tests/tolerances.py; bf16 audio against the reference decoding in bf16 (design §8's rule). The
Triton backend runs under the interpreter here (tests/conftest.py), on small inputs.
"""

import pytest
import torch
from responsive import responsive
from signals import noise_batch
from tolerances import (
    CODE_AGREEMENT,
    CODE_KEYS,
    assert_codes_equal,
    assert_elementwise,
    assert_same_precision,
)

import flexicodec_fast as ff
from flexicodec_fast.fast import fast_decode, fast_encode
from flexicodec_fast.tiny import random_tiny_model


@pytest.fixture(scope="module")
def model(fixture_dir):
    return ff.prepare_model(
        fixture_dir / "model.safetensors", fixture_dir / "config.yaml", device="cpu"
    )


@pytest.mark.parametrize("clip", ("clipA", "clipB", "clipC"))
@pytest.mark.parametrize("threshold", ("1", "0.95", "0.91", "0.85"))
def test_fast_encode_reproduces_official_dither_free_runs(
    model, fixture_outputs, fixture_clips, clip, threshold
):
    enc = fast_encode(
        fixture_clips[clip][None], model, num_quantizers=4, merging_threshold=float(threshold)
    )
    prefix = f"{clip}/nodither/th{threshold}/nq4/"
    for key in CODE_KEYS:
        assert torch.equal(enc[key], fixture_outputs[prefix + key]), key


@pytest.mark.parametrize("clip", ("clipA", "clipB", "clipC"))
def test_fast_decode_reproduces_official_audio(model, fixture_outputs, clip):
    prefix = f"{clip}/nodither/th0.91/nq4/"
    audio = fast_decode(
        model,
        fixture_outputs[prefix + "semantic_codes"],
        fixture_outputs[prefix + "acoustic_codes"],
        fixture_outputs[prefix + "token_lengths"],
    )
    want = fixture_outputs[prefix + "decoded_audio"]
    assert audio.shape == want.shape
    assert_elementwise(audio, want, "official_audio")


# ----------------------------------------------------------------------------- tiny models
# Random tiny models made responsive (tests/responsive.py): at their initial scales the
# codes hardly follow the audio and a wrong frame, mask or length could go unseen.
# `noise_batch` pads with noise, not silence: padding must not reach an item's codes.


@pytest.fixture(scope="module", params=[0, 1])
def tiny(request):
    """A responsive tiny model that merges (the default aggregator), seed = param."""
    return responsive(random_tiny_model(seed=request.param))


def _assert_same_codes(enc, ref):
    """Codes equal (None where the reference's are), latents within fp32 tolerance."""
    assert_codes_equal(enc, ref)
    assert_elementwise(enc["decoder_latent"], ref["decoder_latent"], "latent")


def _codes(enc) -> tuple:
    """What `decode` takes: (semantic_codes, acoustic_codes, token_lengths)."""
    return enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]


MERGING = 0.92  # merges some frames of the batches below that use it; fixed windows ignore it


def _reference(model, audio, lens, nq: int, threshold: float = MERGING, margin: float = 1e-4):
    """The reference's encode of a batch, and the decode of its codes. A merging model's
    similarities must lie more than `margin` from `threshold`: the fast ones may differ in
    the last bits (in bf16 by ~3e-4), and a test must not depend on the side of the
    threshold a near-tie falls."""
    with torch.inference_mode():
        ref = model.encode(audio, lens, num_quantizers=nq, merging_threshold=threshold)
        want = model.decode(*_codes(ref))
    if not model.fixed_window:
        near = (ref["similarity"].double() - threshold).abs() < margin
        assert not bool(near.any()), f"a similarity within {margin} of {threshold}: move it"
    return ref, want


def _assert_items_alone(model, audio, lens, enc, **options):
    """Every item of the batch `enc`, encoded alone by the reference, gets exactly its
    batched codes, and zeros past its tokens."""
    for b, n in enumerate(lens.tolist()):
        with torch.inference_mode():
            alone = model.encode(audio[b : b + 1, :n], **options)
        groups = int(alone["total_frames"][0])
        assert int(enc["total_frames"][b]) == groups
        assert torch.equal(enc["token_lengths"][b, :groups], alone["token_lengths"][0])
        assert not enc["token_lengths"][b, groups:].any()
        for key in ("semantic_codes", "acoustic_codes"):
            if alone[key] is not None:
                assert torch.equal(enc[key][b, :, :groups], alone[key][0]), (b, key)
                assert not enc[key][b, :, groups:].any(), (b, key)


LENS = ([1360], [5000, 1360, 12345], [16000, 16000])
# No frame merged, some, and most (runs of similar frames capped at 8): every length set
# and every nq meets every threshold (a Latin square, not the 27 cases of the product).
THRESHOLDS = (0.999, 0.93, 0.86)


@pytest.mark.parametrize(
    ("lens", "nq", "threshold"),
    [
        (lens, nq, THRESHOLDS[(i + j) % 3])
        for i, lens in enumerate(LENS)
        for j, nq in enumerate((1, 3, 5))
    ],
)
def test_fast_equals_reference_on_random_tiny_models(tiny, lens, nq, threshold):
    audio, audio_lens = noise_batch(len(lens) + nq, lens, 0.3)
    ref, want = _reference(tiny, audio, audio_lens, nq, threshold)
    options = dict(num_quantizers=nq, merging_threshold=threshold)
    enc = fast_encode(audio, tiny, audio_lens=audio_lens, backend="torch", **options)
    _assert_same_codes(enc, ref)
    if len(set(lens)) > 1:  # padding that must not reach the shorter items
        _assert_items_alone(tiny, audio, audio_lens, enc, **options)
    got = fast_decode(tiny, *_codes(enc), backend="torch")
    assert_elementwise(got, want, "audio")


# ----------------------------------------------------------------------------- both aggregators
# The merged path and `aggregator: fixed_window` (ALMTokenizer), whose fast path runs the
# window-query encoders and decoder through the interleave kernels and the fast
# transformers; the reference model's `encode` / `decode` are the truth.

AGGREGATORS = {"merged": {}, "fixed_window": {"aggregator": "fixed_window", "window": 3}}


@pytest.fixture(scope="module", params=list(AGGREGATORS))
def codec(request):
    """A responsive tiny model that merges, or one with fixed windows of 3 frames."""
    return responsive(random_tiny_model(seed=6, **AGGREGATORS[request.param]))


def test_fast_decodes_reference_codes(codec):
    """Codes from the reference's `encode` (ragged groups where it merges), decoded whole,
    with fewer acoustic stages and with none; item b's audio past its frames is zero, as
    the reference's."""
    audio, audio_lens = noise_batch(21, [11000, 16000], 0.3)
    with torch.inference_mode():
        ref = codec.encode(audio, audio_lens, num_quantizers=5, merging_threshold=MERGING)
    sem, ac, lengths = _codes(ref)
    assert codec.fixed_window or int(lengths.max()) > 1
    for acoustic in (ac, ac[:, :1], None):
        with torch.inference_mode():
            want = codec.decode(sem, acoustic, lengths)
        got = fast_decode(codec, sem, acoustic, lengths, backend="torch")
        assert_elementwise(got, want, "audio")


def test_triton_backend_under_interpreter_matches_reference(codec):
    audio, lens = noise_batch(9, [12000, 7000], 0.3)
    ref, want = _reference(codec, audio, lens, 3)
    enc = fast_encode(
        audio, codec, num_quantizers=3, merging_threshold=MERGING, audio_lens=lens, backend="triton"
    )
    assert_codes_equal(enc, ref)
    got = fast_decode(codec, *_codes(enc), backend="triton")
    assert_elementwise(got, want, "audio", "triton")


def test_bf16_keeps_fp32_outputs_and_decisions(codec):
    """bf16 runs the heavy parts (SenseVoice, the aggregators' and bottleneck transformers)
    in bf16 only; outputs stay fp32 and close to the reference's fp32 ones, and merging,
    on fp32 similarities, takes the reference's decisions where none is a near-tie. (Code
    agreement on the full-size model is measured by the benchmarks.)"""
    audio, lens = noise_batch(5, [16000, 9000], 0.3)
    ref, want = _reference(codec, audio, lens, 4, margin=1e-3)  # 3x bf16's ~3e-4
    enc = fast_encode(
        audio, codec, num_quantizers=4, merging_threshold=MERGING, audio_lens=lens, precision="bf16"
    )
    assert torch.equal(enc["token_lengths"], ref["token_lengths"])
    assert enc["semantic_features"].dtype == enc["decoder_latent"].dtype == torch.float32
    agreement = float((enc["semantic_codes"] == ref["semantic_codes"]).float().mean())
    assert agreement >= CODE_AGREEMENT[("torch", "bf16", "semantic_codes")]
    wav = fast_decode(codec, *_codes(ref), precision="bf16")
    assert wav.dtype == torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want_bf16 = codec.decode(*_codes(ref))
    assert_same_precision(wav, want_bf16, want, "audio", "torch", "bf16")


# ----------------------------------------------------------------------------- fixed windows


@pytest.fixture(scope="module")
def windowed(request):
    """A responsive tiny fixed-window model (its codes follow the audio), `window` = param."""
    return responsive(random_tiny_model(seed=6, aggregator="fixed_window", window=request.param))


@pytest.mark.parametrize("windowed", [3, 4], indirect=True)
@pytest.mark.parametrize("nq", [1, 4])
def test_fixed_window_fast_equals_reference(windowed, nq):
    window = windowed.config.window
    audio, audio_lens = noise_batch(7 + nq, [14000, 5200, 9000], 0.3)
    ref, want = _reference(windowed, audio, audio_lens, nq)
    frames = ref["token_lengths"].sum(dim=1).tolist()
    assert len(set(frames)) == 3 and any(n % window for n in frames)  # ragged, short last windows
    enc = fast_encode(audio, windowed, num_quantizers=nq, audio_lens=audio_lens, backend="torch")
    _assert_same_codes(enc, ref)
    got = fast_decode(windowed, *_codes(enc), backend="torch")
    assert_elementwise(got, want, "audio")
    _assert_items_alone(windowed, audio, audio_lens, enc, num_quantizers=nq)
