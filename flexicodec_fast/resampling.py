"""Resampling to 16 kHz: windowed-sinc interpolation, the same filter as the official code.

The official pipeline uses `torchaudio.transforms.Resample(sr, 16000)` with its defaults:
sinc interpolation with a Hann window, lowpass width 6, rolloff 0.99, kernel computed in
float64 and applied in float32. This module computes that filter itself (torchaudio is not a
dependency) so resampled audio, and hence the codes, match the official pipeline.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

LOWPASS_WIDTH = 6
ROLLOFF = 0.99


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Polyphase filter bank `[new, 1, 2 * width + orig]` float32 and its half-width."""
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_WIDTH * orig / base)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + taps
    t = (t * base).clamp(-LOWPASS_WIDTH, LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), t.sin() / t)
    return (sinc * window * (base / orig)).to(torch.float32), width


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int = 16000) -> torch.Tensor:
    """Resample `[..., N]` float audio; output length `ceil(N * new_sr / orig_sr)`."""
    if orig_sr == new_sr:
        return audio
    gcd = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // gcd, new_sr // gcd
    kernel, width = _sinc_kernel(orig, new)
    shape = audio.shape
    flat = audio.reshape(-1, shape[-1])
    padded = F.pad(flat, (width, width + orig))
    out = F.conv1d(padded[:, None], kernel.to(audio.device, audio.dtype), stride=orig)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target = math.ceil(new * shape[-1] / orig)
    return out[..., :target].reshape(*shape[:-1], -1)


def resampled_length(length: int, orig_sr: int, new_sr: int = 16000) -> int:
    gcd = math.gcd(orig_sr, new_sr)
    return math.ceil((new_sr // gcd) * length / (orig_sr // gcd))
