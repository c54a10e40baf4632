"""Periodicity of decoded speech at the original's pitch: a number for "harmonics visible in
the decoded spectrogram".

A voiced sound is periodic: its waveform repeats every pitch period, which is what draws the
harmonics (multiples of the pitch) as parallel lines in a narrow-band spectrogram. Decoded
audio that lost them (smeared formant envelopes, noise-like excitation) no longer repeats at
the original's period. Definition, on 16 kHz audio:

* frames: 40 ms (`FRAME` = 640 samples) every 10 ms (`HOP` = 160), only frames wholly inside
  the audio (`F = 1 + (N - 640) // 160`, none when `N < 640`); each frame minus its mean;
* normalised autocorrelation of a frame `x [640]` at lag `L`:
  `r(L) = sum_n x[n] x[n+L] / sqrt(sum_n x[n]^2 * sum_n x[n+L]^2)`, all sums over
  `n = 0 .. 639 - L` (the part of the frame both copies cover); 0 where a sum of squares is 0.
  Computed for `L` in `LAG_MIN - 2 .. LAG_MAX + 2`, the pitch range 60-400 Hz
  (`LAG_MIN = ceil(16000 / 400) = 40`, `LAG_MAX = floor(16000 / 60) = 266`) widened by the
  `SEARCH` lags either side used below;
* pitch lag of a frame: among lags `LAG_MIN .. LAG_MAX`, the smallest local peak of `r`
  (not below either neighbour) within `OCTAVE` (0.9) of the frame's largest `r` there; the
  smallest, because a period-`P` signal correlates nearly as well at `2P`, `3P`, ...;
* voiced: largest `r` over `LAG_MIN .. LAG_MAX` at least `VOICED` (0.6), and the frame not
  silent: its RMS at least `SILENCE` (0.01, -40 dB) times the largest frame RMS of the audio;
* periodicity of a voiced frame of the original: the largest `r` of the original's frame at
  the original's pitch lag `+-SEARCH` (2) lags; of the decoded audio: the largest `r` of the
  decoded frame at the same position, at the ORIGINAL's pitch lag `+-SEARCH` lags (a decoder
  may shift the period by a fraction of a sample, not more).

`harmonicity` reports the means over the original's voiced frames: close to 1 for clean
voiced speech; a faithful decoding close to the original's; a pure tone buried in white noise
at `s` dB SNR about `1 / (1 + 10^(-s/10))`; noise alone about 0. Both signals are cut to their
common length first.
"""

from __future__ import annotations

import math

import torch

from .reference.errors import InputError

SAMPLE_RATE = 16000
FRAME, HOP = 640, 160
LAG_MIN, LAG_MAX = math.ceil(SAMPLE_RATE / 400), math.floor(SAMPLE_RATE / 60)
SEARCH = 2
OCTAVE, VOICED, SILENCE = 0.9, 0.6, 0.01
# Lags whose `r` `frame_autocorrelation` returns: column j is lag FIRST_LAG + j.
FIRST_LAG = LAG_MIN - SEARCH
LAGS = torch.arange(FIRST_LAG, LAG_MAX + SEARCH + 1)


def _check(audio, name: str) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 1 or not audio.is_floating_point():
        given = (
            f"{audio.dtype} tensor of shape {list(audio.shape)}"
            if isinstance(audio, torch.Tensor)
            else type(audio).__name__
        )
        raise InputError(f"{name}: expected a float tensor [N] of 16 kHz audio, got {given}")
    return audio.detach().cpu().double()


def _frames(audio: torch.Tensor) -> torch.Tensor:
    """Mean-removed frames `[F, FRAME]` (float64) of `audio [N]`."""
    if audio.numel() < FRAME:
        return audio.new_zeros(0, FRAME)
    frames = audio.unfold(0, FRAME, HOP)
    return frames - frames.mean(dim=1, keepdim=True)


