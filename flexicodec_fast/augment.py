"""Data augmentation for speech corpora: pure functions of a clip `[N]` (16 kHz float) and
their parameters, and one seeded random chain of them (`random_augment`).

Each function implements a stated definition, which is what the tests check:

* `scale_level`: multiply by 10^(gain_db / 20);
* `add_noise`: add `noise` scaled so that the clip's mean power over the scaled noise's mean
  power is exactly `snr_db` decibels; `colored_noise` makes noise of power spectrum 1/f^e
  (e = 0 white, 1 pink, 2 brown);
* `band_limit`: remove every frequency outside [low_hz, high_hz] (telephone band, low-pass);
* `reverberate`: convolve with an impulse response, keeping the first N samples;
  `synthetic_rir` makes one: a direct path of 1 then Gaussian noise decaying by 60 dB in
  `rt60` seconds, scaled to a given direct-to-reverberant energy ratio;
* `change_tempo`: duration divided by `factor`, frequencies kept (phase vocoder);
* `shift_pitch`: every frequency multiplied by `ratio`, duration kept (phase-vocoder stretch
  by `ratio`, then resampling by 1 / `ratio`; formants move with the pitch, as when a tape
  runs faster);
* `warp_vocal_tract`: vocal-tract-length perturbation (Jaitly and Hinton 2013): frequency f
  moves to `vtlp_warp(f)`, alpha * f below a boundary, then linearly to the Nyquist frequency
  (which stays put); duration kept.

Everything is computed in float64 and returned in the input's dtype. Randomness only enters
through explicit generators, so every output is a function of the arguments.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction

import torch

from .asr.degradations import band_limit
from .reference.errors import InputError, describe
from .resampling import resample

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 256

__all__ = [
    "AugmentSettings",
    "add_noise",
    "band_limit",
    "change_tempo",
    "colored_noise",
    "random_augment",
    "reverberate",
    "scale_level",
    "shift_pitch",
    "synthetic_rir",
    "vtlp_warp",
    "warp_vocal_tract",
]


def _check_clip(audio: torch.Tensor, name: str = "audio") -> None:
    if not isinstance(audio, torch.Tensor) or audio.ndim != 1 or not audio.is_floating_point():
        raise InputError(f"{name}: expected a 1-D float tensor [N], got {describe(audio)}")
    if audio.numel() == 0:
        raise InputError(f"{name}: expected at least one sample, got an empty tensor")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InputError(f"{name}: expected a finite number > 0, got {value!r}")


def scale_level(audio: torch.Tensor, gain_db: float) -> torch.Tensor:
    """`audio [N]` times 10^(gain_db / 20)."""
    _check_clip(audio)
    return (audio.double() * 10 ** (gain_db / 20)).to(audio.dtype)


def colored_noise(
    length: int, exponent: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian noise `[length]` float64 whose power spectrum falls as 1/f^exponent (0 white,
    1 pink, 2 brown), unit mean power. The 0 Hz bin is removed (a 1/f spectrum has no finite
    value there)."""
    if not isinstance(length, int) or length < 2:
        raise InputError(f"length: expected an int >= 2, got {length!r}")
    white = torch.randn(length, generator=generator, dtype=torch.float64)
    spectrum = torch.fft.rfft(white)
    bins = torch.arange(spectrum.numel(), dtype=torch.float64)
    shape = torch.zeros_like(bins)
    shape[1:] = bins[1:] ** (-exponent / 2)
    noise = torch.fft.irfft(spectrum * shape, n=length)
    return noise / noise.pow(2).mean().sqrt()


