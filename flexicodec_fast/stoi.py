"""STOI, the short-time objective intelligibility measure (Taal, Hendriks, Heusdens and Jensen,
"An algorithm for intelligibility prediction of time-frequency weighted noisy speech", IEEE
TASLP 2011), written from the paper's definition with torch alone (no scipy, no pystoi).

For a clean signal x and a degraded signal y of the same length:

1. Both are resampled to 10 kHz (`resampling.resample`, the package's windowed-sinc filter;
   the paper's MATLAB code and pystoi use a Kaiser-windowed filter, Octave's `resample`, so
   the resampled signals differ slightly: tests/test_stoi.py measures what that does to STOI).
2. Silent frames are removed: both signals are cut into 256-sample frames with hop 128 (a
   frame starting exactly 256 samples before the end is not taken, as in the reference code)
   and weighted with a Hann window without its zero end points (MATLAB's `hanning(256)`);
   every frame whose clean energy is 40 dB or more below the loudest clean frame is dropped
   from both, and the remaining windowed frames are overlap-added back into two signals.
3. STFT of each with the same framing and window and a 512-point FFT; the 257 bins are summed
   in power into 15 one-third octave bands, the lowest centred at 150 Hz (band j spans the
   bins from the one nearest to 150 * 2^((2j-1)/6) Hz up to, not including, the one nearest to
   150 * 2^((2j+1)/6) Hz), and the band magnitude is the square root: X_j(m), Y_j(m).
4. For every band j and every run of N = 30 consecutive frames ending at frame m, the segments
   x_{j,m}, y_{j,m} `[30]`: y is scaled to the clean segment's energy,
   alpha = ||x_{j,m}|| / ||y_{j,m}||, and clipped to bound the signal-to-distortion ratio at
   beta = -15 dB:
   y'_{j,m} = min(alpha * y_{j,m}, (1 + 10^(-beta/20)) * x_{j,m}).
5. d_{j,m} is the correlation coefficient of x_{j,m} and y'_{j,m} (both minus their mean,
   divided by their norm; float64 eps is added to each norm, as pystoi does, so a constant
   segment contributes 0 where the paper's code would divide by zero), and STOI is the mean
   of d_{j,m} over all J segments and M = 15 bands: d = 1 / (J M) * sum d_{j,m}.

STOI lies in [-1, 1] and in practice in [0, 1]; higher predicts better intelligibility.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .reference.errors import InputError, describe
from .resampling import resample

SAMPLE_RATE = 10000
FRAME = 256
HOP = FRAME // 2
FFT_SIZE = 512
BANDS = 15
LOWEST_CENTRE_HZ = 150.0
SEGMENT = 30
BETA_DB = -15.0
DYNAMIC_RANGE_DB = 40.0
# Overlap-adding K kept frames gives 128 (K + 1) samples, which the STFT cuts into K - 1
# frames (its last possible frame is not taken): SEGMENT STFT frames need SEGMENT + 1 kept.
MIN_KEPT_FRAMES = SEGMENT + 1
_EPS = torch.finfo(torch.float64).eps


@lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    """MATLAB's `hanning(256)`: the Hann window of 258 points without its two zeros `[256]`."""
    n = torch.arange(1, FRAME + 1, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2 * math.pi * n / (FRAME + 1))


