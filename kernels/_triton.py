"""Optional Triton import, and the backend rule every fused op shares.

Triton is an optional extra (`pip install flexicodec-fast[kernels]`). Without it the kernel
modules must still import, so their torch paths work: `triton.jit` then returns the function
unchanged and `tl.constexpr` is a plain marker, enough to evaluate the kernels' signatures.

Backend rule (`select_backend`): `"auto"` runs Triton on CUDA tensors and the torch path on
CPU tensors; `"triton"` forces the Triton kernel (on CPU tensors only under the interpreter,
`TRITON_INTERPRET=1` set before `triton` is imported, which is how the tests run kernels);
`"torch"` forces the torch path.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the torch paths need nothing from Triton
    HAS_TRITON = False

    class _MissingTriton:
        """Stand-in for `triton`: `@triton.jit` leaves the function as it is."""

        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(0, int(n) - 1).bit_length()

    class _MissingLanguage:
        """Stand-in for `triton.language`: only what kernel signatures evaluate at import."""

        constexpr = object

    triton = _MissingTriton()
    tl = _MissingLanguage()

BACKENDS = ("auto", "triton", "torch")


def interpreting() -> bool:
    """True when Triton kernels run on the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def select_backend(backend: str, device: torch.device) -> str:
    """Resolve `backend` for tensors on `device` to `"triton"` or `"torch"`.

    Raises `ValueError` for an unknown name, or when Triton is forced where it cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and HAS_TRITON else "torch"
    if not HAS_TRITON:
        raise ValueError("backend='triton' needs the `triton` package, which is not installed")
    if device.type != "cuda" and not interpreting():
        raise ValueError(
            f"backend='triton' on a {device.type} tensor needs the Triton interpreter: "
            "set TRITON_INTERPRET=1 before importing triton, or use backend='auto'/'torch'"
        )
    return "triton"
