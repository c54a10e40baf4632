"""Semantic feature downsampling 16.67 Hz -> 12.5 Hz (spec §3).

The official factor is the float literal 1.33333 (not 4/3), so linear interpolation is used:
`T_out = int(T_in / factor)` and the sampling grid scale is `T_in / T_out` (derived from the
sizes, as `F.interpolate(mode="linear", align_corners=False)` does). An integer factor uses
average pooling instead. Here every item uses its own `T_in`, so an item's result does not
depend on the batch's padded length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def downsampled_length(lengths: torch.Tensor, factor: float) -> torch.Tensor:
    """Output frames per item: `int(T_in / factor)` (float64 truncation), `[B]` int64."""
    if factor == int(factor):
        return torch.div(lengths, int(factor), rounding_mode="floor")
    # IEEE float64 division, then truncation: Python's `int(n / factor)`, on the device.
    return (lengths.double() / factor).long()


def linear_resample(
    x: torch.Tensor, lengths: torch.Tensor, out_lengths: torch.Tensor, frames: int | None = None
) -> torch.Tensor:
    """Per-item linear interpolation, `align_corners=False`.

    x: `[B, C, T_in]`; lengths / out_lengths: `[B]`. Returns `[B, C, frames]` (default
    `max(out_lengths)`), zero past each item's output length. Matches PyTorch's CPU
    kernel: the float32 scale `T_in / T_out`, source `max(0, (j + 0.5) * scale - 0.5)`,
    weights `1 - l` and `l`.
    """
    if frames is None:
        frames = int(out_lengths.max()) if out_lengths.numel() else 0
    t_out = frames
    scale = (lengths.float() / out_lengths.clamp(min=1).float()).view(-1, 1)
    j = torch.arange(t_out, device=x.device, dtype=torch.float32).view(1, -1)
    src = ((j + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long()
    lam = src - i0.float()
    last = (lengths - 1).clamp(min=0).view(-1, 1)
    i0 = torch.minimum(i0, last)
    i1 = torch.minimum(i0 + 1, last)
    channels = x.shape[1]
    x0 = torch.gather(x, 2, i0.unsqueeze(1).expand(-1, channels, -1))
    x1 = torch.gather(x, 2, i1.unsqueeze(1).expand(-1, channels, -1))
    # PyTorch's vectorised CPU kernel computes x0 * w0 + (x1 * w1) as one fused multiply-add;
    # addcmul rounds the same way, which makes the official features reproducible bit for bit.
    out = torch.addcmul(x1 * lam.unsqueeze(1), x0, (1 - lam).unsqueeze(1))
    valid = torch.arange(t_out, device=x.device).view(1, -1) < out_lengths.view(-1, 1)
    return out * valid.unsqueeze(1).to(out.dtype)


def downsample_semantic(
    x: torch.Tensor, lengths: torch.Tensor, factor: float, frames: int | None = None
):
    """x: `[B, C, T_in]`, lengths `[B]` -> (`[B, C, T_out]`, out lengths `[B]`); T_out is
    `frames` when given (a size known on the host), else the longest output."""
    if factor == 1:
        return x, lengths
    out_lengths = downsampled_length(lengths, factor)
    if factor == int(factor):
        pooled = F.avg_pool1d(x, int(factor), int(factor))
        t_out = int(out_lengths.max()) if frames is None else frames
        valid = torch.arange(t_out, device=x.device).view(1, -1) < out_lengths.view(-1, 1)
        return pooled[..., :t_out] * valid.unsqueeze(1).to(x.dtype), out_lengths
    return linear_resample(x, lengths, out_lengths, frames), out_lengths
