"""Focal modulation blocks and the focal compressor / decompressor (FocalCodec, NeurIPS 2025,
after FocalNet, Yang et al. 2022), in one dimension (time).

Focal modulation of frames x `[T, C]` with L focal levels:

    q, z^0, g = split(W_f x + b_f)           q, z^0 `[T, C]`, gates g `[T, L + 1]`
    z^l = GELU(DWConv_{k_l}(z^{l-1}))        l = 1..L, depth-wise, k_l = window + factor (l-1)
    z^{L+1} = GELU(mean_t z^L)               global context, the same for every frame
    y = q ⊙ h(sum_{l=1..L+1} z^l ⊙ g^l)      h linear
    out = W_p y + b_p                        output projection

Each level sees a wider neighbourhood than the last (kernels 3, 5, 7, ... with the defaults),
and the gates choose, per frame, how much of each scale modulates the query q. A focal block
is pre-norm and residual, like a transformer layer with modulation in place of attention:

    x = x + s1 ⊙ FocalModulation(LN(x));   x = x + s2 ⊙ W_2 GELU(W_1 LN(x))

The compressor is a linear down-projection, Snake and focal blocks; the decompressor mirrors
it (focal blocks, Snake, linear up-projection). Both take and give channels-first `[B, C, T]`
like the rest of the model, and sit around any quantiser (BSQ in FocalCodec).

Batches carry per-item lengths: padded frames are zeroed before every depth-wise convolution
(the zeros a single item is padded with) and left out of the global mean, so an item's
output equals its single-item output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .snake import Snake1d
from .transformer import LayerScale


def _valid(lengths: torch.Tensor | None, frames: int, device) -> torch.Tensor | None:
    """`[B, T, 1]` float mask of valid frames, or None when every frame is valid."""
    if lengths is None:
        return None
    t = torch.arange(frames, device=device)
    return (t.view(1, -1) < lengths.view(-1, 1)).unsqueeze(-1).float()


class FocalModulation(nn.Module):
    """Focal modulation on channels-last frames `[B, T, C]` (formula in the module docstring).

    Keys: `f` (Linear C -> 2C + L + 1), `focal_layers.{l}` (depth-wise Conv1d, no bias),
    `h` (Linear C -> C), `proj` (Linear C -> C).
    """

    def __init__(
        self, dim: int, focal_level: int = 2, focal_window: int = 3, focal_factor: int = 2
    ):
        super().__init__()
        if focal_level < 1 or focal_window < 1 or focal_window % 2 == 0 or focal_factor % 2:
            # Odd kernels keep the depth-wise convolutions centred on their frame.
            raise ValueError(
                f"focal_level must be >= 1, focal_window odd and focal_factor even, got "
                f"{focal_level}, {focal_window}, {focal_factor}"
            )
        self.dim = dim
        self.focal_level = focal_level
        self.kernel_sizes = [focal_window + focal_factor * level for level in range(focal_level)]
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.focal_layers = nn.ModuleList(
            nn.Conv1d(dim, dim, k, padding=k // 2, groups=dim, bias=False)
            for k in self.kernel_sizes
        )
        self.h = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x `[B, T, C]`, lengths `[B]` or None -> `[B, T, C]`."""
        valid = _valid(lengths, x.shape[1], x.device)
        q, ctx, gates = torch.split(self.f(x), [self.dim, self.dim, self.focal_level + 1], -1)
        modulator = 0
        for level, conv in enumerate(self.focal_layers):
            if valid is not None:
                ctx = ctx * valid
            ctx = F.gelu(conv(ctx.transpose(1, 2)).transpose(1, 2))
            modulator = modulator + ctx * gates[..., level : level + 1]
        if valid is None:
            mean = ctx.mean(1, keepdim=True)
        else:
            mean = (ctx * valid).sum(1, keepdim=True) / lengths.view(-1, 1, 1).clamp(min=1)
        modulator = modulator + F.gelu(mean) * gates[..., self.focal_level :]
        return self.proj(q * self.h(modulator))


class FocalBlock(nn.Module):
    """Pre-norm residual block: focal modulation, then an exact-GELU MLP (`mlp_ratio` x C),
    each branch scaled by a LayerScale. `[B, T, C]` -> `[B, T, C]`."""

    def __init__(
        self,
        dim: int,
        focal_level: int = 2,
        focal_window: int = 3,
        focal_factor: int = 2,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, focal_level, focal_window, focal_factor)
        self.layer_scale_1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.layer_scale_2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.layer_scale_1(self.modulation(self.norm1(x), lengths))
        return x + self.layer_scale_2(self.mlp(self.norm2(x)))


class _FocalStack(nn.Module):
    def __init__(self, dim: int, num_blocks: int, **block_options):
        super().__init__()
        self.blocks = nn.ModuleList(FocalBlock(dim, **block_options) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """x `[B, T, C]`; padded frames are zero on return."""
        valid = _valid(lengths, x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, lengths)
        return x if valid is None else x * valid


class FocalCompressor(nn.Module):
    """`[B, in_dim, T]` -> `[B, out_dim, T]`: Linear down-projection, Snake, focal blocks.
    Keys: `proj`, `snake.alpha`, `stack.blocks.{i}.*`. `block_options`: FocalBlock's."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int = 2, **block_options):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.snake = Snake1d(out_dim)
        self.stack = _FocalStack(out_dim, num_blocks, **block_options)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = self.snake(self.proj(x.transpose(1, 2)).transpose(1, 2))
        return self.stack(h.transpose(1, 2), lengths).transpose(1, 2)


class FocalDecompressor(nn.Module):
    """`[B, in_dim, T]` -> `[B, out_dim, T]`, the compressor's mirror: focal blocks, Snake,
    Linear up-projection. Keys: `stack.blocks.{i}.*`, `snake.alpha`, `proj`."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int = 2, **block_options):
        super().__init__()
        self.stack = _FocalStack(in_dim, num_blocks, **block_options)
        self.snake = Snake1d(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = self.snake(self.stack(x.transpose(1, 2), lengths).transpose(1, 2))
        out = self.proj(h.transpose(1, 2))
        valid = _valid(lengths, out.shape[1], out.device)
        return (out if valid is None else out * valid).transpose(1, 2)
