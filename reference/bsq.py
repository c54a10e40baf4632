"""Binary spherical quantisation (BSQ; FocalCodec, NeurIPS 2025, after Zhao et al. 2024).

A token x `[dim]` is projected to L dimensions, put on the unit sphere and quantised
coordinate by coordinate to the nearest corner of the inscribed hypercube:

    z = W_in x + b_in          u = z / max(|z|, 1e-12)          c_j = sign(u_j) / sqrt(L)

with sign(0) := +1. The codebook is implicit: the 2^L corners. Code index (our convention,
the FSQ one: coordinate 0 is the least significant digit):

    index = sum_j bit_j 2^j,   bit_j = 1 if u_j >= 0 else 0

so `c_j = (2 bit_j - 1) / sqrt(L)` decodes it. The dequantised corner is projected back
(`W_out c + b_out`). Gradients pass straight through the sign to u (no commitment loss:
every corner is as far from the sphere as every other).

Training adds an entropy loss on the soft assignment `q(c | u) ∝ exp(tau c.u)` over the
corners, which factorises over bits: `P(bit_j = 1 | u) = sigmoid(2 tau u_j / sqrt(L))`.

    loss = mean_tokens H(q(. | u))  -  gamma * H(mean_tokens q(. | u))

The first term (exact: the sum of the per-bit entropies) asks each token to commit to one
corner; the second asks the batch to use every corner. Its exact value needs all 2^L
corners, so it is taken factorised, `sum_j H(mean_tokens P(bit_j))`, as in the BSQ paper:
an upper bound that is maximal exactly when each bit is used half the time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

MAX_BITS = 31  # int32 codes


class BSQ(nn.Module):
    """Project `dim` -> L = `bits`, quantise to a sphere corner, index; dequantise and
    project back. Keys: `project_in.{weight,bias}` `[L, dim]`, `project_out.{weight,bias}`
    `[dim, L]` (always present, so every path runs the same arithmetic).

    `inverse_temperature` (tau) and `batch_entropy_weight` (gamma) shape `entropy_loss`.
    """

    def __init__(
        self,
        bits: int,
        dim: int,
        inverse_temperature: float = 10.0,
        batch_entropy_weight: float = 1.0,
    ):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise ValueError(f"BSQ bits must be an int in [1, {MAX_BITS}], got {bits!r}")
        self.bits = bits
        self.codebook_size = 2**bits
        # `1 / sqrt(L)` rounded to fp32 once; every path multiplies by these same bits.
        self.scale = float(torch.tensor(1.0 / math.sqrt(bits), dtype=torch.float32))
        self.inverse_temperature = float(inverse_temperature)
        self.batch_entropy_weight = float(batch_entropy_weight)
        self.register_buffer("powers", 2 ** torch.arange(bits, dtype=torch.int64), persistent=False)
        self.project_in = nn.Linear(dim, bits)
        self.project_out = nn.Linear(bits, dim)

    def sphere(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(z, u)`: the projection `[..., L]` (float32) and its point on the unit sphere."""
        z = self.project_in(x).float()
        return z, F.normalize(z, dim=-1, eps=1e-12)

    def quantize(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Corner `[..., L]` with values `+-1/sqrt(L)` and the gradient of u.

        The signs are read from z: u = z / |z| has the same signs, but the division could
        underflow a tiny negative coordinate to -0 (which compares as >= 0). `u - u.detach()`
        is exactly 0, so the value is exactly the corner (`u + (c - u).detach()` would round).
        """
        corner = torch.where(z >= 0, self.scale, -self.scale)
        return corner + (u - u.detach())

    def codes_to_indices(self, corner: torch.Tensor) -> torch.Tensor:
        """`[..., L]` corners -> `[...]` int32 indices (bit 0, coordinate 0, least significant)."""
        return ((corner > 0).long() * self.powers).sum(dim=-1).to(torch.int32)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """`[...]` integer indices -> `[..., L]` corners (float32)."""
        bits = (indices.long().unsqueeze(-1) // self.powers) % 2
        return torch.where(bits == 1, self.scale, -self.scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: `[B, G, dim]` -> (dequantised `[B, G, dim]`, indices `[B, G]` int32)."""
        z, u = self.sphere(x)
        corner = self.quantize(z, u)
        return self.project_out(corner.to(x.dtype)), self.codes_to_indices(corner)

    def from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices `[B, G]` -> `[B, G, dim]`."""
        return self.project_out(self.indices_to_codes(indices).to(self.project_out.weight.dtype))

    def bit_probabilities(self, u: torch.Tensor) -> torch.Tensor:
        """`P(bit_j = 1 | u)` `[..., L]` under `q(c | u) ∝ exp(tau c.u)`."""
        return torch.sigmoid(2 * self.inverse_temperature * self.scale * u)

    def entropy_loss(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Entropy loss (module docstring) of tokens x `[B, G, dim]`; `valid` `[B, G]` bool
        (None: all) selects the tokens that count. Returns a scalar, in nats."""
        _, u = self.sphere(x)
        logits = 2 * self.inverse_temperature * self.scale * u
        if valid is not None:
            logits = logits[valid]
        logits = logits.reshape(-1, self.bits)
        p = torch.sigmoid(logits)
        # H(sigmoid(l)) = p softplus(-l) + (1 - p) softplus(l): finite where p saturates.
        per_token = (p * F.softplus(-logits) + (1 - p) * F.softplus(logits)).sum(-1)
        mean_p = p.mean(0)
        usage = (torch.special.entr(mean_p) + torch.special.entr(1 - mean_p)).sum()
        return per_token.mean() - self.batch_entropy_weight * usage


class BSQWrapper(nn.Module):
    """Channels-first BSQ with FSQWrapper's interface, for FlexiCodec's semantic stream
    (`semantic_quantizer: bsq`; keys `semantic_vq.bsq.*`)."""

    def __init__(self, input_dim: int, bits: int, **entropy_options):
        super().__init__()
        self.bsq = BSQ(bits, input_dim, **entropy_options)

    @property
    def codebook_size(self) -> int:
        return self.bsq.codebook_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: `[B, dim, G]` -> (dequantised `[B, dim, G]`, codes `[B, 1, G]` int32)."""
        quantized, indices = self.bsq(rearrange(x, "b d g -> b g d"))
        return rearrange(quantized, "b g d -> b d g"), indices.unsqueeze(1)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: `[B, 1, G]` -> `[B, dim, G]`."""
        return rearrange(self.bsq.from_indices(codes[:, 0]), "b g d -> b d g")

    def entropy_loss(self, x: torch.Tensor, num_groups: torch.Tensor | None = None):
        """Entropy loss of x `[B, dim, G]` over each item's first `num_groups[b]` tokens."""
        valid = None
        if num_groups is not None:
            g = torch.arange(x.shape[2], device=x.device)
            valid = g.view(1, -1) < num_groups.view(-1, 1)
        return self.bsq.entropy_loss(rearrange(x, "b d g -> b g d"), valid)
