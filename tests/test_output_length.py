"""Lengths users want (#18): an encode records each item's input length, and
`fast_decode(output_length=..., sample_rate=...)` gives audio of that length at that rate."""

import pytest
import torch

from flexicodec_fast import InputError
from flexicodec_fast.fast import fast_decode, fast_encode
from flexicodec_fast.resampling import resample, resampled_length
from flexicodec_fast.tiny import random_tiny_model


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(seed=5).eval()


def _codes(enc):
    return enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]


def test_encode_records_input_lengths_at_both_rates(model):
    lens = torch.tensor([70001, 40000])
    audio = torch.randn(2, 70001, generator=torch.Generator().manual_seed(0)) * 0.1
    enc = fast_encode(audio, model, sample_rate=48000, num_quantizers=2, audio_lens=lens)
    assert torch.equal(enc["source_lengths"], lens)
    assert enc["source_sample_rate"] == 48000
    assert enc["audio_lengths"].tolist() == [resampled_length(int(n), 48000) for n in lens]
    one = enc.item(1)
    assert one["source_lengths"].tolist() == [40000] and one.total_frames.shape == (1,)


def test_decode_to_the_input_rate_and_length(model):
    """Each item: its own 16 kHz decode (decoded_length(T_b) samples), resampled alone to
    48 kHz, then cut or zero-padded to its input length."""
    lens = torch.tensor([70001, 40000])
    audio = torch.randn(2, 70001, generator=torch.Generator().manual_seed(1)) * 0.1
    enc = fast_encode(audio, model, sample_rate=48000, num_quantizers=2, audio_lens=lens)
    native = fast_decode(model, *_codes(enc))
    fitted = fast_decode(
        model, *_codes(enc), output_length=enc["source_lengths"], sample_rate=48000
    )
    assert fitted.shape == (2, 1, 70001)
    decoded = model.dac.decoded_length(enc["token_lengths"].sum(dim=1))
    for b, n in enumerate(lens.tolist()):
        want = resample(native[b, :, : int(decoded[b])], 16000, 48000)[:, :n]
        assert torch.equal(fitted[b, :, : want.shape[-1]], want)
        assert not fitted[b, :, want.shape[-1] :].any()
    # The decoder makes whole 80 ms frames of the shorter of its two streams: item 1 comes
    # out shorter than its input and is zero-padded to it.
    assert want.shape[-1] < 40000


def test_output_length_at_16k_cuts_or_pads(model):
    audio = torch.randn(1, 20000, generator=torch.Generator().manual_seed(2)) * 0.1
    enc = fast_encode(audio, model, num_quantizers=1)
    native = fast_decode(model, *_codes(enc))
    short = fast_decode(model, *_codes(enc), output_length=1000)
    longer = fast_decode(model, *_codes(enc), output_length=native.shape[-1] + 7)
    assert torch.equal(short, native[..., :1000])
    assert torch.equal(longer[..., : native.shape[-1]], native)
    assert longer.shape[-1] == native.shape[-1] + 7 and not longer[..., -7:].any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sample_rate=48000), "needs output_length"),
        (dict(output_length=[100, 200]), "output_length: expected an int or 1"),
        (dict(output_length=-1), "output_length"),
        (dict(output_length=torch.tensor([1.5])), "output_length"),
        (dict(output_length=100, sample_rate=0), "sample_rate"),
    ],
)
def test_bad_output_lengths(model, kwargs, match):
    enc = fast_encode(torch.zeros(1, 4000), model, num_quantizers=1)
    with pytest.raises(InputError, match=match):
        fast_decode(model, *_codes(enc), **kwargs)
