"""Everyday degradations of speech that listeners understand without effort, to calibrate
the phoneme recogniser: what a phoneme error rate on decoded audio means depends on how much
harmless distortions already cost a recogniser trained on clean speech.
"""

from __future__ import annotations

import torch

from ..reference.errors import InputError, describe


def _check_clip(audio: torch.Tensor) -> None:
    if not isinstance(audio, torch.Tensor) or audio.ndim != 1 or not audio.is_floating_point():
        raise InputError(f"audio: expected a 1-D float tensor [N], got {describe(audio)}")


def add_white_noise(
    audio: torch.Tensor, snr_db: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`audio [N]` plus Gaussian white noise scaled so that the clip's mean power over the
    noise's mean power is exactly `snr_db` decibels. `generator` makes it repeatable."""
    _check_clip(audio)
    noise = torch.randn(audio.shape, generator=generator, dtype=torch.float64)
    signal_power = audio.double().pow(2).mean()
    noise = noise * (signal_power / (noise.pow(2).mean() * 10 ** (snr_db / 10))).sqrt()
    return (audio.double() + noise).to(audio.dtype)


def band_limit(
    audio: torch.Tensor, low_hz: float, high_hz: float, sample_rate: int = 16000
) -> torch.Tensor:
    """`audio [N]` with every frequency outside `[low_hz, high_hz]` removed (an ideal
    band-pass in the frequency domain of the whole clip); 300-3400 Hz is the telephone band."""
    _check_clip(audio)
    if not 0 <= low_hz < high_hz:
        raise InputError(f"band_limit: expected 0 <= low_hz < high_hz, got {low_hz}, {high_hz}")
    spectrum = torch.fft.rfft(audio.double())
    frequencies = torch.fft.rfftfreq(audio.numel(), d=1 / sample_rate, dtype=torch.float64)
    keep = (frequencies >= low_hz) & (frequencies <= high_hz)
    return torch.fft.irfft(spectrum * keep, n=audio.numel()).to(audio.dtype)