@lru_cache(maxsize=1)
def third_octave_bands() -> torch.Tensor:
    """0/1 matrix `[15, 257]` summing FFT bins (10 kHz, 512 points) into the 15 bands."""
    bins = torch.arange(FFT_SIZE // 2 + 1, dtype=torch.float64) * SAMPLE_RATE / FFT_SIZE
    bands = torch.zeros(BANDS, bins.numel(), dtype=torch.float64)
    for j in range(BANDS):
        low = LOWEST_CENTRE_HZ * 2 ** ((2 * j - 1) / 6)
        high = LOWEST_CENTRE_HZ * 2 ** ((2 * j + 1) / 6)
        first = int(torch.argmin((bins - low).abs()))
        end = int(torch.argmin((bins - high).abs()))
        bands[j, first:end] = 1
    return bands


def _frames(signal: torch.Tensor) -> torch.Tensor:
    """Windowed frames `[K, 256]` of `signal [L]`, starting at 0, 128, ... < L - 256."""
    count = max(0, math.ceil((signal.numel() - FRAME) / HOP))
    if count == 0:
        return signal.new_zeros(0, FRAME)
    return signal.unfold(0, FRAME, HOP)[:count] * _window()


def _overlap_add(frames: torch.Tensor) -> torch.Tensor:
    """`[K, 256]` frames at hop 128 summed into `[128 (K + 1)]` samples."""
    out = frames.new_zeros(frames.shape[0] + 1, HOP)
    out[:-1] += frames[:, :HOP]
    out[1:] += frames[:, HOP:]
    return out.reshape(-1)


def _band_magnitudes(signal: torch.Tensor) -> torch.Tensor:
    """One-third octave band magnitudes `[15, T]` of `signal [L]` at 10 kHz."""
    power = torch.fft.rfft(_frames(signal), n=FFT_SIZE).abs().square()
    return (third_octave_bands() @ power.T).sqrt()


def _check(name: str, signal) -> None:
    if not isinstance(signal, torch.Tensor) or signal.ndim != 1 or not signal.is_floating_point():
        raise InputError(f"{name}: expected a 1-D float tensor [N], got {describe(signal)}")
    if signal.numel() == 0:
        raise InputError(f"{name}: expected audio, got an empty tensor")
    if not bool(torch.isfinite(signal).all()):
        raise InputError(f"{name}: expected finite samples, got NaN or infinity")


def stoi(clean: torch.Tensor, degraded: torch.Tensor, sample_rate: int) -> float:
    """STOI of `degraded [N]` against `clean [N]` (see the module docstring), both float at
    `sample_rate` Hz (any positive integer rate; 10 kHz is used as is, others are resampled).

    Needs at least 31 frames of the clean signal at 10 kHz (256 samples, hop 128) within
    40 dB of its loudest frame, about 0.41 s of speech; raises `InputError` otherwise, on
    lengths that differ, on empty or non-finite input and on a silent clean signal.
    """
    _check("clean", clean)
    _check("degraded", degraded)
    if clean.shape != degraded.shape:
        raise InputError(
            f"degraded: expected the clean signal's length {clean.numel()}, got {degraded.numel()}"
        )
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise InputError(f"sample_rate: expected a positive integer in Hz, got {sample_rate!r}")
    if not bool(clean.ne(0).any()):
        raise InputError("clean: expected speech, got silence (every sample is 0)")
    x = resample(clean.double().cpu(), sample_rate, SAMPLE_RATE)
    y = resample(degraded.double().cpu(), sample_rate, SAMPLE_RATE)

    x_frames, y_frames = _frames(x), _frames(y)
    energy_db = 20 * torch.log10(x_frames.norm(dim=1) + _EPS)
    loudest = float(energy_db.max()) if energy_db.numel() else 0.0
    keep = energy_db > loudest - DYNAMIC_RANGE_DB
    kept = int(keep.sum())
    if kept < MIN_KEPT_FRAMES:
        raise InputError(
            f"clean: STOI needs at least {MIN_KEPT_FRAMES} frames of {FRAME} samples at "
            f"{SAMPLE_RATE} Hz (hop {HOP}; about {(MIN_KEPT_FRAMES + 1) * HOP / SAMPLE_RATE:.2f} "
            f"s) within {DYNAMIC_RANGE_DB:g} dB of the loudest frame, got {kept} of "
            f"{x_frames.shape[0]} frames from {clean.numel()} samples at {sample_rate} Hz"
        )
    x_bands = _band_magnitudes(_overlap_add(x_frames[keep]))
    y_bands = _band_magnitudes(_overlap_add(y_frames[keep]))

    x_seg = x_bands.unfold(1, SEGMENT, 1)  # [15, J, 30]
    y_seg = y_bands.unfold(1, SEGMENT, 1)
    alpha = x_seg.norm(dim=-1, keepdim=True) / (y_seg.norm(dim=-1, keepdim=True) + _EPS)
    y_clipped = torch.minimum(alpha * y_seg, (1 + 10 ** (-BETA_DB / 20)) * x_seg)
    x_c = x_seg - x_seg.mean(dim=-1, keepdim=True)
    y_c = y_clipped - y_clipped.mean(dim=-1, keepdim=True)
    x_c = x_c / (x_c.norm(dim=-1, keepdim=True) + _EPS)
    y_c = y_c / (y_c.norm(dim=-1, keepdim=True) + _EPS)
    return float((x_c * y_c).sum(dim=-1).mean())
