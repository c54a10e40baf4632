"""The GAN discriminator of the training recipe (spec §11.3).

Eight sub-discriminators on preprocessed audio (mean removed, peak-normalised to 0.8):
multi-period discriminators (MPD) for periods 2, 3, 5, 7, 11 and multi-resolution complex
STFT discriminators (MRD) for FFT sizes 2048, 1024, 512, each split into five frequency bands.
Every convolution is weight-normalised and followed by LeakyReLU(0.1), except the final
("post") convolution that gives the score map.

Each sub-discriminator returns its feature maps: the activation after every convolution, then
the score map last. The state-dict layout is ours (`discriminators.{i}.convs.{j}.*` for MPD,
`discriminators.{i}.bands.{b}.{j}.*` for MRD, `.post.*`); it is not meant to load the
official discriminator weights, which were never released.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .errors import InputError, describe
from .losses import hann_window
from .weight_norm import _WeightNormConv

LEAKY_SLOPE = 0.1
MPD_CHANNELS = (32, 128, 512, 1024, 1024)
MRD_CHANNELS = 64
BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
PEAK = 0.8


class WNConv2d(_WeightNormConv):
    """Weight-normalised `Conv2d`: `W = g * V / ||V||`, the norm over all dims but dim 0.

    State-dict keys `weight_g [C_out, 1, 1, 1]`, `weight_v [C_out, C_in, kh, kw]`, `bias`.
    """

    plain_type = nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


class PeriodDiscriminator(nn.Module):
    """MPD(p): the waveform `[B, 1, N]` folded into `[B, 1, N'/p, p]` (reflect-padded at the
    end by `p - N mod p`, a whole period when N is a multiple of p), then 2-D convolutions
    with kernels `(5, 1)` that only mix samples one period apart."""

    def __init__(self, period: int, channels: tuple[int, ...] = MPD_CHANNELS):
        super().__init__()
        self.period = period
        widths = (1, *channels)
        self.convs = nn.ModuleList(
            WNConv2d(
                widths[i],
                widths[i + 1],
                (5, 1),
                stride=(3, 1) if i < len(channels) - 1 else 1,
                padding=(2, 0),
            )
            for i in range(len(channels))
        )
        self.post = WNConv2d(channels[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x `[B, 1, N]` -> feature maps `[B, C_j, L_j, p]`, score `[B, 1, L, p]` last."""
        x = F.pad(x, (0, self.period - x.shape[-1] % self.period), mode="reflect")
        x = rearrange(x, "b c (l p) -> b c l p", p=self.period)
        features = []
        for conv in self.convs:
            x = _leaky(conv(x))
            features.append(x)
        features.append(self.post(x))
        return features


def complex_spectrogram(x: torch.Tensor, window_length: int) -> torch.Tensor:
    """Complex STFT as real pairs, `[B, 1, N]` -> `[B, 2, ceil(N / hop), window_length/2 + 1]`.

    Hop `window_length / 4`, periodic Hann window, audiotools' `match_stride=True` framing:
    reflect-pad `(window - hop) / 2` on both sides plus the right padding to a multiple of the
    hop, `center=True` (reflect), then drop two frames at each end, so frame `t` is centred
    near sample `t * hop`.
    """
    hop = window_length // 4
    length = x.shape[-1]
    right = math.ceil(length / hop) * hop - length
    pad = (window_length - hop) // 2
    x = F.pad(x.float(), (pad, pad + right), mode="reflect")
    spec = torch.stft(
        x.reshape(-1, x.shape[-1]),
        n_fft=window_length,
        hop_length=hop,
        window=hann_window(window_length).to(x.device),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )[..., 2:-2]
    return rearrange(torch.view_as_real(spec), "b f t c -> b c t f")


class ResolutionDiscriminator(nn.Module):
    """MRD(w): 2-D convolutions over the complex spectrogram `[B, 2, frames, bins]`, run per
    frequency band (bands are fractions of the `w/2 + 1` bins, truncated to ints); the band
    outputs are concatenated along frequency before the post convolution."""

    def __init__(
        self,
        window_length: int,
        channels: int = MRD_CHANNELS,
        bands: tuple[tuple[float, float], ...] = BANDS,
    ):
        super().__init__()
        self.window_length = window_length
        bins = window_length // 2 + 1
        self.band_edges = [(int(lo * bins), int(hi * bins)) for lo, hi in bands]

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    WNConv2d(2, channels, (3, 9), (1, 1), padding=(1, 4)),
                    WNConv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    WNConv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    WNConv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    WNConv2d(channels, channels, (3, 3), (1, 1), padding=(1, 1)),
                ]
            )

        self.bands = nn.ModuleList(stack() for _ in self.band_edges)
        self.post = WNConv2d(channels, 1, (3, 3), (1, 1), padding=(1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x `[B, 1, N]` -> 5 feature maps per band (band-major), score `[B, 1, T, F']` last."""
        spec = complex_spectrogram(x, self.window_length)
        features, outputs = [], []
        for (lo, hi), convs in zip(self.band_edges, self.bands, strict=True):
            band = spec[..., lo:hi]
            for conv in convs:
                band = _leaky(conv(band))
                features.append(band)
            outputs.append(band)
        features.append(self.post(torch.cat(outputs, dim=-1)))
        return features


def preprocess(audio: torch.Tensor) -> torch.Tensor:
    """Remove each signal's mean, then scale its peak to 0.8: `[B, 1, N]` -> same."""
    audio = audio - audio.mean(dim=-1, keepdim=True)
    return PEAK * audio / (audio.abs().amax(dim=-1, keepdim=True) + 1e-9)


class Discriminator(nn.Module):
    """All sub-discriminators: `forward(audio [B, 1, N])` -> one list of feature maps per
    sub-discriminator (MPDs first, in `periods` order, then MRDs in `fft_sizes` order)."""

    def __init__(
        self,
        periods: tuple[int, ...] = (2, 3, 5, 7, 11),
        fft_sizes: tuple[int, ...] = (2048, 1024, 512),
        mpd_channels: tuple[int, ...] = MPD_CHANNELS,
        mrd_channels: int = MRD_CHANNELS,
        bands: tuple[tuple[float, float], ...] = BANDS,
    ):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p, tuple(mpd_channels)) for p in periods]
            + [ResolutionDiscriminator(w, mrd_channels, tuple(bands)) for w in fft_sizes]
        )

    def forward(self, audio: torch.Tensor) -> list[list[torch.Tensor]]:
        if audio.dim() != 3 or audio.shape[1] != 1 or not audio.is_floating_point():
            raise InputError(f"audio: expected a float tensor [B, 1, N], got {describe(audio)}")
        audio = preprocess(audio)
        return [d(audio) for d in self.discriminators]
