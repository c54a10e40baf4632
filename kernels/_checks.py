"""Input checks that the fused ops share, in their entry points and their Triton launchers.

Each message names the argument, what was expected and what was given; the tests match them.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""The floating-point dtypes every fused op takes (its torch path and its kernel)."""


def check_float_dtype(name: str, t: torch.Tensor) -> None:
    """Raise `TypeError` unless tensor `t` has one of `FLOAT_DTYPES`."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_inner_contiguous(**tensors: torch.Tensor | None) -> None:
    """Raise `ValueError` unless each tensor's last dimension has stride 1, as the kernels
    address it (a last dimension of size 1 has no stride that matters); None is skipped."""
    for name, t in tensors.items():
        if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(
                f"{name} must have a contiguous last dimension (stride 1) for the "
                f"Triton kernel, got strides {list(t.stride())}: call .contiguous()"
            )
