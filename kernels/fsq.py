"""Finite scalar quantisation, fused: project-in, bound, round, index, dequantise,
project-out (spec §7.2, design §3).

Per token x `[dim]` and level j (n = len(levels) <= 8 levels L_j):

    z_j     = sum_k x_k W_in[j, k] + b_in[j]
    half_j  = (L_j - 1) (1 - 1e-3) / 2,   off_j = 0.5 if L_j even else 0,
    shift_j = tan(off_j / half_j)
    b_j     = tanh(z_j + shift_j) half_j - off_j
    r_j     = round_half_even(b_j),       c_j = r_j / (L_j // 2)
    index   = int32(sum_j fp32((c_j (L_j // 2) + L_j // 2) basis_j)),   basis_j = prod_{i<j} L_i
    out_d   = sum_j c_j W_out[d, j] + b_out[d]

and `fsq_decode`: `digit_j = (index // basis_j) % L_j`, `c_j = (digit_j - L_j//2) / (L_j//2)`,
then the same project-out.

The index is computed exactly as the reference computes it (fp32 digits, products and a sum
in level order, then truncation), so it equals the reference's even for level counts whose
digits are not exact in fp32 (e.g. L = 26, where the official indices do not round-trip).
The per-level constants (`shift`, `half`, `off`, ...) are computed once on the host with the
reference's own tensor expressions, so they carry the same bits.

Numerics: the torch path is the reference's arithmetic (bit-identical to `reference.fsq.FSQ`
for fp32). The Triton path computes in fp32: project-in is a reduction in another order and
`tanh` is built from `exp` (libdevice is unavailable under the interpreter), so a bounded
value within ~1e-6 * half_j of a half-integer may round the other way (design §4); away from
such near-ties the codes are equal and the dequantised vector is the same, and project-out
differs from the reference by reduction rounding only. Rounding is the
`(b + 1.5 * 2**23) - 1.5 * 2**23` trick (round-half-to-even for |b| < 2**22).

Layout: x `[B, G, dim]`, W_in `[n, dim]`, b_in `[n]`, W_out `[dim, n]`, b_out `[dim]`, all with
a contiguous last dimension; out `[B, G, dim]` in x's dtype, codes `[B, G]` int32. Decode:
codes `[B, G]` int32/int64 in `[0, prod L)` (not checked: that would synchronise with the
device; out-of-range values give unspecified but memory-safe output), out in W_out's dtype.
The project-in/out weights must exist (`dim != n`; the official model has dim 768, n 5).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._checks import check_float_dtype, check_inner_contiguous
from ._triton import select_backend, tl, triton

BOUND_EPS = 1e-3
MAX_LEVELS = 8
BLOCK_G = 16
BLOCK_K = 64
BLOCK_D = 64
NUM_WARPS = 4


@triton.jit
def _tanh(x):
    """tanh from exp, odd-symmetric: `(1 - e) / (1 + e)` with `e = exp(-2|x|)` never
    overflows and keeps full absolute accuracy (~1e-7) where tanh saturates."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = tl.math.div_rn(1.0 - e, 1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _project_out(
    c, w_out_ptr, b_out_ptr, out_rows, row_mask, j, jm, stride_wo, DIM, BLOCK_D: tl.constexpr
):
    """`out[g, d] = sum_j c[g, j] W_out[d, j] + b_out[d]`, stored to `out_rows + d`."""
    for d0 in range(0, DIM, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < DIM
        w = tl.load(
            w_out_ptr + d[None, :] * stride_wo + j[:, None],
            mask=jm[:, None] & dm[None, :],
            other=0.0,
        ).to(tl.float32)
        bias = tl.load(b_out_ptr + d, mask=dm, other=0.0).to(tl.float32)
        o = tl.sum(c[:, :, None] * w[None, :, :], axis=1) + bias[None, :]
        tl.store(
            out_rows + d[None, :],
            o.to(out_rows.dtype.element_ty),
            mask=row_mask[:, None] & dm[None, :],
        )


@triton.jit
def _fsq_kernel(
    x_ptr,
    w_in_ptr,
    b_in_ptr,
    w_out_ptr,
    b_out_ptr,
    ftab_ptr,
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
    NP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Quantise tokens `[g0, g0 + BLOCK_G)` of item `b`.

    ftab `[5, NP]` fp32 rows: shift, half, off, L//2, basis (padding columns 0, 0, 0, 1, 0).
    Project-in accumulates `[BLOCK_G, NP, BLOCK_K]` products over dim in `BLOCK_K` chunks
    (n <= 8 is too narrow for `tl.dot`); project-out walks dim in `BLOCK_D` chunks.
    Grid `(cdiv(G, BLOCK_G), B)`.
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
    shift = tl.load(ftab_ptr + j)[None, :]
    half = tl.load(ftab_ptr + NP + j)[None, :]
    off = tl.load(ftab_ptr + 2 * NP + j)[None, :]
    width = tl.load(ftab_ptr + 3 * NP + j)[None, :]
    basis = tl.load(ftab_ptr + 4 * NP + j)[None, :]
    bounded = _tanh(z + shift) * half - off
    rounded = (bounded + 12582912.0) - 12582912.0  # 1.5 * 2**23: round half to even
    c = tl.math.div_rn(rounded, width)
    # The reference's index arithmetic: fp32 digits times basis, summed in level order.
    term = (c * width + width) * basis
    index = tl.zeros([BLOCK_G], dtype=tl.float32)
    for jj in tl.static_range(NP):
        index += tl.sum(tl.where(j[None, :] == jj, term, 0.0), axis=1)
    tl.store(codes_ptr + b * stride_cb + g, index.to(tl.int32), mask=gm)
    out_rows = out_ptr + b * stride_ob + g.to(tl.int64)[:, None] * stride_og
    _project_out(c, w_out_ptr, b_out_ptr, out_rows, gm, j, jm, stride_wo, DIM, BLOCK_D)


@triton.jit
def _fsq_decode_kernel(
    codes_ptr,
    w_out_ptr,
    b_out_ptr,
    itab_ptr,
    out_ptr,
    stride_cb,
    stride_wo,
    stride_ob,
    stride_og,
    G,
    DIM,
    N,
    NP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Dequantise and project out tokens `[g0, g0 + BLOCK_G)` of item `b`.

    itab `[3, NP]` int64 rows: L, L//2, basis (padding columns 1, 1, 1, and masked).
    Grid `(cdiv(G, BLOCK_G), B)`.
    """
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gm = g < G
    j = tl.arange(0, NP)
    jm = j < N
    index = tl.load(codes_ptr + b * stride_cb + g, mask=gm, other=0).to(tl.int64)
    levels = tl.load(itab_ptr + j)[None, :]
    width = tl.load(itab_ptr + NP + j)[None, :]
    basis = tl.load(itab_ptr + 2 * NP + j)[None, :]
    digit = (index[:, None] // basis) % levels
    c = tl.math.div_rn((digit - width).to(tl.float32), width.to(tl.float32))
    c = tl.where(jm[None, :], c, 0.0)
    out_rows = out_ptr + b * stride_ob + g.to(tl.int64)[:, None] * stride_og
    _project_out(c, w_out_ptr, b_out_ptr, out_rows, gm, j, jm, stride_wo, DIM, BLOCK_D)


# ----------------------------------------------------------------------------- constants


@functools.lru_cache(maxsize=64)
def _tables(levels: tuple[int, ...], device: torch.device):
    """Per-level constants, padded to `NP = next_pow2(n)` columns, cached per device so a
    call never copies from the host (CUDA-graph friendly).

    Returns `(ftab [5, NP] fp32, itab [3, NP] int64)`. The float rows use the reference's
    expressions on an int32 levels tensor, so each constant has the reference's bits.
    """
    n = len(levels)
    pad = triton.next_power_of_2(n) - n
    lv = torch.tensor(levels, dtype=torch.int32)
    half = (lv - 1) * (1 - BOUND_EPS) / 2
    off = torch.where(lv % 2 == 0, 0.5, 0.0)
    shift = (off / half).tan()
    width = lv // 2
    basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.int64), dim=0)
    ftab = torch.stack(
        [
            F.pad(shift, (0, pad)),
            F.pad(half, (0, pad)),
            F.pad(off, (0, pad)),
            F.pad(width.float(), (0, pad), value=1.0),
            F.pad(basis.float(), (0, pad)),
        ]
    )
    itab = torch.stack(
        [
            F.pad(lv.long(), (0, pad), value=1),
            F.pad(width.long(), (0, pad), value=1),
            F.pad(basis, (0, pad), value=1),
        ]
    )
    return ftab.to(device), itab.to(device)


def _check_levels(levels) -> tuple[int, ...]:
    if isinstance(levels, torch.Tensor):
        levels = levels.tolist()
    if (
        not isinstance(levels, Sequence)
        or not 1 <= len(levels) <= MAX_LEVELS
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in levels)
    ):
        raise ValueError(f"levels must be 1 to {MAX_LEVELS} ints >= 2, got {levels!r}")
    if math.prod(levels) > 2**31:
        raise ValueError(
            f"levels {list(levels)} give a codebook of {math.prod(levels)} codes, "
            f"more than int32 codes hold"
        )
    return tuple(int(v) for v in levels)


def _check_tensor(name: str, t, shape: tuple[int, ...], device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_float_dtype(name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be of shape {list(shape)}, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def _check_out_proj(w_out, b_out, dim: int, n: int, device) -> None:
    _check_tensor("w_out", w_out, (dim, n), device)
    _check_tensor("b_out", b_out, (dim,), device)


# ----------------------------------------------------------------------------- torch paths


def fsq_torch(x, w_in, b_in, w_out, b_out, levels: tuple[int, ...]):
    """Torch path: the reference's expressions in fp32. Returns `(out, codes int32)`."""
    n = len(levels)
    ftab, _ = _tables(levels, x.device)
    shift, half, off, width, basis = ftab[:, :n]
    z = F.linear(x.float(), w_in.float(), b_in.float())
    bounded = (z + shift).tanh() * half - off
    codes = torch.round(bounded) / width
    index = ((codes * width + width) * basis).sum(dim=-1).to(torch.int32)
    return F.linear(codes, w_out.float(), b_out.float()).to(x.dtype), index


def fsq_decode_torch(codes, w_out, b_out, levels: tuple[int, ...]):
    """Torch path of the decode: the reference's `indices_to_codes` and project-out."""
    n = len(levels)
    _, itab = _tables(levels, codes.device)
    lv, width, basis = itab[:, :n]
    digits = (codes.long().unsqueeze(-1) // basis) % lv
    c = ((digits - width) / width).float()
    return F.linear(c, w_out.float(), b_out.float()).to(w_out.dtype)


# ----------------------------------------------------------------------------- launchers


def _launch(x, w_in, b_in, w_out, b_out, levels):
    check_inner_contiguous(x=x, w_in=w_in, w_out=w_out)
    b_in, b_out = b_in.contiguous(), b_out.contiguous()  # read as b_ptr + j
    batch, groups, dim = x.shape
    ftab, _ = _tables(levels, x.device)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    codes = torch.empty(batch, groups, dtype=torch.int32, device=x.device)
    if codes.numel() == 0:
        return out, codes
    _fsq_kernel[(triton.cdiv(groups, BLOCK_G), batch)](
        x,
        w_in,
        b_in,
        w_out,
        b_out,
        ftab,
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
        len(levels),
        NP=ftab.shape[1],
        BLOCK_G=BLOCK_G,
        BLOCK_K=BLOCK_K,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
        enable_fp_fusion=False,
    )
    return out, codes


def _launch_decode(codes, w_out, b_out, levels):
    check_inner_contiguous(w_out=w_out)
    codes, b_out = codes.contiguous(), b_out.contiguous()  # read with unit inner stride
    batch, groups = codes.shape
    dim = w_out.shape[0]
    _, itab = _tables(levels, codes.device)
    out = torch.empty(batch, groups, dim, dtype=w_out.dtype, device=codes.device)
    if out.numel() == 0:
        return out
    _fsq_decode_kernel[(triton.cdiv(groups, BLOCK_G), batch)](
        codes,
        w_out,
        b_out,
        itab,
        out,
        codes.stride(0),
        w_out.stride(0),
        out.stride(0),
        out.stride(1),
        groups,
        dim,
        len(levels),
        NP=itab.shape[1],
        BLOCK_G=BLOCK_G,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
        enable_fp_fusion=False,
    )
    return out


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("flexicodec_fast::fsq", mutates_args=())
def _fsq_op(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    levels: list[int],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if select_backend(backend, x.device) == "triton":
        return _launch(x, w_in, b_in, w_out, b_out, tuple(levels))
    return fsq_torch(x, w_in, b_in, w_out, b_out, tuple(levels))


@_fsq_op.register_fake
def _(x, w_in, b_in, w_out, b_out, levels, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape[:2], dtype=torch.int32)


@torch.library.custom_op("flexicodec_fast::fsq_decode", mutates_args=())
def _fsq_decode_op(
    codes: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor, levels: list[int], backend: str
) -> torch.Tensor:
    if select_backend(backend, codes.device) == "triton":
        return _launch_decode(codes, w_out, b_out, tuple(levels))
    return fsq_decode_torch(codes, w_out, b_out, tuple(levels))


@_fsq_decode_op.register_fake
def _(codes, w_out, b_out, levels, backend):
    return w_out.new_empty(*codes.shape, w_out.shape[0])


# ----------------------------------------------------------------------------- public API


def fsq(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    levels: Sequence[int],
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise x `[B, G, dim]`: returns (dequantised and projected `[B, G, dim]` in x's
    dtype, codes `[B, G]` int32). W_in `[n, dim]`, b_in `[n]`, W_out `[dim, n]`, b_out `[dim]`
    (the reference's `project_in` / `project_out`), n = len(levels) <= 8. Inference only (no
    gradient). Registered as `torch.ops.flexicodec_fast.fsq`."""
    levels = _check_levels(levels)
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(
            f"x must be a [B, G, dim] tensor, got {getattr(x, 'shape', type(x).__name__)}"
        )
    _check_tensor("x", x, x.shape)
    dim, n = x.shape[2], len(levels)
    _check_tensor("w_in", w_in, (n, dim), x.device)
    _check_tensor("b_in", b_in, (n,), x.device)
    _check_out_proj(w_out, b_out, dim, n, x.device)
    select_backend(backend, x.device)
    return _fsq_op(x, w_in, b_in, w_out, b_out, list(levels), backend)


def fsq_decode(
    codes: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    levels: Sequence[int],
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Dequantise codes `[B, G]` (int32/int64) and project out: `[B, G, dim]` in W_out's
    dtype. Registered as `torch.ops.flexicodec_fast.fsq_decode`."""
    levels = _check_levels(levels)
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"codes must be int32 or int64, got {codes.dtype}")
    if codes.dim() != 2:
        raise ValueError(f"codes must be [B, G], got shape {list(codes.shape)}")
    if not isinstance(w_out, torch.Tensor) or w_out.dim() != 2:
        raise ValueError(
            f"w_out must be a [dim, n] tensor, got {getattr(w_out, 'shape', type(w_out).__name__)}"
        )
    _check_out_proj(w_out, b_out, w_out.shape[0], len(levels), codes.device)
    select_backend(backend, codes.device)
    return _fsq_decode_op(codes, w_out, b_out, list(levels), backend)
