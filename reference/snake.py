"""Snake activation (spec §9): `y = x + sin(alpha * x)^2 / (alpha + 1e-9)`."""

import torch
from torch import nn


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake with one learned frequency per channel.

    x: `[B, C, N]`; alpha: `[1, C, 1]`. Returns `[B, C, N]`.
    The operation order (reciprocal, then multiply) is the official one, so results are
    bit-identical to it in fp32.
    """
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class Snake1d(nn.Module):
    """Snake over `[B, C, N]` with parameter `alpha` `[1, C, 1]` (checkpoint key `alpha`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake(x, self.alpha)
