"""Weight-normalised convolutions as the official DAC builds them (spec §9).

The official code wraps `nn.Conv1d` / `nn.ConvTranspose1d` in the legacy
`torch.nn.utils.weight_norm(module, dim=0)`: the weight is re-parametrised as
`W = g * V / ||V||`, the norm taken over every dim except dim 0 and with no epsilon. For a
`Conv1d` dim 0 is the output channels (`weight_g [C_out, 1, 1]`, `weight_v [C_out, C_in, k]`);
for a `ConvTranspose1d` it is the *input* channels (`weight_g [C_in, 1, 1]`,
`weight_v [C_in, C_out, k]`).

Here `W` is computed by `torch._weight_norm(v, g, 0)`, the very function the legacy hook (and
the newer parametrisation) call, so the folded weight and every output are bit-identical to the
official modules. Computing `W` in `forward` keeps `g` and `V` trainable; for inference
`fold_weight_norm` replaces the modules by plain convolutions once.

Checkpoints spell the two tensors either `weight_g` / `weight_v` (legacy API, the official
checkpoints) or `parametrizations.weight.original0` / `original1` (the newer API). Both load:
`normalise_weight_norm_keys` rewrites the newer spelling, and every module here applies the
same rewrite to its own keys when a state dict is loaded into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_NEW_TO_LEGACY = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def normalise_weight_norm_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a copy of `state_dict` with `X.parametrizations.weight.original{0,1}` renamed
    to `X.weight_g` / `X.weight_v`. Other keys and the order of keys are kept."""
    out = {}
    for key, value in state_dict.items():
        for new, legacy in _NEW_TO_LEGACY.items():
            if key == new or key.endswith("." + new):
                key = key[: len(key) - len(new)] + legacy
                break
        out[key] = value
    return out


def _accept_new_spelling(module, state_dict, prefix, *_):
    # Runs before the module reads its own keys, so a plain `load_state_dict` of either
    # spelling works, strict key matching included.
    for new, legacy in _NEW_TO_LEGACY.items():
        if prefix + new in state_dict:
            state_dict[prefix + legacy] = state_dict.pop(prefix + new)


class _WeightNormConv(nn.Module):
    """Shared parameters and folding of the two weight-normalised convolutions."""

    plain_type: type[nn.Module]

    def __init__(self, plain: nn.Module):
        super().__init__()
        # PyTorch's default initialisation of the plain layer, then the legacy split
        # g = ||W||, V = W (so the initial W is unchanged), as the official layers start.
        weight = plain.weight.detach()
        self.weight_g = nn.Parameter(torch.norm_except_dim(weight, 2, 0).clone())
        self.weight_v = nn.Parameter(weight.clone())
        self.bias = None if plain.bias is None else nn.Parameter(plain.bias.detach().clone())
        self.in_channels = plain.in_channels
        self.out_channels = plain.out_channels
        self.kernel_size = plain.kernel_size
        self.stride = plain.stride
        self.padding = plain.padding
        self.dilation = plain.dilation
        self.groups = plain.groups
        self.register_load_state_dict_pre_hook(_accept_new_spelling)

    def weight(self) -> torch.Tensor:
        """The effective weight `g * V / ||V||` (same shape as `weight_v`)."""
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def folded(self) -> nn.Module:
        """A plain convolution with the effective weight (parameters detached from g, V)."""
        plain = nn.utils.skip_init(
            self.plain_type,
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            device=self.weight_v.device,
            dtype=self.weight_v.dtype,
        )
        with torch.no_grad():
            plain.weight.copy_(self.weight())
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        plain.train(self.training)
        return plain

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )


class WNConv1d(_WeightNormConv):
    """Weight-normalised `Conv1d`: `[B, C_in, N]` -> `[B, C_out, N_out]`.

    State-dict keys: `weight_g [C_out, 1, 1]`, `weight_v [C_out, C_in/groups, k]`,
    `bias [C_out]`.
    """

    plain_type = nn.Conv1d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            nn.Conv1d(
                in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(
            x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class WNConvTranspose1d(_WeightNormConv):
    """Weight-normalised `ConvTranspose1d`: `[B, C_in, L]` -> `[B, C_out, L_out]`,
    `L_out = (L - 1) * stride - 2 * padding + dilation * (k - 1) + 1`.

    State-dict keys: `weight_g [C_in, 1, 1]` (dim 0 of a transposed weight is the input
    channels), `weight_v [C_in, C_out/groups, k]`, `bias [C_out]`.
    """

    plain_type = nn.ConvTranspose1d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            nn.ConvTranspose1d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                groups=groups,
                bias=bias,
                dilation=dilation,
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(
            x, self.weight(), self.bias, self.stride, self.padding, 0, self.groups, self.dilation
        )


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every `WNConv1d` / `WNConvTranspose1d` inside `module` by a plain
    `nn.Conv1d` / `nn.ConvTranspose1d` holding the effective weight (keys `weight`, `bias`).

    Outputs are unchanged bit for bit; the weight is no longer recomputed on every call.
    Returns `module` (or the folded replacement if `module` itself is weight-normalised).
    """
    if isinstance(module, _WeightNormConv):
        return module.folded()
    for name, child in module.named_children():
        if isinstance(child, _WeightNormConv):
            setattr(module, name, child.folded())
        else:
            fold_weight_norm(child)
    return module
