"""Finite scalar quantisation in the official FlexiCodec variant (spec §7.2).

Differences from the original FSQ paper code that change codes: the shift that centres even
level counts is `tan(offset / half_l)` (not `atanh`), the bound is scaled by `(1 - 1e-3)`,
rounding is half-to-even, and index digit 0 is the least significant.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

BOUND_EPS = 1e-3


class FSQ(nn.Module):
    """Project `dim` -> len(levels), bound, round, index; dequantise and project back.

    Checkpoint keys: `project_in.{weight,bias}` `[n, dim]`, `project_out.{weight,bias}`
    `[dim, n]` (absent, as in the official code, when `dim == len(levels)`).
    """

    def __init__(self, levels: list[int], dim: int):
        super().__init__()
        if not levels or any(int(v) < 2 for v in levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {levels!r}")
        n = len(levels)
        levels_t = torch.tensor(levels, dtype=torch.int32)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.int64), dim=0)
        if int(basis[-1]) * levels[-1] > 2**31:
            raise ValueError(f"FSQ codebook of levels {levels!r} does not fit int32 codes")
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", basis.to(torch.int32), persistent=False)
        self.codebook_size = int(basis[-1]) * levels[-1]
        self.project_in = nn.Linear(dim, n) if dim != n else nn.Identity()
        self.project_out = nn.Linear(n, dim) if dim != n else nn.Identity()

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """`tanh(z + shift) * half_l - offset`, per dimension; `z` `[..., n]` float32."""
        half_l = (self.levels - 1) * (1 - BOUND_EPS) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).tan()
        return (z + shift).tanh() * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Rounded and normalised codes `[..., n]` with a straight-through gradient."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / (self.levels // 2)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """`[..., n]` normalised codes -> `[...]` int32 indices (digit 0 least significant)."""
        half_width = self.levels // 2
        digits = codes * half_width + half_width
        return (digits * self.basis).sum(dim=-1).to(torch.int32)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """`[...]` integer indices -> `[..., n]` normalised codes."""
        half_width = self.levels // 2
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        return (digits - half_width) / half_width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: `[B, G, dim]` -> (dequantised `[B, G, dim]`, indices `[B, G]` int32)."""
        codes = self.quantize(self.project_in(x).float())
        return self.project_out(codes.to(x.dtype)), self.codes_to_indices(codes)

    def from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices `[B, G]` -> `[B, G, dim]`."""
        return self.project_out(self.indices_to_codes(indices))


class FSQWrapper(nn.Module):
    """Channels-first wrapper with the official module path (`semantic_vq.fsq.*`)."""

    def __init__(self, input_dim: int, levels: list[int]):
        super().__init__()
        self.fsq = FSQ(levels, input_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: `[B, dim, G]` -> (dequantised `[B, dim, G]`, codes `[B, 1, G]` int32)."""
        quantized, indices = self.fsq(rearrange(x, "b d g -> b g d"))
        return rearrange(quantized, "b g d -> b d g"), indices.unsqueeze(1)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: `[B, 1, G]` -> `[B, dim, G]`."""
        return rearrange(self.fsq.from_indices(codes[:, 0]), "b g d -> b d g")