def add_noise(audio: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """`audio [N]` plus `noise [N]` scaled so that mean(audio^2) / mean(scaled noise^2) is
    exactly 10^(snr_db / 10)."""
    _check_clip(audio)
    _check_clip(noise, "noise")
    if noise.shape != audio.shape:
        raise InputError(f"noise: expected shape {list(audio.shape)}, got {list(noise.shape)}")
    noise = noise.double()
    noise_power = noise.pow(2).mean()
    if noise_power == 0:
        raise InputError("noise: expected a signal with non-zero power, got all zeros")
    signal_power = audio.double().pow(2).mean()
    scale = (signal_power / (noise_power * 10 ** (snr_db / 10))).sqrt()
    return (audio.double() + noise * scale).to(audio.dtype)


def synthetic_rir(
    rt60: float,
    direct_to_reverberant_db: float = 0.0,
    sample_rate: int = SAMPLE_RATE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A room impulse response `[L]` float64, L = rt60 * sample_rate + 1: h[0] = 1 (the direct
    path), h[n >= 1] = Gaussian noise times exp(-3 ln(10) n / (rt60 * sample_rate)), an
    amplitude falling by 60 dB in rt60 seconds, scaled so that the direct path's energy over
    the tail's energy is 10^(direct_to_reverberant_db / 10)."""
    _check_positive("rt60", rt60)
    length = int(rt60 * sample_rate) + 1
    n = torch.arange(1, length, dtype=torch.float64)
    tail = torch.randn(length - 1, generator=generator, dtype=torch.float64)
    tail = tail * torch.exp(-3 * math.log(10) * n / (rt60 * sample_rate))
    tail = tail / tail.pow(2).sum().sqrt() * 10 ** (-direct_to_reverberant_db / 20)
    return torch.cat([torch.ones(1, dtype=torch.float64), tail])


def reverberate(audio: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """`audio [N]` convolved with the impulse response `rir [L]`: the first N samples of the
    full convolution (the tail past the clip's end is cut, so lengths and transcripts stay)."""
    _check_clip(audio)
    _check_clip(rir, "rir")
    size = audio.numel() + rir.numel() - 1
    full = torch.fft.irfft(
        torch.fft.rfft(audio.double(), n=size) * torch.fft.rfft(rir.double(), n=size), n=size
    )
    return full[: audio.numel()].to(audio.dtype)


def _stft(audio: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    return torch.stft(audio.double(), N_FFT, HOP, window=window, return_complex=True)


def _istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    return torch.istft(spec, N_FFT, HOP, window=window, length=length)


def _bin_omega() -> torch.Tensor:
    """Each STFT bin's centre frequency in radians per sample `[F]`."""
    return 2 * math.pi * torch.arange(N_FFT // 2 + 1, dtype=torch.float64) / N_FFT


def _wrap(phase: torch.Tensor) -> torch.Tensor:
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def _instantaneous_omega(spec: torch.Tensor) -> torch.Tensor:
    """Phase-vocoder frequency estimate in radians per sample `[F, T]` of an STFT `[F, T]`: the
    bin frequency plus the wrapped deviation of each hop's phase advance from it."""
    omega = _bin_omega()[:, None]
    phase = spec.angle()
    advance = torch.diff(phase, dim=1, prepend=phase[:, :1] - omega * HOP)
    return omega + _wrap(advance - omega * HOP) / HOP


def _lerp_rows(values: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """`values [F, T]` read at fractional rows `position [F]` (linear interpolation)."""
    low = position.floor().long().clamp(0, values.shape[0] - 1)
    high = (low + 1).clamp(max=values.shape[0] - 1)
    frac = (position - low)[:, None]
    return values[low] * (1 - frac) + values[high] * frac


def change_tempo(audio: torch.Tensor, factor: float) -> torch.Tensor:
    """`audio [N]` played `factor` times faster with its frequencies kept: `[round(N / factor)]`.

    Phase vocoder: output frame j reads the input STFT at frame j * factor (magnitudes
    interpolated between frames) and advances each bin's phase by its instantaneous frequency.
    """
    _check_clip(audio)
    _check_positive("factor", factor)
    spec = _stft(audio)
    omega = _instantaneous_omega(spec)
    frames = spec.shape[1]
    out_len = max(1, round(audio.numel() / factor))
    steps = torch.arange(out_len // HOP + 1, dtype=torch.float64) * factor
    steps = steps.clamp(max=frames - 1)
    low = steps.floor().long()
    high = (low + 1).clamp(max=frames - 1)
    frac = steps - low
    magnitude = spec.abs()[:, low] * (1 - frac) + spec.abs()[:, high] * frac
    # Output frame j's phase: the first input frame's plus the advances of frames 0..j-1.
    advance = omega[:, high] * HOP
    phase = spec[:, :1].angle() + torch.cumsum(advance, dim=1) - advance
    return _istft(torch.polar(magnitude, phase), out_len).to(audio.dtype)


def shift_pitch(audio: torch.Tensor, ratio: float) -> torch.Tensor:
    """`audio [N]` with every frequency multiplied by `ratio` (approximated by a fraction with
    denominator <= 100), duration kept: `[N]`."""
    _check_clip(audio)
    _check_positive("ratio", ratio)
    fraction = Fraction(ratio).limit_denominator(100)
    stretched = change_tempo(audio.double(), 1 / float(fraction))
    # Resampling from rate p to rate q keeps the cycles and divides the samples by p / q.
    shifted = resample(stretched, fraction.numerator, fraction.denominator)
    out = torch.zeros(audio.numel(), dtype=torch.float64)
    keep = min(out.numel(), shifted.numel())
    out[:keep] = shifted[:keep]
    return out.to(audio.dtype)


def vtlp_warp(
    frequency: torch.Tensor, alpha: float, boundary_hz: float = 4800.0, nyquist: float = 8000.0
) -> torch.Tensor:
    """The VTLP frequency map (Jaitly and Hinton 2013): f -> alpha f for f <= f0, where
    f0 = boundary_hz min(alpha, 1) / alpha, then the straight line from (f0, alpha f0) to
    (nyquist, nyquist). Monotone, so it has an inverse."""
    _check_positive("alpha", alpha)
    if not 0 < boundary_hz < nyquist:
        raise InputError(f"boundary_hz: expected 0 < boundary_hz < {nyquist}, got {boundary_hz}")
    f0 = boundary_hz * min(alpha, 1.0) / alpha
    slope = (nyquist - alpha * f0) / (nyquist - f0)
    return torch.where(frequency <= f0, alpha * frequency, alpha * f0 + slope * (frequency - f0))


def _vtlp_unwarp(
    frequency: torch.Tensor, alpha: float, boundary_hz: float, nyquist: float
) -> torch.Tensor:
    """The inverse of `vtlp_warp` `[F]`."""
    f0 = boundary_hz * min(alpha, 1.0) / alpha
    slope = (nyquist - alpha * f0) / (nyquist - f0)
    return torch.where(
        frequency <= alpha * f0, frequency / alpha, f0 + (frequency - alpha * f0) / slope
    )


def warp_vocal_tract(
    audio: torch.Tensor,
    alpha: float,
    boundary_hz: float = 4800.0,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """`audio [N]` with the component at frequency f moved to `vtlp_warp(f, alpha)`: `[N]`.

    Each output bin takes the magnitude of the input spectrum at the unwarped frequency
    (interpolated between bins) and the warped instantaneous frequency found there,
    accumulated over frames into its phase (a phase vocoder in frequency).
    """
    _check_clip(audio)
    nyquist = sample_rate / 2
    spec = _stft(audio)
    bin_hz = sample_rate / N_FFT
    target = torch.arange(spec.shape[0], dtype=torch.float64) * bin_hz
    rows = _vtlp_unwarp(target, alpha, boundary_hz, nyquist) / bin_hz
    magnitude = _lerp_rows(spec.abs(), rows)
    hz_per_omega = sample_rate / (2 * math.pi)
    source_hz = _lerp_rows(_instantaneous_omega(spec), rows) * hz_per_omega
    omega = vtlp_warp(source_hz, alpha, boundary_hz, nyquist) / hz_per_omega
    # A centred frame starts n_fft / 2 samples before its centre, which puts (-1)^k on bin k;
    # without it the bins of one spectral peak share one phase, so moving a bin's phase to
    # another bin keeps the peak coherent. Each bin starts at its nearest source bin's phase.
    sign = 1 - 2 * (torch.arange(spec.shape[0]) % 2)
    nearest = rows.round().long().clamp(max=spec.shape[0] - 1)
    start = (spec[nearest, :1] * sign[nearest, None]).angle()
    phase = start + torch.cumsum(omega * HOP, dim=1) - omega[:, :1] * HOP
    return _istft(torch.polar(magnitude, phase) * sign[:, None], audio.numel()).to(audio.dtype)


@dataclass(frozen=True)
class AugmentSettings:
    """The distributions `random_augment` draws from. `*_prob`: chance of applying a step.

    Defaults keep speech easily intelligible: tempo +-15 %, pitch +-3 semitones, VTLP alpha
    0.9-1.1, reverberation times 0.2-0.8 s, noise 5-30 dB SNR (white, pink or brown), the
    telephone band or a low-pass at 4-7 kHz, and a peak level between -26 and -0.5 dBFS.
    """

    tempo_prob: float = 0.5
    tempo_range: tuple[float, float] = (0.85, 1.15)
    pitch_prob: float = 0.5
    pitch_semitones: tuple[float, float] = (-3.0, 3.0)
    vtlp_prob: float = 0.5
    vtlp_range: tuple[float, float] = (0.9, 1.1)
    reverb_prob: float = 0.3
    rt60_range: tuple[float, float] = (0.2, 0.8)
    drr_db_range: tuple[float, float] = (-3.0, 10.0)
    band_prob: float = 0.3
    bands: tuple[tuple[float, float], ...] = (
        (300.0, 3400.0),
        (0.0, 4000.0),
        (0.0, 5500.0),
        (0.0, 7000.0),
    )
    noise_prob: float = 0.5
    snr_db: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 30.0)
    noise_exponents: tuple[float, ...] = (0.0, 1.0, 2.0)
    peak_dbfs_range: tuple[float, float] = (-26.0, -0.5)


def random_augment(
    audio: torch.Tensor, seed: int, settings: AugmentSettings = AugmentSettings()
) -> tuple[torch.Tensor, dict]:
    """One random chain of the augmentations above on `audio [N]`, a function of `seed`:
    tempo, pitch, VTLP, reverberation, band limit, noise, then the level that puts the peak
    at a random dBFS. Returns (augmented audio `[M]`, the parameters drawn, as a JSON-able
    dict). Only tempo changes the length."""
    _check_clip(audio)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    params: dict = {"seed": seed}
    x = audio.double()
    if rng.random() < settings.tempo_prob:
        params["tempo"] = round(rng.uniform(*settings.tempo_range), 4)
        x = change_tempo(x, params["tempo"])
    if rng.random() < settings.pitch_prob:
        params["pitch_semitones"] = round(rng.uniform(*settings.pitch_semitones), 3)
        x = shift_pitch(x, 2 ** (params["pitch_semitones"] / 12))
    if rng.random() < settings.vtlp_prob:
        params["vtlp_alpha"] = round(rng.uniform(*settings.vtlp_range), 4)
        x = warp_vocal_tract(x, params["vtlp_alpha"])
    if rng.random() < settings.reverb_prob:
        params["rt60"] = round(rng.uniform(*settings.rt60_range), 3)
        params["drr_db"] = round(rng.uniform(*settings.drr_db_range), 2)
        x = reverberate(x, synthetic_rir(params["rt60"], params["drr_db"], generator=generator))
    if rng.random() < settings.band_prob:
        params["band_hz"] = list(rng.choice(settings.bands))
        x = band_limit(x, *params["band_hz"])
    if rng.random() < settings.noise_prob and x.pow(2).sum() > 0:
        params["snr_db"] = rng.choice(settings.snr_db)
        params["noise_exponent"] = rng.choice(settings.noise_exponents)
        noise = colored_noise(x.numel(), params["noise_exponent"], generator)
        x = add_noise(x, noise, params["snr_db"])
    peak = float(x.abs().max())
    if peak > 0:
        target_dbfs = rng.uniform(*settings.peak_dbfs_range)
        params["gain_db"] = round(target_dbfs - 20 * math.log10(peak), 3)
        x = scale_level(x, params["gain_db"])
    return x.to(audio.dtype), params
