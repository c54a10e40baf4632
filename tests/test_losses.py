"""Training losses and discriminators (spec §11.2-11.3): mel filters against the Slaney
formula, STFT framing, the mel loss, LSGAN and feature matching, MPD/MRD shapes."""

import math

import numpy as np
import pytest
import torch

from flexicodec_fast.reference.discriminators import (
    Discriminator,
    PeriodDiscriminator,
    ResolutionDiscriminator,
    WNConv2d,
    complex_spectrogram,
    preprocess,
)
from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.reference.losses import (
    MelLossSettings,
    MultiScaleMelLoss,
    adversarial_loss,
    discriminator_loss,
    feature_matching_loss,
    hann_window,
    mel_filters,
    stft_magnitude,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _slaney_mel(f: float) -> float:
    return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) / (math.log(6.4) / 27)


def _slaney_hz(m: float) -> float:
    return m * (200 / 3) if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)


def _direct_filters(sr, n_fft, n_mels, fmin=0.0, fmax=None):
    """The Slaney-normalised mel filter bank, one weight at a time in float64."""
    fmax = sr / 2 if fmax is None else fmax
    lo, hi = _slaney_mel(fmin), _slaney_mel(fmax)
    edges = [_slaney_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            rising = (f - left) / (centre - left)
            falling = (right - f) / (right - centre)
            out[m, k] = max(0.0, min(rising, falling)) * 2.0 / (right - left)
    return out


@pytest.mark.parametrize(
    "sr, n_fft, n_mels, fmax",
    [
        (16000, 512, 80, None),
        (24000, 32, 5, None),
        (24000, 2048, 320, None),
        (16000, 256, 40, 5000),
    ],
)
def test_mel_filters_follow_the_slaney_formula(sr, n_fft, n_mels, fmax):
    got = mel_filters(float(sr), n_fft, n_mels, 0.0, fmax)
    assert got.dtype == torch.float32 and got.shape == (n_mels, n_fft // 2 + 1)
    want = _direct_filters(sr, n_fft, n_mels, 0.0, fmax)
    # fp32 filters against the float64 formula: one rounding per weight; atol for the zeros.
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-9)


def test_slaney_filters_have_unit_area_in_hz():
    # Slaney normalisation: every triangle integrates to 1 over frequency. The sum over FFT
    # bins is a Riemann sum of that integral: 2e-2 is its discretisation error, not rounding.
    sr, n_fft = 16000, 4096
    filters = mel_filters(float(sr), n_fft, 40).double()
    area = filters.sum(dim=1) * sr / n_fft
    np.testing.assert_allclose(area.numpy(), 1.0, rtol=2e-2)


def test_hann_window_is_periodic():
    n = 64
    want = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    np.testing.assert_allclose(hann_window(n).numpy(), want, atol=1e-7)  # fp32 of values <= 1
    assert hann_window(n).dtype == torch.float32


def test_stft_magnitude_is_centred_reflect_framing():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1000, generator=gen)
    w, hop = 64, 16
    mag = stft_magnitude(x, w, hop)
    assert mag.shape == (2, w // 2 + 1, 1 + 1000 // hop)
    padded = torch.nn.functional.pad(x[:, None], (w // 2, w // 2), mode="reflect")[:, 0]
    frames = padded.unfold(1, w, hop) * hann_window(w)
    want = torch.fft.rfft(frames.double(), dim=-1).abs().transpose(1, 2)
    # fp32 FFT against the float64 one, on 64-sample windows of unit-variance noise.
    torch.testing.assert_close(mag.double(), want, rtol=1e-4, atol=1e-4)


def test_mel_loss_settings_and_values():
    s = MelLossSettings()
    assert s.window_lengths == (32, 64, 128, 256, 512, 1024, 2048)
    assert s.n_mels == (5, 10, 20, 40, 80, 160, 320)
    assert (s.log_weight, s.mag_weight, s.pow, s.clamp_eps) == (2.0, 0.0, 1.0, 1e-5)
    assert s.filter_sample_rate == 24000  # the recipe's AudioSignal(x, 24000) quirk
    loss = MultiScaleMelLoss(s)
    torch.testing.assert_close(loss.filters_6, mel_filters(24000.0, 2048, 320))
    true_rate = MultiScaleMelLoss(MelLossSettings(filter_sample_rate=None))
    torch.testing.assert_close(true_rate.filters_6, mel_filters(16000.0, 2048, 320))

    gen = torch.Generator().manual_seed(1)
    real = 0.5 * torch.randn(2, 1, 4096, generator=gen)
    assert float(loss(real, real)) == 0.0
    # Ten times louder: |log10 difference| is 1 wherever neither side is clamped, so the sum
    # over seven scales of 2 x mean is just under 14.
    louder = float(loss(10 * real, real))
    assert 13.0 < louder <= 14.0 + 1e-4  # 1e-4: fp32 sums of the seven scales' means
    with pytest.raises(InputError, match="same shape"):
        loss(real, real[..., :-1])
    with pytest.raises(InputError, match="multiples of 4"):
        MelLossSettings(window_lengths=(30,), n_mels=(5,))


def test_lsgan_and_feature_matching_formulas():
    gen = torch.Generator().manual_seed(2)
    fake = [[torch.randn(2, 3, generator=gen) for _ in range(3)] for _ in range(2)]
    real = [[torch.randn(2, 3, generator=gen) for _ in range(3)] for _ in range(2)]
    want_d = sum(
        f[-1].pow(2).mean() + (1 - r[-1]).pow(2).mean() for f, r in zip(fake, real, strict=True)
    )
    want_g = sum((1 - f[-1]).pow(2).mean() for f in fake)
    want_fm = sum(
        (a - b).abs().mean()
        for f, r in zip(fake, real, strict=True)
        for a, b in zip(f[:-1], r[:-1], strict=True)
    )
    torch.testing.assert_close(discriminator_loss(fake, real), want_d)
    torch.testing.assert_close(adversarial_loss(fake), want_g)
    torch.testing.assert_close(feature_matching_loss(fake, real), want_fm)

    made = torch.zeros(2, 3, requires_grad=True)
    target = torch.ones(2, 3, requires_grad=True)
    feature_matching_loss([[made, made]], [[target, target]]).backward()
    assert target.grad is None  # the real features are a stop-gradient target
    torch.testing.assert_close(made.grad, torch.full((2, 3), -1 / 6))


def _conv_out(length, kernel, stride, pad):
    return (length + 2 * pad - kernel) // stride + 1


def test_period_discriminator_shapes():
    n, p = 4000, 3
    d = PeriodDiscriminator(p, (4, 8, 8, 16, 16))
    x = torch.randn(2, 1, n)
    maps = d(x)
    assert len(maps) == 6
    rows = (n + p - n % p) // p
    for i, channels in enumerate((4, 8, 8, 16)):
        rows = _conv_out(rows, 5, 3, 2)
        assert maps[i].shape == (2, channels, rows, p)
    assert maps[4].shape == (2, 16, rows, p)
    assert maps[5].shape == (2, 1, rows, p)
    folded = torch.nn.functional.pad(x, (0, p - n % p), mode="reflect").reshape(2, 1, -1, p)
    pre = d.convs[0](folded)
    torch.testing.assert_close(maps[0], torch.nn.functional.leaky_relu(pre, 0.1))
    assert (pre < 0).any()
    # A length that is a multiple of the period is padded by a whole period.
    assert PeriodDiscriminator(2, (4, 4, 4, 4, 4))(torch.randn(1, 1, 10))[0].shape[2] == 2


def test_resolution_discriminator_bands_and_shapes():
    d = ResolutionDiscriminator(2048, channels=4)
    assert d.band_edges == [(0, 102), (102, 256), (256, 512), (512, 768), (768, 1025)]
    n = 5000
    spec = complex_spectrogram(torch.randn(2, 1, n), 2048)
    assert spec.shape == (2, 2, math.ceil(n / 512), 1025)
    maps = d(torch.randn(2, 1, n))
    assert len(maps) == 5 * 5 + 1
    frames = math.ceil(n / 512)
    widths = []
    for b, (lo, hi) in enumerate(d.band_edges):
        width = hi - lo
        for j in range(3):
            width = _conv_out(width, 9, 2, 4)
            assert maps[5 * b + j + 1].shape == (2, 4, frames, width)
        assert maps[5 * b + 4].shape == (2, 4, frames, width)
        widths.append(width)
    assert maps[-1].shape == (2, 1, frames, sum(widths))


def test_discriminator_layout_and_preprocessing():
    d = Discriminator(mpd_channels=(4, 4, 8, 8, 8), mrd_channels=4)
    assert len(d.discriminators) == 8
    x = torch.randn(2, 1, 1600, generator=torch.Generator().manual_seed(3))
    out = d(x)
    assert [len(m) for m in out] == [6] * 5 + [26] * 3
    # Mean removal and peak normalisation make the scores blind to offset and gain.
    shifted = d(3.0 * x + 0.25)
    for a, b in zip(out, shifted, strict=True):
        # Offset and gain change the input's rounding before the normalisation undoes them;
        # the discriminators' convolutions carry that through their layers.
        torch.testing.assert_close(a[-1], b[-1], rtol=1e-4, atol=1e-5)
    y = preprocess(x + 1.0)
    torch.testing.assert_close(y.abs().amax(dim=-1), torch.full((2, 1), 0.8))
    assert y.mean(dim=-1).abs().max() < 1e-6  # fp32 mean of 1600 samples of peak 0.8
    keys = d.state_dict()
    assert keys["discriminators.0.convs.0.weight_g"].shape == (4, 1, 1, 1)
    assert keys["discriminators.5.bands.0.0.weight_v"].shape == (4, 2, 3, 9)
    assert "discriminators.7.post.bias" in keys
    with pytest.raises(InputError, match=r"\[B, 1, N\]"):
        d(torch.randn(2, 4096))


def test_weight_normalised_conv2d_folds_exactly():
    conv = WNConv2d(2, 3, (3, 5), stride=(1, 2), padding=(1, 2))
    x = torch.randn(1, 2, 7, 11)
    assert torch.equal(conv.folded()(x), conv(x))
    norms = conv.weight().flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, conv.weight_g.flatten())
