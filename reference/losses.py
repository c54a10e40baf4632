"""Training losses (spec §11.2): multi-scale mel L1, least-squares GAN, feature matching.

The mel loss reproduces the recipe's audiotools `MelSpectrogramLoss` settings without
audiotools, librosa or scipy: a periodic Hann window computed in float64 and cast to float32
(scipy's `get_window("hann", n)`), `torch.stft(center=True, pad_mode="reflect")`, magnitude,
Slaney-style mel filters (librosa's default `htk=False, norm="slaney"`), `log10(clamp(mel,
1e-5))`, L1, summed over seven scales with weight 2 each.

Sample-rate quirk: the official trainer wraps its 16 kHz audio as `AudioSignal(x, 24000)`, so
the mel filters are built for 24 kHz (their top edge is "12 kHz", i.e. 8 kHz of real audio is
spread over filters meant for 0-12 kHz). `filter_sample_rate=24000` reproduces the recipe;
`filter_sample_rate=16000` (or None) gives filters for the true rate.

Discriminator outputs are lists (one per sub-discriminator) of feature maps whose last entry
is the score map; see `reference.discriminators`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, describe

# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL  # 15
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney mel of frequencies in Hz (float64 recommended), element-wise."""
    linear = hz / _SLANEY_HZ_PER_MEL
    log = _SLANEY_LOG_START_MEL + torch.log(hz.clamp(min=1e-10) / _SLANEY_LOG_START_HZ) / (
        _SLANEY_LOG_STEP
    )
    return torch.where(hz >= _SLANEY_LOG_START_HZ, log, linear)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of `hz_to_mel`, element-wise."""
    linear = mel * _SLANEY_HZ_PER_MEL
    log = _SLANEY_LOG_START_HZ * torch.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_LOG_START_MEL))
    return torch.where(mel >= _SLANEY_LOG_START_MEL, log, linear)


@lru_cache(maxsize=64)
def mel_filters(
    sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """Slaney-normalised triangular mel filters `[n_mels, n_fft // 2 + 1]` float32.

    Equal to `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)` (htk=False,
    norm="slaney"): `n_mels + 2` edges equally spaced on the Slaney mel scale between `fmin`
    and `fmax` (default `sample_rate / 2`), triangles over the FFT bin frequencies
    `k * sample_rate / n_fft`, each scaled by `2 / (right edge - left edge)` in Hz so that
    every filter has unit area. Built in float64; like librosa, the triangles are rounded to
    float32 before the area scaling.
    """
    if fmax is None:
        fmax = sample_rate / 2.0
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (sample_rate / n_fft)
    edges_mel = torch.linspace(
        float(hz_to_mel(torch.tensor(float(fmin), dtype=torch.float64))),
        float(hz_to_mel(torch.tensor(float(fmax), dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    edges = mel_to_hz(edges_mel)
    widths = edges.diff()
    ramps = edges[:, None] - freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0).float()
    area = 2.0 / (edges[2:] - edges[:-2])
    return (triangles.double() * area[:, None]).float()


@lru_cache(maxsize=64)
def hann_window(length: int) -> torch.Tensor:
    """Periodic Hann window `[length]` float32: `0.5 - 0.5 cos(2 pi n / length)`, computed in
    float64 (scipy's `get_window("hann", length)`, which audiotools uses)."""
    return torch.hann_window(length, periodic=True, dtype=torch.float64).float()


def stft_magnitude(audio: torch.Tensor, window_length: int, hop_length: int) -> torch.Tensor:
    """`|STFT|` of `audio` `[B, N]`: `[B, window_length // 2 + 1, 1 + N // hop_length]`.

    Periodic Hann window, `center=True` with reflect padding (needs `N > window_length / 2`).
    """
    window = hann_window(window_length).to(audio.device)
    spec = torch.stft(
        audio.float(),
        n_fft=window_length,
        hop_length=hop_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.abs()


@dataclass(frozen=True)
class MelLossSettings:
    """Settings of `MultiScaleMelLoss` (defaults: the recipe's, spec §11.2)."""

    window_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    n_mels: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    sample_rate: int = 16000
    # The recipe's 24 kHz quirk (see the module docstring); None = `sample_rate`.
    filter_sample_rate: int | None = 24000
    clamp_eps: float = 1e-5
    log_weight: float = 2.0
    mag_weight: float = 0.0
    pow: float = 1.0
    fmin: float = 0.0
    fmax: float | None = None

    def __post_init__(self):
        if len(self.window_lengths) != len(self.n_mels) or not self.window_lengths:
            raise InputError(
                "mel loss: window_lengths and n_mels must be non-empty lists of the same length, "
                f"got {list(self.window_lengths)} and {list(self.n_mels)}"
            )
        for w in self.window_lengths:
            if w < 4 or w % 4:
                raise InputError(
                    f"mel loss: window_lengths must be multiples of 4 (hop = w / 4), got {w}"
                )


class MultiScaleMelLoss(nn.Module):
    """`sum_s log_weight * L1(log10 mel_s(fake), log10 mel_s(real)) + mag_weight * L1(mel_s)`.

    `forward(fake, real)` takes `[B, N]` or `[B, 1, N]` audio of the same shape (trim first)
    and returns a scalar. Scale `s` uses window `w_s`, hop `w_s / 4` and `n_mels_s` filters.
    """

    def __init__(self, settings: MelLossSettings | None = None):
        super().__init__()
        self.settings = s = settings or MelLossSettings()
        filter_rate = s.filter_sample_rate or s.sample_rate
        for i, (w, m) in enumerate(zip(s.window_lengths, s.n_mels, strict=True)):
            filters = mel_filters(float(filter_rate), w, m, s.fmin, s.fmax)
            self.register_buffer(f"filters_{i}", filters.clone(), persistent=False)

    def mel_spectrogram(self, audio: torch.Tensor, scale: int) -> torch.Tensor:
        """Mel magnitudes `[B, n_mels, frames]` of `audio` `[B, N]` at scale index `scale`."""
        w = self.settings.window_lengths[scale]
        magnitude = stft_magnitude(audio, w, w // 4)
        return getattr(self, f"filters_{scale}") @ magnitude

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if fake.shape != real.shape or fake.dim() not in (2, 3):
            raise InputError(
                f"fake/real: expected two audio tensors of the same shape [B, N] or [B, 1, N], "
                f"got {describe(fake)} and {describe(real)}"
            )
        fake = fake.reshape(-1, fake.shape[-1]).float()
        real = real.reshape(-1, real.shape[-1]).float()
        s = self.settings
        loss = fake.new_zeros(())
        for scale in range(len(s.window_lengths)):
            mel_fake = self.mel_spectrogram(fake, scale)
            mel_real = self.mel_spectrogram(real, scale)
            if s.log_weight:
                log_fake = mel_fake.clamp(min=s.clamp_eps).pow(s.pow).log10()
                log_real = mel_real.clamp(min=s.clamp_eps).pow(s.pow).log10()
                loss = loss + s.log_weight * F.l1_loss(log_fake, log_real)
            if s.mag_weight:
                loss = loss + s.mag_weight * F.l1_loss(mel_fake, mel_real)
        return loss


FeatureMaps = list[list[torch.Tensor]]


def discriminator_loss(d_fake: FeatureMaps, d_real: FeatureMaps) -> torch.Tensor:
    """Least-squares discriminator loss `sum_d mean(D_d(fake)^2) + mean((1 - D_d(real))^2)`
    over sub-discriminators `d` (the last feature map of each is its score)."""
    loss = 0.0
    for fake, real in zip(d_fake, d_real, strict=True):
        loss = loss + fake[-1].float().pow(2).mean() + (1 - real[-1].float()).pow(2).mean()
    return loss


def adversarial_loss(d_fake: FeatureMaps) -> torch.Tensor:
    """Least-squares generator loss `sum_d mean((1 - D_d(fake))^2)`."""
    loss = 0.0
    for fake in d_fake:
        loss = loss + (1 - fake[-1].float()).pow(2).mean()
    return loss


def feature_matching_loss(d_fake: FeatureMaps, d_real: FeatureMaps) -> torch.Tensor:
    """`sum_d sum_l mean|f_fake - sg(f_real)|` over every feature map but the score."""
    loss = 0.0
    for fake, real in zip(d_fake, d_real, strict=True):
        for f_fake, f_real in zip(fake[:-1], real[:-1], strict=True):
            loss = loss + F.l1_loss(f_fake.float(), f_real.detach().float())
    return loss
