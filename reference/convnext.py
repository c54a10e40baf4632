"""ConvNeXt block over token sequences (spec §7.1)."""

import torch
import torch.nn.functional as F
from torch import nn


class ConvNeXtBlock(nn.Module):
    """Depthwise k=7 conv, LayerNorm(eps 1e-6), Linear-GELU-Linear, residual.

    Input and output `[B, dim, L]`. Non-causal blocks pad 3 zeros on each side; causal ones
    pad 6 on the left. There is no layer scale in FlexiCodec's blocks.
    """

    def __init__(self, dim: int, intermediate_dim: int = 2048, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=0 if causal else 3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        if self.causal:
            x = F.pad(x, (6, 0))
        x = self.dwconv(x).transpose(1, 2)
        x = self.pwconv2(F.gelu(self.pwconv1(self.norm(x))))
        return residual + x.transpose(1, 2)
