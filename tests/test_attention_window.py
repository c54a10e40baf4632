"""The approximate long-audio mode (`attention_window=` seconds, issue #4): banded attention
against a dense formula, the transformers against the reference's own windowed pattern,
SenseVoice against the reference with band-masked scores, exactness when the window covers
the clip, batch invariance and argument errors."""

import copy
import math

import pytest
import torch
from einops import rearrange
from responsive import responsive
from signals import noise_batch
from tolerances import assert_elementwise

from flexicodec_fast.fast import attention_bands, fast_decode, fast_encode
from flexicodec_fast.fast_modules import (
    BANDED_QUERY_CHUNK,
    FastSenseVoice,
    FastTransformer,
    banded_attention,
)
from flexicodec_fast.reference.attention import AttentionPattern
from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.reference.sensevoice import PROMPT_ROWS, SANMAttention
from flexicodec_fast.tiny import random_tiny_model

CODE_KEYS = ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames")


def _dense_band(q, k, v, key_valid, window, global_rows):
    """softmax(q k^T / sqrt(d) + log(mask)) v with the mask written out position by position:
    t sees s if they are within the window or either is one of the global rows, and s is a
    valid key; t always sees itself."""
    length, head_dim = q.shape[2], q.shape[3]
    mask = torch.zeros(q.shape[0], 1, length, length, dtype=torch.bool)
    for t in range(length):
        for s in range(length):
            if abs(t - s) <= window or t < global_rows or s < global_rows:
                mask[:, 0, t, s] = key_valid[:, s] | (s == t)
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(head_dim)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.double()).float()


@pytest.mark.parametrize("global_rows", [0, 4])
def test_banded_attention_is_the_band_masked_softmax(global_rows):
    gen = torch.Generator().manual_seed(0)
    length = BANDED_QUERY_CHUNK + 90  # two query chunks
    q, k, v = (torch.randn(2, 3, length, 8, generator=gen) for _ in range(3))
    lengths = torch.tensor([length, length - 70])
    key_valid = torch.arange(length).view(1, -1) < lengths.view(-1, 1)
    out = banded_attention(q, k, v, key_valid, window=5, global_rows=global_rows)
    want = _dense_band(q, k, v, key_valid, 5, global_rows)
    assert torch.isfinite(out).all()
    for b, n in enumerate(lengths.tolist()):
        assert_elementwise(out[b, :, :n], want[b, :, :n], "reduction")


@pytest.mark.parametrize("window", [2, 7])
def test_fast_transformer_window_equals_the_reference_windowed_pattern(window):
    model = random_tiny_model(seed=4)
    module = model.bottleneck_transformer
    reference = copy.deepcopy(module)
    reference.pattern = AttentionPattern(window=window)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, module.transformer.layers[0].norm1.normalized_shape[0], 40, generator=gen)
    if module.input_proj is not None:
        x = torch.randn(2, module.input_proj.in_features, 40, generator=gen)
    lengths = torch.tensor([40, 29])
    with torch.inference_mode():
        want = reference(x, lengths).transpose(1, 2)
        got = FastTransformer(module, "torch")(x.transpose(1, 2).contiguous(), lengths, window)
        whole = FastTransformer(module, "torch")(x.transpose(1, 2).contiguous(), lengths, 39)
        exact = FastTransformer(module, "torch")(x.transpose(1, 2).contiguous(), lengths)
    assert_elementwise(got, want, "features")
    assert torch.equal(whole, exact)  # a window covering the sequence is the exact path


def _band_masked_forward(window: int, prompt: int = len(PROMPT_ROWS)):
    """A readable replacement of `SANMAttention.forward` whose attention scores are masked to
    the band `|t - s| <= window` (the first `prompt` rows global)."""

    def band_masked_forward(self, x, mask):
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)
        memory = self.fsmn(v, mask)
        q, k, vh = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in (q, k, v))
        scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-2, -1))
        t = torch.arange(x.shape[1])
        near = (t.view(-1, 1) - t.view(1, -1)).abs() <= window
        visible = near | (t.view(-1, 1) < prompt) | (t.view(1, -1) < prompt)
        if mask is not None:
            visible = visible & (mask[:, None, None, :] > 0)
        visible = visible | torch.eye(x.shape[1], dtype=torch.bool)
        scores = scores.masked_fill(~visible, -math.inf)
        attn = torch.matmul(torch.softmax(scores, dim=-1), vh)
        return self.linear_out(rearrange(attn, "b h l d -> b l (h d)")) + memory

    return band_masked_forward


def test_sensevoice_window_equals_the_reference_with_a_band_mask(monkeypatch):
    """The reference SenseVoice, its attention scores masked to the band (prompt rows global)
    in a readable replacement of its forward, against the fast encoder's banded mode."""
    model = random_tiny_model(seed=5)
    window = 3
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 60, 560, generator=gen)
    lens = torch.tensor([60, 41])
    with torch.inference_mode():
        got = FastSenseVoice(model.semantic_model)(feats, lens, window)
        whole = FastSenseVoice(model.semantic_model)(feats, lens, 100)
        exact = FastSenseVoice(model.semantic_model)(feats, lens)
        monkeypatch.setattr(SANMAttention, "forward", _band_masked_forward(window))
        want = model.semantic_model(feats, lens)
    assert_elementwise(got, want, "features")
    # The band moves the output far beyond rounding: 100x the bound above.
    assert not torch.allclose(got, exact, rtol=1e-3, atol=1e-3)
    assert torch.equal(whole, exact)  # a window covering the clip is the exact path


