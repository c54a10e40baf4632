"""Binary spherical quantisation, fused: project-in, normalise, sign, index, dequantise,
project-out (FocalCodec's BSQ; reference `reference/bsq.py`).

Per token x `[dim]` and bit j < L (L <= 31 bits, s = fp32(1 / sqrt(L))):

    z_j    = sum_k x_k W_in[j, k] + b_in[j]
    u      = z / max(|z|, 1e-12)                  (the point on the unit sphere)
    bit_j  = 1 if u_j >= 0 else 0                 (sign(0) := +1)
    c_j    = +s if bit_j else -s
    index  = sum_j bit_j 2^j                      (bit 0, coordinate 0, least significant)
    out_d  = sum_j c_j W_out[d, j] + b_out[d]

and `bsq_decode`: `bit_j = (index >> j) & 1`, then the same `c` and project-out.

Normalising scales z by a positive number, so it changes no sign: the kernel takes the bits
from z itself, as the reference does (a division could underflow a tiny negative
coordinate to -0, which compares as >= 0). The normalised point only matters for gradients
and the entropy loss, which are the reference's business (this op is inference only).

Numerics: the torch path is the reference's arithmetic (bit-identical codes and outputs in
fp32). The Triton path reduces project-in in another order, so a coordinate within ~1e-6
of 0 may take the other sign (design §4); away from such near-ties the codes are equal and
the dequantised vector is identical (both are `+-s`, the same fp32 constant); project-out
differs from the reference by reduction rounding only.

Layout: x `[B, G, dim]`, W_in `[L, dim]`, b_in `[L]`, W_out `[dim, L]`, b_out `[dim]`, all
with a contiguous last dimension; out `[B, G, dim]` in x's dtype, codes `[B, G]` int32.
Decode: codes `[B, G]` int32/int64 in `[0, 2^L)` (not checked: that would synchronise with
the device; higher bits are ignored), out in W_out's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_inner_contiguous
from ._triton import select_backend, tl, triton
from .fsq import _check_tensor, _project_out

MAX_BITS = 31  # int32 codes
BLOCK_G = 16
BLOCK_D = 64
NUM_WARPS = 4


def _block_k(np_: int) -> int:
    """Project-in chunk: keeps the `[BLOCK_G, NP, BLOCK_K]` product tile at 8192 values
    (FSQ's tile at 8 columns), so wider codes do not spill."""
    return max(16, 512 // np_)


def _scale(bits: int) -> float:
    """`1 / sqrt(L)` rounded to fp32 once, the value every path multiplies by."""
    return float(torch.tensor(1.0 / math.sqrt(bits), dtype=torch.float32))


@triton.jit
def _bsq_kernel(
    x_ptr,
    w_in_ptr,
    b_in_ptr,
    w_out_ptr,
    b_out_ptr,
    out_ptr,
    codes_ptr,
    stride_xb,
    stride_xg,
    stride_wi,
    stride_wo,
    stride_ob,
    stride_og,
    stride_cb,
    G,
    DIM,
    N,
    scale,
    NP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Quantise tokens `[g0, g0 + BLOCK_G)` of item `b`.

    Project-in accumulates `[BLOCK_G, NP, BLOCK_K]` products over dim (L is too narrow for
    `tl.dot`); padding columns `j >= N` carry no bit and a zero code. Grid
    `(cdiv(G, BLOCK_G), B)`.
    """
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gm = g < G
    j = tl.arange(0, NP)
    jm = j < N
    x_rows = x_ptr + b * stride_xb + g.to(tl.int64)[:, None] * stride_xg
    acc = tl.zeros([BLOCK_G, NP], dtype=tl.float32)
    for k0 in range(0, DIM, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < DIM
        xt = tl.load(x_rows + k[None, :], mask=gm[:, None] & km[None, :], other=0.0)
        wt = tl.load(
            w_in_ptr + j[:, None] * stride_wi + k[None, :],
            mask=jm[:, None] & km[None, :],
            other=0.0,
        )
        acc += tl.sum(xt.to(tl.float32)[:, None, :] * wt.to(tl.float32)[None, :, :], axis=2)
    z = acc + tl.load(b_in_ptr + j, mask=jm, other=0.0).to(tl.float32)[None, :]
    bit = (z >= 0.0) & jm[None, :]
    index = tl.sum(tl.where(bit, 1 << j[None, :], 0), axis=1)
    tl.store(codes_ptr + b * stride_cb + g, index, mask=gm)
    # Padding columns meet zero W_out columns in `_project_out`: their value is irrelevant.
    c = tl.where(bit, scale, -scale)
    out_rows = out_ptr + b * stride_ob + g.to(tl.int64)[:, None] * stride_og
    _project_out(c, w_out_ptr, b_out_ptr, out_rows, gm, j, jm, stride_wo, DIM, BLOCK_D)


@triton.jit
def _bsq_decode_kernel(
    codes_ptr,
    w_out_ptr,
    b_out_ptr,
    out_ptr,
    stride_cb,
    stride_wo,
    stride_ob,
    stride_og,
    G,
    DIM,
    N,
    scale,
    NP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Dequantise and project out tokens `[g0, g0 + BLOCK_G)` of item `b`.
    Grid `(cdiv(G, BLOCK_G), B)`."""
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gm = g < G
    j = tl.arange(0, NP)
    jm = j < N
    index = tl.load(codes_ptr + b * stride_cb + g, mask=gm, other=0).to(tl.int64)
    bit = ((index[:, None] >> j[None, :].to(tl.int64)) & 1) != 0
    # Padding columns meet zero W_out columns in `_project_out`: their value is irrelevant.
    c = tl.where(bit, scale, -scale)
    out_rows = out_ptr + b * stride_ob + g.to(tl.int64)[:, None] * stride_og
    _project_out(c, w_out_ptr, b_out_ptr, out_rows, gm, j, jm, stride_wo, DIM, BLOCK_D)


# ----------------------------------------------------------------------------- validation


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [1, {MAX_BITS}], got {bits!r}")
    return bits


def _check_out_proj(w_out, b_out, dim: int, bits: int, device) -> None:
    _check_tensor("w_out", w_out, (dim, bits), device)
    _check_tensor("b_out", b_out, (dim,), device)


# ----------------------------------------------------------------------------- torch paths


def bsq_torch(x, w_in, b_in, w_out, b_out, bits: int):
    """Torch path: the reference's expressions in fp32. Returns `(out, codes int32)`."""
    scale = _scale(bits)
    z = F.linear(x.float(), w_in.float(), b_in.float())
    positive = z >= 0
    codes = (positive.int() << torch.arange(bits, device=x.device, dtype=torch.int32)).sum(-1)
    c = torch.where(positive, scale, -scale)
    return F.linear(c, w_out.float(), b_out.float()).to(x.dtype), codes.int()


def bsq_decode_torch(codes, w_out, b_out, bits: int):
    """Torch path of the decode: the reference's `indices_to_codes` and project-out."""
    scale = _scale(bits)
    shifts = torch.arange(bits, device=codes.device, dtype=torch.int64)
    positive = (codes.long().unsqueeze(-1) >> shifts) & 1 == 1
    c = torch.where(positive, scale, -scale)
    return F.linear(c, w_out.float(), b_out.float()).to(w_out.dtype)


# ----------------------------------------------------------------------------- launchers


def _launch(x, w_in, b_in, w_out, b_out, bits):
    check_inner_contiguous(x=x, w_in=w_in, w_out=w_out)
    b_in, b_out = b_in.contiguous(), b_out.contiguous()  # read as b_ptr + j
    batch, groups, dim = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    codes = torch.empty(batch, groups, dtype=torch.int32, device=x.device)
    if codes.numel() == 0:
        return out, codes
    np_ = triton.next_power_of_2(bits)
    _bsq_kernel[(triton.cdiv(groups, BLOCK_G), batch)](
        x,
        w_in,
        b_in,
        w_out,
        b_out,
        out,
        codes,
        x.stride(0),
        x.stride(1),
        w_in.stride(0),
        w_out.stride(0),
        out.stride(0),
        out.stride(1),
        codes.stride(0),
        groups,
        dim,
        bits,
        _scale(bits),
        NP=np_,
        BLOCK_G=BLOCK_G,
        BLOCK_K=_block_k(np_),
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
        enable_fp_fusion=False,
    )
    return out, codes


def _launch_decode(codes, w_out, b_out, bits):
    check_inner_contiguous(w_out=w_out)
    codes, b_out = codes.contiguous(), b_out.contiguous()  # read with unit inner stride
    batch, groups = codes.shape
    dim = w_out.shape[0]
    out = torch.empty(batch, groups, dim, dtype=w_out.dtype, device=codes.device)
    if out.numel() == 0:
        return out
    _bsq_decode_kernel[(triton.cdiv(groups, BLOCK_G), batch)](
        codes,
        w_out,
        b_out,
        out,
        codes.stride(0),
        w_out.stride(0),
        out.stride(0),
        out.stride(1),
        groups,
        dim,
        bits,
        _scale(bits),
        NP=triton.next_power_of_2(bits),
        BLOCK_G=BLOCK_G,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
        enable_fp_fusion=False,
    )
    return out


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("flexicodec_fast::bsq", mutates_args=())
def _bsq_op(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    bits: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if select_backend(backend, x.device) == "triton":
        return _launch(x, w_in, b_in, w_out, b_out, bits)
    return bsq_torch(x, w_in, b_in, w_out, b_out, bits)


@_bsq_op.register_fake
def _(x, w_in, b_in, w_out, b_out, bits, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape[:2], dtype=torch.int32)


@torch.library.custom_op("flexicodec_fast::bsq_decode", mutates_args=())
def _bsq_decode_op(
    codes: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor, bits: int, backend: str
) -> torch.Tensor:
    if select_backend(backend, codes.device) == "triton":
        return _launch_decode(codes, w_out, b_out, bits)
    return bsq_decode_torch(codes, w_out, b_out, bits)


@_bsq_decode_op.register_fake
def _(codes, w_out, b_out, bits, backend):
    return w_out.new_empty(*codes.shape, w_out.shape[0])


# ----------------------------------------------------------------------------- public API


def bsq(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise x `[B, G, dim]`: returns (dequantised and projected `[B, G, dim]` in x's
    dtype, codes `[B, G]` int32). W_in `[L, dim]`, b_in `[L]`, W_out `[dim, L]`, b_out
    `[dim]` (the reference's `project_in` / `project_out`), L = W_in's rows <= 31 bits.
    Inference only (no gradient). Registered as `torch.ops.flexicodec_fast.bsq`."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(
            f"x must be a [B, G, dim] tensor, got {getattr(x, 'shape', type(x).__name__)}"
        )
    _check_tensor("x", x, x.shape)
    if not isinstance(w_in, torch.Tensor) or w_in.dim() != 2:
        raise ValueError(
            f"w_in must be a [L, dim] tensor, got {getattr(w_in, 'shape', type(w_in).__name__)}"
        )
    dim, bits = x.shape[2], _check_bits(w_in.shape[0])
    _check_tensor("w_in", w_in, (bits, dim), x.device)
    _check_tensor("b_in", b_in, (bits,), x.device)
    _check_out_proj(w_out, b_out, dim, bits, x.device)
    select_backend(backend, x.device)
    return _bsq_op(x, w_in, b_in, w_out, b_out, bits, backend)


def bsq_decode(
    codes: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Dequantise codes `[B, G]` (int32/int64) and project out: `[B, G, dim]` in W_out's
    dtype (W_out `[dim, L]` gives L). Registered as `torch.ops.flexicodec_fast.bsq_decode`."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"codes must be int32 or int64, got {codes.dtype}")
    if codes.dim() != 2:
        raise ValueError(f"codes must be [B, G], got shape {list(codes.shape)}")
    if not isinstance(w_out, torch.Tensor) or w_out.dim() != 2:
        raise ValueError(
            f"w_out must be a [dim, L] tensor, got {getattr(w_out, 'shape', type(w_out).__name__)}"
        )
    bits = _check_bits(w_out.shape[1])
    _check_out_proj(w_out, b_out, w_out.shape[0], bits, codes.device)
    select_backend(backend, codes.device)
    return _bsq_decode_op(codes, w_out, b_out, bits, backend)