def _autocorrelation(frames: torch.Tensor) -> torch.Tensor:
    """`r [F, len(LAGS)]` of mean-removed `frames [F, FRAME]` (module docstring)."""
    if not len(frames):
        return frames.new_zeros(0, len(LAGS))
    spectrum = torch.fft.rfft(frames, n=2 * FRAME)
    # Zero-padded to twice the frame, the circular autocorrelation is the linear one:
    # products[:, L] = sum_{n < FRAME - L} x[n] x[n + L].
    products = torch.fft.irfft(spectrum.abs().square(), n=2 * FRAME)[:, LAGS]
    energy = frames.square().cumsum(dim=1)
    head = energy[:, FRAME - 1 - LAGS]  # sum_{n < FRAME - L} x[n]^2
    tail = energy[:, -1:] - energy[:, LAGS - 1]  # sum_{n >= L} x[n]^2
    denominator = (head * tail).sqrt()
    return torch.where(denominator > 0, products / denominator.clamp_min(1e-300), 0.0)


def frame_autocorrelation(audio: torch.Tensor) -> torch.Tensor:
    """Normalised autocorrelation `r [F, LAG_MAX - LAG_MIN + 2 SEARCH + 1]` (float64) of each
    frame of `audio [N]`; column `j` is lag `FIRST_LAG + j` (module docstring)."""
    return _autocorrelation(_frames(_check(audio, "audio")))


def _track(frames: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not len(frames):
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
    inner = r[:, SEARCH:-SEARCH]  # lags LAG_MIN .. LAG_MAX
    peak, best = inner.max(dim=1)
    local = (inner >= r[:, SEARCH - 1 : -SEARCH - 1]) & (inner >= r[:, SEARCH + 1 : -SEARCH + 1])
    candidates = local & (inner >= OCTAVE * peak[:, None])
    # The largest r may sit at the edge of the range without being a local peak.
    candidates[torch.arange(len(best)), best] = True
    lag = LAG_MIN + candidates.int().argmax(dim=1)  # argmax: the first True
    rms = frames.square().mean(dim=1).sqrt()
    voiced = (peak >= VOICED) & (rms >= SILENCE * rms.max())
    return voiced, lag


def pitch_track(audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(voiced `[F]` bool, pitch lag `[F]` int64 samples) of each frame of `audio [N]` (module
    docstring); the lag is given for every frame, meaningful where voiced."""
    frames = _frames(_check(audio, "audio"))
    return _track(frames, _autocorrelation(frames))


def periodicity(original: torch.Tensor, decoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per voiced frame of `original [N]`: (the original's periodicity `[V]`, the decoded
    audio's `[V]`), both at the original's pitch lag (module docstring); `decoded [M]` and
    `original` are cut to their common length."""
    original, decoded = _check(original, "original"), _check(decoded, "decoded")
    n = min(original.numel(), decoded.numel())
    frames = _frames(original[:n])
    r_original = _autocorrelation(frames)
    voiced, lag = _track(frames, r_original)
    r_decoded = _autocorrelation(_frames(decoded[:n]))
    columns = (lag - FIRST_LAG)[voiced, None] + torch.arange(-SEARCH, SEARCH + 1)
    return (
        r_original[voiced].gather(1, columns).amax(dim=1),
        r_decoded[voiced].gather(1, columns).amax(dim=1),
    )


def mean_periodicity(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    """{"original", "decoded"}: the means of `periodicity`'s two `[V]` results (of one clip,
    or of several concatenated); `None` both where V = 0."""
    voiced = ours.numel()
    return {
        "original": float(ours.mean()) if voiced else None,
        "decoded": float(theirs.mean()) if voiced else None,
    }


def harmonicity(original: torch.Tensor, decoded: torch.Tensor) -> dict:
    """Mean periodicity over the voiced frames of `original [N]`, of the original and of
    `decoded [M]` at the original's pitch lags (`mean_periodicity`), with the number of
    voiced frames and of frames (module docstring)."""
    ours, theirs = periodicity(original, decoded)
    n = min(original.numel(), decoded.numel())
    return {
        **mean_periodicity(ours, theirs),
        "voiced_frames": ours.numel(),
        "frames": max(0, 1 + (n - FRAME) // HOP),
    }