def test_window_covering_the_clip_is_exact_and_a_narrow_one_is_batch_invariant():
    model = responsive(random_tiny_model(seed=0))
    audio, lens = noise_batch(3, [24000, 15000], 0.3)
    exact = fast_encode(audio, model, num_quantizers=3, audio_lens=lens)
    wide = fast_encode(audio, model, num_quantizers=3, audio_lens=lens, attention_window=10.0)
    for key in CODE_KEYS:
        assert torch.equal(wide[key], exact[key]), key
    codes = (exact["semantic_codes"], exact["acoustic_codes"], exact["token_lengths"])
    assert torch.equal(
        fast_decode(model, *codes, attention_window=10.0), fast_decode(model, *codes)
    )

    narrow = fast_encode(audio, model, num_quantizers=3, audio_lens=lens, attention_window=0.2)
    for b, n in enumerate(lens.tolist()):
        single = fast_encode(audio[b : b + 1, :n], model, num_quantizers=3, attention_window=0.2)
        g = int(single["total_frames"][0])
        for key in ("semantic_codes", "acoustic_codes"):
            assert torch.equal(narrow[key][b, :, :g], single[key][0]), key
        assert torch.equal(narrow["token_lengths"][b, :g], single["token_lengths"][0])
    audio_out = fast_decode(
        model,
        narrow["semantic_codes"],
        narrow["acoustic_codes"],
        narrow["token_lengths"],
        attention_window=0.2,
    )
    assert torch.isfinite(audio_out).all()


def _banded_reference(model, windows):
    """A copy of the fixed-window `model` whose transformers attend within the approximate
    mode's windows: the window-query encoders and decoder at the aggregators' window, the
    bottleneck at its own (SenseVoice is banded by `_band_masked_forward`)."""
    banded = copy.deepcopy(model)
    for module in (banded.semantic_aggregator, banded.acoustic_aggregator, banded.window_decoder):
        module.transformer.pattern = AttentionPattern(window=windows.aggregator)
    banded.bottleneck_transformer.pattern = AttentionPattern(window=windows.bottleneck)
    return banded


def test_fixed_window_model_in_the_approximate_mode_is_the_banded_reference(monkeypatch):
    """A fixed-window model: a window covering the clip gives the exact reference's codes; a
    narrow one gives those of the reference with every attention banded, audio within fp32
    tolerance, and each item alone gets its batched codes."""
    model = responsive(random_tiny_model(seed=6, aggregator="fixed_window", window=3))
    audio, lens = noise_batch(4, [32000, 19000], 0.3)
    wide = fast_encode(audio, model, num_quantizers=4, audio_lens=lens, attention_window=10.0)
    with torch.inference_mode():
        exact = model.encode(audio, lens, num_quantizers=4)
    for key in CODE_KEYS:
        assert torch.equal(wide[key], exact[key]), key

    seconds = 0.2
    windows = attention_bands(seconds)
    narrow = fast_encode(audio, model, num_quantizers=4, audio_lens=lens, attention_window=seconds)
    codes = (narrow["semantic_codes"], narrow["acoustic_codes"], narrow["token_lengths"])
    wav = fast_decode(model, *codes, attention_window=seconds)
    with torch.inference_mode():
        unbanded = model.decode(*codes)
        banded = _banded_reference(model, windows)
        monkeypatch.setattr(SANMAttention, "forward", _band_masked_forward(windows.sensevoice))
        ref = banded.encode(audio, lens, num_quantizers=4)
        want = banded.decode(*codes)
    for key in CODE_KEYS:
        assert torch.equal(narrow[key], ref[key]), key
    assert_elementwise(wav, want, "audio")
    # The bands do narrow: the audio moves 100x beyond the bound above.
    assert not torch.allclose(wav, unbanded, rtol=1e-3, atol=1e-3)
    monkeypatch.undo()
    for b, n in enumerate(lens.tolist()):
        alone = fast_encode(audio[b : b + 1, :n], model, num_quantizers=4, attention_window=seconds)
        g = int(alone["total_frames"][0])
        for key in ("semantic_codes", "acoustic_codes"):
            assert torch.equal(narrow[key][b, :, :g], alone[key][0]), (b, key)


def test_window_sizes_and_errors():
    w = attention_bands(2.0)
    assert (w.sensevoice, w.aggregator, w.bottleneck) == (34, 50, 25)
    assert attention_bands(None) is None
    model = random_tiny_model(seed=0)
    audio, _ = noise_batch(1, [8000], 0.3)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(InputError, match="attention_window"):
            fast_encode(audio, model, attention_window=bad)
