"""Multi-head attention pieces of the mimi-style transformer (spec §6).

RoPE here rotates *interleaved* pairs of dimensions `(2i, 2i+1)`, not the half-split
"rotate_half" convention, and is computed in float32 in the official op order so that
the reference reproduces official outputs to the last bit where the arithmetic allows.

Attention patterns (`AttentionPattern`):
* full (the official default for every released module): every key of the item;
* window `w` (extension, the paper's local attention): key `s` visible from query `t` iff
  `|t - s| <= w`;
* causal with context `c` (official `causal=True`): key `s` visible iff `0 <= t - s < c`.
Per-item key lengths mask keys past each item's end (batch invariance, design §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange


@dataclass(frozen=True)
class AttentionPattern:
    """Which keys a query may see; `window` and `causal` are mutually exclusive."""

    window: int | None = None
    causal: bool = False
    context: int | None = None

    def __post_init__(self):
        if self.window is not None and self.causal:
            raise ValueError("an attention pattern is either windowed or causal, not both")
        if self.window is not None and self.window < 0:
            raise ValueError(f"window must be >= 0, got {self.window}")

    @property
    def is_full(self) -> bool:
        return self.window is None and not self.causal


FULL = AttentionPattern()


def rope_tables(length: int, head_dim: int, max_period: float = 10000.0, device=None):
    """cos and sin of the rotation angles, each `[length, head_dim // 2]` float32.

    Angle of pair `i` at position `t`: `t * exp(i * (-ln(max_period) * 2 / head_dim))`.
    """
    ds = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    freqs = torch.exp(ds * (-math.log(max_period) * 2 / head_dim))
    ts = torch.arange(length, device=device, dtype=torch.float32).view(-1, 1)
    angles = freqs * ts
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of `x` `[B, H, L, D]` by the tables `[L, D/2]`."""
    pairs = rearrange(x, "b h l (i two) -> b h l i two", two=2)
    re, im = pairs[..., 0].float(), pairs[..., 1].float()
    out_re = re * cos - im * sin
    out_im = re * sin + im * cos
    out = torch.stack([out_re.to(x.dtype), out_im.to(x.dtype)], dim=-1)
    return rearrange(out, "b h l i two -> b h l (i two)")


def allowed_keys(
    length: int,
    pattern: AttentionPattern,
    lengths: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor | None:
    """Boolean mask of visible keys, `[B or 1, 1, L, L]`, or None when nothing is masked.

    Query rows past an item's length see key 0 only, so they stay finite; callers zero them.
    """
    t = torch.arange(length, device=device)
    delta = t.view(-1, 1) - t.view(1, -1)
    if pattern.causal:
        mask = delta >= 0
        if pattern.context is not None:
            mask = mask & (delta < pattern.context)
    elif pattern.window is not None:
        mask = delta.abs() <= pattern.window
    else:
        mask = None
    if lengths is None or bool((lengths >= length).all()):
        return None if mask is None else mask.view(1, 1, length, length)
    key_ok = t.view(1, 1, 1, -1) < lengths.view(-1, 1, 1, 1)
    query_ok = t.view(1, 1, -1, 1) < lengths.view(-1, 1, 1, 1)
    full = key_ok if mask is None else key_ok & mask
    first_key = (t == 0).view(1, 1, 1, -1)
    return torch.where(query_ok, full, first_key)


def multi_head_attention(
    x: torch.Tensor,
    in_proj_weight: torch.Tensor,
    out_proj_weight: torch.Tensor,
    num_heads: int,
    pattern: AttentionPattern = FULL,
    lengths: torch.Tensor | None = None,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Bias-free self-attention with RoPE on q and k.

    x: `[B, L, C]`; in_proj_weight: `[3C, C]` (rows: q, k, v; head h uses rows `hD..hD+D-1`
    of each); out_proj_weight: `[C, C]`; lengths: `[B]` valid positions per item or None.
    Returns `[B, L, C]`; rows past an item's length are zero.
    """
    batch, length, _ = x.shape
    projected = F.linear(x, in_proj_weight)
    q, k, v = rearrange(projected, "b l (p h d) -> p b h l d", p=3, h=num_heads)
    cos, sin = rope_tables(length, q.shape[-1], max_period, device=x.device)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    mask = allowed_keys(length, pattern, lengths, device=x.device)
    out = F.scaled_dot_product_attention(q, k, v, mask, dropout_p=0.0)
    out = F.linear(rearrange(out, "b h l d -> b l (h d)"), out_proj_weight)
    if lengths is not None:
        valid = torch.arange(length, device=x.device).view(1, -1) < lengths.view(-1, 1)
        out = out * valid.unsqueeze(-1).to(out.dtype)
    return out
