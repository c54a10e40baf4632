"""The mimi-style transformer used by the bottleneck and both aggregators (spec §6).

Pre-norm layers, RoPE attention without biases, exact-GELU feed-forward without biases,
LayerScale on both branches, no final norm, no absolute positions. Optional bias-free input
and output projections exist only when the model width differs from the data width.

Module paths reproduce the official state-dict keys:
`input_proj.weight`, `output_projs.0.weight`, `transformer.layers.{i}.{self_attn.in_proj_weight,
self_attn.out_proj.weight, norm1, norm2, linear1, linear2, layer_scale_1.scale,
layer_scale_2.scale}`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import FULL, AttentionPattern, multi_head_attention


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (`scale` `[C]`, initialised to 0.01)."""

    def __init__(self, channels: int, init: float = 0.01):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class SelfAttention(nn.Module):
    """Holds the official attention parameters; the math is `multi_head_attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"model width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.kaiming_uniform_(self.in_proj_weight, a=5**0.5)

    def forward(self, x, pattern: AttentionPattern, lengths: torch.Tensor | None):
        return multi_head_attention(
            x, self.in_proj_weight, self.out_proj.weight, self.num_heads, pattern, lengths
        )


class TransformerLayer(nn.Module):
    """`x + g1 * Attn(LN1 x)` then `x + g2 * W2 gelu(W1 LN2 x)`, on `[B, L, C]`."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.linear1 = nn.Linear(dim, dim_feedforward, bias=False)
        self.linear2 = nn.Linear(dim_feedforward, dim, bias=False)
        self.layer_scale_1 = LayerScale(dim)
        self.layer_scale_2 = LayerScale(dim)

    def forward(self, x, pattern: AttentionPattern, lengths: torch.Tensor | None):
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), pattern, lengths))
        return x + self.layer_scale_2(self.linear2(F.gelu(self.linear1(self.norm2(x)))))


class LayerStack(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int, dim_feedforward: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(dim, num_heads, dim_feedforward) for _ in range(num_layers)
        )


class ProjectedTransformer(nn.Module):
    """Transformer on channels-first data `[B, C_io, L]` with model width `dim`.

    `pattern` selects full, windowed or causal attention (see `reference.attention`).
    `forward(x [B, C_io, L], lengths [B] | None) -> [B, C_io, L]`; with lengths, positions
    past an item's length neither influence the others nor carry values (they are zero), so
    an item's output equals its single-item output.
    """

    def __init__(
        self,
        io_dim: int,
        dim: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        pattern: AttentionPattern = FULL,
    ):
        super().__init__()
        self.pattern = pattern
        self.transformer = LayerStack(dim, num_heads, num_layers, dim_feedforward)
        self.input_proj = nn.Linear(io_dim, dim, bias=False) if io_dim != dim else None
        self.output_projs = nn.ModuleList(
            [nn.Linear(dim, io_dim, bias=False) if io_dim != dim else nn.Identity()]
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = x.transpose(1, 2)
        if self.input_proj is not None:
            x = self.input_proj(x)
        for layer in self.transformer.layers:
            x = layer(x, self.pattern, lengths)
        x = self.output_projs[0](x)
        if lengths is not None:
            valid = torch.arange(x.shape[1], device=x.device).view(1, -1) < lengths.view(-1, 1)
            x = x * valid.unsqueeze(-1).to(x.dtype)
        return x.transpose(1, 2)
