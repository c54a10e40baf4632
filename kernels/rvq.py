"""Residual vector quantisation, all stages in one launch, and its fused decode (spec §8,
design §3).

Per token (a row of x `[B, G, D]`), starting from `r = x`, `q = 0`, for stage s < n:

    z     = W_in[s] r + b_in[s]                                  `[CD]` (CD = 8)
    e     = z / max(|z|, 1e-12)
    code  = argmin_k (|e|^2 - 2 e.Chat[s,k]) + |Chat[s,k]|^2      first index on ties
    z_q   = z + (C[s, code] - z)                                 raw codebook row
    o     = W_out[s] z_q + b_out[s]                              `[D]`
    r    -= o,   q += o

Assigned first stage (STACodec's semantic token assignment, `reference/semantic_rvq.py`):
with `first_codes [B, G]`, stage 0 takes `code = first_codes[b, g]` instead of searching
(z, z_q, o and the residual update are unchanged), and the later stages search as usual.

`Chat` is the l2-normalised codebook (the caller normalises it once, `F.normalize(C)`),
`|Chat_k|^2` is recomputed from it as the reference does, and the distance is the official
three-term expression in that order (`2 - 2 e.Chat` would round differently). `z_q` keeps
the reference's straight-through expression, whose rounding the official encoder output
carries too. Decode: `q = sum_{s<K} (W_out[s] C[s, code_s] + b_out[s])`, added in stage order.

One program owns `BLOCK_G` tokens of one item and keeps their residual and running sum
(`[BLOCK_G, D]` fp32 each) in registers across all stages; per stage it projects in (CD
reductions over D), scans the codebook in `BLOCK_K` blocks with a running (min, argmin),
gathers the raw row and projects out (CD rank-1 updates); an assigned stage 0 runs before
the stage loop and skips the scan. Weights and codebooks are read
from L2 by every program; the only HBM traffic is x once, codes and the sum once. No
`tl.dot`: every contraction has a side of CD = 8, below the MMA minimum of 16, and tf32
would flip codes; plain fp32 products keep the arithmetic exact per term, compiled without
FMA contraction like the reference's separate multiply and add.

Numerics: the torch encode is the reference's arithmetic in the reference's layout (1x1
convolutions on `[B, D, G]`), bit-identical to `reference.rvq` in fp32. The torch decode
sums the stages inside one GEMM (agrees with the reference to fp32 rounding, ~1e-7
relative). The Triton path reduces in other orders, so a code whose best and second-best
distances are within ~1e-6 may differ (design §4); away from such near-ties codes are equal
and the sums agree to fp32 rounding. A token's stages depend only on that token, so a flip
affects only its own later stages.

Layout: x `[B, G, D]`; stacked weights (weight norm folded): in_w `[S, CD, D]`, in_b
`[S, CD]`, cb and cb_norm `[S, K, CD]`, out_w `[S, D, CD]`, out_b `[S, D]`, all with a
contiguous last dimension, any float dtype (computed in fp32). Encode returns codes
`[B, n, G]` int64 and the quantised sum `[B, G, D]` in x's dtype. With `num_groups [B]`,
tokens at or past an item's count are skipped: code 0 and a zero sum (their first code,
if any, is not read). `first_codes` `[B, G]` int32/int64 in `[0, K)` come back as the codes
of stage 0. Decode takes codes `[B, K, G]` (K <= S) in `[0, codebook size)`. Codes are not
checked (that would synchronise): an out-of-range code reads a zero row in the Triton path,
the torch path raises IndexError. Decode returns `[B, G, D]` in out_w's dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from ._checks import check_float_dtype, check_inner_contiguous
from ._triton import select_backend, tl, triton

BLOCK_G = 16
BLOCK_K = 32
NUM_WARPS = 16
DECODE_NUM_WARPS = 8
TORCH_CHUNK = 8192  # tokens per distance matrix in the torch path ([chunk, K] fp32)


@triton.jit
def _project_out(
    v,
    w_ptr,
    b_ptr,
    stride_wd,
    c,
    d,
    dm,
    CD: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """`v [BLOCK_G, BLOCK_C] @ W[:, :CD]^T + b` as CD rank-1 updates of the `[BLOCK_G, D]`
    output, in column order (an FMA `tl.dot` with N = D holds a whole W slice per thread
    and spills)."""
    out = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(CD):
        v_j = tl.sum(tl.where(c[None, :] == j, v, 0.0), axis=1)
        w_j = tl.load(w_ptr + d * stride_wd + j, mask=dm, other=0.0).to(tl.float32)
        out += v_j[:, None] * w_j[None, :]
    return out + tl.load(b_ptr + d, mask=dm, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _in_project(
    residual,
    w_ptr,
    b_ptr,
    stride_wc,
    c,
    cm,
    d,
    dm,
    CD: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """`z [BLOCK_G, BLOCK_C] = residual @ W[:CD]^T + b`: CD reductions over D of the
    register-resident residual (padded columns 0)."""
    z = tl.zeros([BLOCK_G, BLOCK_C], dtype=tl.float32)
    for j in tl.static_range(CD):
        w = tl.load(w_ptr + j * stride_wc + d, mask=dm, other=0.0).to(tl.float32)
        z = tl.where(c[None, :] == j, tl.sum(residual * w[None, :], axis=1)[:, None], z)
    return z + tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _stage_output(
    z,
    code,
    K,
    cb_ptr,
    stride_ck,
    out_w_ptr,
    out_b_ptr,
    stride_owd,
    c,
    cm,
    d,
    dm,
    CD: tl.constexpr,
    CHECK_CODE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The stage's output `[BLOCK_G, D]`: raw codebook row of `code`, the reference's
    straight-through `z + (row - z)`, out-projection. With CHECK_CODE a code outside
    `[0, K)` reads a zero row (searched codes are always in range; assigned ones may not)."""
    mask = cm[None, :]
    if CHECK_CODE:
        mask = mask & ((code >= 0) & (code < K))[:, None]
    raw = tl.load(
        cb_ptr + code.to(tl.int64)[:, None] * stride_ck + c[None, :], mask=mask, other=0.0
    ).to(tl.float32)
    z_q = z + (raw - z)
    return _project_out(z_q, out_w_ptr, out_b_ptr, stride_owd, c, d, dm, CD, BLOCK_G, BLOCK_D)


@triton.jit
def _rvq_encode_kernel(
    x_ptr,
    in_w_ptr,
    in_b_ptr,
    cb_ptr,
    cbn_ptr,
    out_w_ptr,
    out_b_ptr,
    ngroups_ptr,
    first_ptr,
    codes_ptr,
    q_ptr,
    stride_xb,
    stride_xg,
    stride_fb,
    stride_iws,
    stride_iwc,
    stride_ibs,
    stride_cs,
    stride_ck,
    stride_ns,
    stride_nk,
    stride_ows,
    stride_owd,
    stride_obs,
    stride_kb,
    stride_ks,
    stride_qb,
    stride_qg,
    G,
    D,
    K,
    n_stages,
    CD: tl.constexpr,
    HAS_NGROUPS: tl.constexpr,
    HAS_FIRST: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Encode tokens `[g0, g0 + BLOCK_G)` of item `b` through `n_stages` stages.

    `BLOCK_D >= D` (the whole residual row is held), `BLOCK_C >= CD` (padded columns are 0
    and stay 0). With HAS_FIRST, stage 0's code is read from `first [B, G]` and its
    codebook scan is empty. Writes codes `[B, n, G]` int64 and the sum `q [B, G, D]`. Grid
    `(cdiv(G, BLOCK_G), B)`.
    """
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    live = g < G
    if HAS_NGROUPS:
        live = live & (g < tl.load(ngroups_ptr + b))
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    c = tl.arange(0, BLOCK_C)
    cm = c < CD
    residual = tl.load(
        x_ptr + b * stride_xb + g.to(tl.int64)[:, None] * stride_xg + d[None, :],
        mask=live[:, None] & dm[None, :],
        other=0.0,
    ).to(tl.float32)
    qsum = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    codes_row = codes_ptr + b * stride_kb + g
    # A block with no live token skips the work and only writes its zero codes.
    n_run = tl.where(tl.max(live.to(tl.int32), axis=0) > 0, n_stages, 0)
    s0 = 0
    if HAS_FIRST:
        # The assigned stage 0 is peeled off the search loop, which stays exactly as without
        # assignment (it sits at the register limit; a per-stage branch inside it spills).
        if n_run > 0:
            z = _in_project(
                residual, in_w_ptr, in_b_ptr, stride_iwc, c, cm, d, dm, CD, BLOCK_G, BLOCK_C
            )
            code = tl.load(first_ptr + b * stride_fb + g, mask=live, other=0).to(tl.int32)
            tl.store(codes_row, tl.where(live, code, 0).to(tl.int64), mask=g < G)
            out = _stage_output(
                z,
                code,
                K,
                cb_ptr,
                stride_ck,
                out_w_ptr,
                out_b_ptr,
                stride_owd,
                c,
                cm,
                d,
                dm,
                CD,
                True,
                BLOCK_G,
                BLOCK_D,
            )
            residual = residual - out
            qsum = qsum + out
        s0 = 1
    for s in range(s0, n_run):
        z = _in_project(
            residual,
            in_w_ptr + s * stride_iws,
            in_b_ptr + s * stride_ibs,
            stride_iwc,
            c,
            cm,
            d,
            dm,
            CD,
            BLOCK_G,
            BLOCK_C,
        )
        norm = tl.maximum(tl.sqrt_rn(tl.sum(z * z, axis=1)), 1e-12)
        e = tl.math.div_rn(z, norm[:, None])
        e2 = tl.sum(e * e, axis=1)[:, None]
        best = tl.full([BLOCK_G], float("inf"), dtype=tl.float32)
        best_k = tl.zeros([BLOCK_G], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            km = k < K
            cn = tl.load(
                cbn_ptr + s * stride_ns + k[None, :] * stride_nk + c[:, None],
                mask=cm[:, None] & km[None, :],
                other=0.0,
            ).to(tl.float32)
            # Scores as an explicit product-and-sum over the CD axis: every code's score is
            # the same reduction, so equal rows tie exactly (a `tl.dot` under the
            # interpreter is a BLAS call whose rounding depends on the column's position).
            dot = tl.sum(e[:, :, None] * cn[None, :, :], axis=1)
            c2 = tl.sum(cn * cn, axis=0)
            dist = (e2 - 2.0 * dot) + c2[None, :]
            dist = tl.where(km[None, :], dist, float("inf"))
            block_min = tl.min(dist, axis=1)
            block_arg = tl.argmin(dist, axis=1)
            # Strictly smaller: on a tie the earlier block (lower index) keeps the code.
            better = block_min < best
            best = tl.where(better, block_min, best)
            best_k = tl.where(better, block_arg + k0, best_k)
        tl.store(codes_row + s * stride_ks, tl.where(live, best_k, 0).to(tl.int64), mask=g < G)
        out = _stage_output(
            z,
            best_k,
            K,
            cb_ptr + s * stride_cs,
            stride_ck,
            out_w_ptr + s * stride_ows,
            out_b_ptr + s * stride_obs,
            stride_owd,
            c,
            cm,
            d,
            dm,
            CD,
            False,
            BLOCK_G,
            BLOCK_D,
        )
        residual = residual - out
        qsum = qsum + out
    for s in range(n_run, n_stages):
        tl.store(codes_row + s * stride_ks, tl.zeros([BLOCK_G], dtype=tl.int64), mask=g < G)
    tl.store(
        q_ptr + b * stride_qb + g.to(tl.int64)[:, None] * stride_qg + d[None, :],
        tl.where(live[:, None], qsum, 0.0).to(q_ptr.dtype.element_ty),
        mask=(g < G)[:, None] & dm[None, :],
    )


@triton.jit
def _rvq_decode_kernel(
    codes_ptr,
    cb_ptr,
    out_w_ptr,
    out_b_ptr,
    q_ptr,
    stride_kb,
    stride_ks,
    stride_cs,
    stride_ck,
    stride_ows,
    stride_owd,
    stride_obs,
    stride_qb,
    stride_qg,
    G,
    D,
    K,
    n_codes,
    CD: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Decode tokens `[g0, g0 + BLOCK_G)` of item `b`: the stage outputs of its `n_codes`
    codes, added in stage order. Grid `(cdiv(G, BLOCK_G), B)`."""
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gm = g < G
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    c = tl.arange(0, BLOCK_C)
    cm = c < CD
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for s in range(0, n_codes):
        code = tl.load(codes_ptr + b * stride_kb + s * stride_ks + g, mask=gm, other=0)
        ok = (code >= 0) & (code < K)
        raw = tl.load(
            cb_ptr + s * stride_cs + code.to(tl.int64)[:, None] * stride_ck + c[None, :],
            mask=ok[:, None] & cm[None, :],
            other=0.0,
        ).to(tl.float32)
        acc = acc + _project_out(
            raw,
            out_w_ptr + s * stride_ows,
            out_b_ptr + s * stride_obs,
            stride_owd,
            c,
            d,
            dm,
            CD,
            BLOCK_G,
            BLOCK_D,
        )
    tl.store(
        q_ptr + b * stride_qb + g.to(tl.int64)[:, None] * stride_qg + d[None, :],
        acc.to(q_ptr.dtype.element_ty),
        mask=gm[:, None] & dm[None, :],
    )


# ----------------------------------------------------------------------------- validation


def _check_float(name: str, t, shape: tuple[int, ...], device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_float_dtype(name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be of shape {list(shape)}, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def _check_stages(cb, out_w, out_b, device) -> tuple[int, int, int, int]:
    """Validate the decode-side weights; returns (S, K, CD, D)."""
    if not isinstance(cb, torch.Tensor) or cb.dim() != 3:
        raise ValueError(
            f"cb must be a [S, K, CD] tensor, got {getattr(cb, 'shape', type(cb).__name__)}"
        )
    stages, size, cdim = cb.shape
    _check_float("cb", cb, cb.shape, device)
    if not isinstance(out_w, torch.Tensor) or out_w.dim() != 3:
        raise ValueError(
            f"out_w must be a [S, D, CD] tensor, got "
            f"{getattr(out_w, 'shape', type(out_w).__name__)}"
        )
    dim = out_w.shape[1]
    _check_float("out_w", out_w, (stages, dim, cdim), device)
    _check_float("out_b", out_b, (stages, dim), device)
    return stages, size, cdim, dim


# ----------------------------------------------------------------------------- torch paths


def rvq_encode_torch(
    x,
    in_w,
    in_b,
    cb,
    cb_norm,
    out_w,
    out_b,
    n_stages: int,
    num_groups: torch.Tensor | None,
    first_codes: torch.Tensor | None = None,
):
    """Torch path: the reference's stage arithmetic on `[B, D, G]` (1x1 convolutions), the
    distance matrix built `TORCH_CHUNK` tokens at a time; stage 0 takes `first_codes` when
    given. Returns `(codes, q)`."""
    batch, groups, dim = x.shape
    residual = x.float().transpose(1, 2).contiguous()
    live = None
    if num_groups is not None:
        live = torch.arange(groups, device=x.device).view(1, -1) < num_groups.view(-1, 1)
    q = 0
    codes = []
    for s in range(n_stages):
        z_e = F.conv1d(residual, in_w[s].float().unsqueeze(-1), in_b[s].float())
        if s == 0 and first_codes is not None:
            # Padded tokens' first codes are not read (the kernel masks them): any value.
            code = first_codes.long() if live is None else torch.where(live, first_codes, 0).long()
        else:
            code = _nearest(z_e, cb_norm[s].float()).reshape(batch, groups)
        z_c = F.embedding(code, cb[s].float()).transpose(1, 2)
        z_q = z_e + (z_c - z_e)
        out = F.conv1d(z_q, out_w[s].float().unsqueeze(-1), out_b[s].float())
        q = q + out
        residual = residual - out
        codes.append(code)
    codes = torch.stack(codes, dim=1)
    q = q.transpose(1, 2)
    if live is not None:
        codes = torch.where(live.unsqueeze(1), codes, 0)
        q = torch.where(live.unsqueeze(-1), q, 0.0)
    return codes, q.to(x.dtype).contiguous()


def _nearest(z_e, c):
    """The reference's `VectorQuantize.nearest` of `z_e [B, CD, G]` against the normalised
    codebook `c [K, CD]`: flat codes `[B * G]`.

    The distance `|e|^2 - 2 e.c + |c|^2` is built in one buffer per `TORCH_CHUNK` tokens
    (the product, then `* -2`, `+ |e|^2`, `+ |c|^2` in place: the reference's additions in
    its order, so the same bits) and its argmin taken, which is the reference's argmax of
    the negated distance, first index on ties included.
    """
    e = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))
    e2 = e.pow(2).sum(1, keepdim=True)
    c2 = c.pow(2).sum(1, keepdim=True).t()
    codes = []
    for i in range(0, e.shape[0], TORCH_CHUNK):
        dist = (e[i : i + TORCH_CHUNK] @ c.t()).mul_(-2).add_(e2[i : i + TORCH_CHUNK]).add_(c2)
        codes.append(dist.argmin(1))
    return codes[0] if len(codes) == 1 else torch.cat(codes)


def rvq_decode_torch(codes, cb, out_w, out_b):
    """Torch path of the decode, `[B, G, D]`: the K stages' out-projections as one GEMM,
    `sum_s (W_s c_s + b_s) = [W_0 .. W_K-1] [c_0; ..; c_K-1] + sum_s b_s`, so the `[B, G, D]`
    sum is written once instead of once per stage (and no layout change follows)."""
    k = codes.shape[1]
    vectors = torch.cat([F.embedding(codes[:, s].long(), cb[s].float()) for s in range(k)], -1)
    weight = rearrange(out_w[:k].float(), "s d c -> d (s c)")
    flat = torch.addmm(out_b[:k].float().sum(0), vectors.flatten(0, 1), weight.t())
    return flat.view(*vectors.shape[:2], -1).to(out_w.dtype)


class StackedStages(NamedTuple):
    """Every stage's weights in the kernels' layout (see the module docstring), in the order
    `rvq_encode` takes them after x."""

    in_w: torch.Tensor
    in_b: torch.Tensor
    cb: torch.Tensor
    cb_norm: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor


def stacked_weights(rvq) -> StackedStages:
    """The stage weights of a `reference.rvq.ResidualVectorQuantize` (or its semantic-assigned
    subclass), weight norm folded, stacked over stages; the codebooks also l2-normalised."""
    qs = rvq.quantizers
    with torch.no_grad():
        cb = torch.stack([q.codebook.weight for q in qs])
        return StackedStages(
            torch.stack([q.in_proj.weight()[..., 0] for q in qs]),
            torch.stack([q.in_proj.bias for q in qs]),
            cb,
            F.normalize(cb, dim=-1),
            torch.stack([q.out_proj.weight()[..., 0] for q in qs]),
            torch.stack([q.out_proj.bias for q in qs]),
        )


# ----------------------------------------------------------------------------- launchers


def _launch_encode(x, in_w, in_b, cb, cb_norm, out_w, out_b, n_stages, num_groups, first_codes):
    check_inner_contiguous(
        x=x, in_w=in_w, in_b=in_b, cb=cb, cb_norm=cb_norm, out_w=out_w, out_b=out_b
    )
    batch, groups, dim = x.shape
    _, size, cdim = cb.shape
    if num_groups is not None:
        num_groups = num_groups.contiguous()  # read as ngroups_ptr + b
    if first_codes is not None:
        first_codes = first_codes.contiguous()  # read as first_ptr + b * stride + g
    codes = torch.empty(batch, n_stages, groups, dtype=torch.long, device=x.device)
    q = torch.empty(batch, groups, dim, dtype=x.dtype, device=x.device)
    if codes.numel() == 0:
        return codes, q.zero_()
    ng = codes if num_groups is None else num_groups
    first = codes if first_codes is None else first_codes
    _rvq_encode_kernel[(triton.cdiv(groups, BLOCK_G), batch)](
        x,
        in_w,
        in_b,
        cb,
        cb_norm,
        out_w,
        out_b,
        ng,
        first,
        codes,
        q,
        x.stride(0),
        x.stride(1),
        first.stride(0),
        in_w.stride(0),
        in_w.stride(1),
        in_b.stride(0),
        cb.stride(0),
        cb.stride(1),
        cb_norm.stride(0),
        cb_norm.stride(1),
        out_w.stride(0),
        out_w.stride(1),
        out_b.stride(0),
        codes.stride(0),
        codes.stride(1),
        q.stride(0),
        q.stride(1),
        groups,
        dim,
        size,
        n_stages,
        CD=cdim,
        HAS_NGROUPS=num_groups is not None,
        HAS_FIRST=first_codes is not None,
        BLOCK_G=BLOCK_G,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_C=triton.next_power_of_2(cdim),
        BLOCK_K=BLOCK_K,
        num_warps=NUM_WARPS,
        enable_fp_fusion=False,
    )
    return codes, q


def _launch_decode(codes, cb, out_w, out_b):
    check_inner_contiguous(codes=codes, cb=cb, out_w=out_w, out_b=out_b)
    batch, n_codes, groups = codes.shape
    _, size, cdim = cb.shape
    dim = out_w.shape[1]
    q = torch.empty(batch, groups, dim, dtype=out_w.dtype, device=codes.device)
    if q.numel() == 0:
        return q
    _rvq_decode_kernel[(triton.cdiv(groups, BLOCK_G), batch)](
        codes,
        cb,
        out_w,
        out_b,
        q,
        codes.stride(0),
        codes.stride(1),
        cb.stride(0),
        cb.stride(1),
        out_w.stride(0),
        out_w.stride(1),
        out_b.stride(0),
        q.stride(0),
        q.stride(1),
        groups,
        dim,
        size,
        n_codes,
        CD=cdim,
        BLOCK_G=BLOCK_G,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_C=triton.next_power_of_2(cdim),
        num_warps=DECODE_NUM_WARPS,
        enable_fp_fusion=False,
    )
    return q


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("flexicodec_fast::rvq_encode", mutates_args=())
def _encode_op(
    x: torch.Tensor,
    in_w: torch.Tensor,
    in_b: torch.Tensor,
    cb: torch.Tensor,
    cb_norm: torch.Tensor,
    out_w: torch.Tensor,
    out_b: torch.Tensor,
    n_stages: int,
    num_groups: torch.Tensor | None,
    backend: str,
    first_codes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    args = (x, in_w, in_b, cb, cb_norm, out_w, out_b, n_stages, num_groups, first_codes)
    if select_backend(backend, x.device) == "triton":
        return _launch_encode(*args)
    return rvq_encode_torch(*args)


@_encode_op.register_fake
def _(x, in_w, in_b, cb, cb_norm, out_w, out_b, n_stages, num_groups, backend, first_codes=None):
    return (x.new_empty(x.shape[0], n_stages, x.shape[1], dtype=torch.long), x.new_empty(x.shape))


@torch.library.custom_op("flexicodec_fast::rvq_decode", mutates_args=())
def _decode_op(
    codes: torch.Tensor, cb: torch.Tensor, out_w: torch.Tensor, out_b: torch.Tensor, backend: str
) -> torch.Tensor:
    if select_backend(backend, codes.device) == "triton":
        return _launch_decode(codes, cb, out_w, out_b)
    return rvq_decode_torch(codes, cb, out_w, out_b)


@_decode_op.register_fake
def _(codes, cb, out_w, out_b, backend):
    return out_w.new_empty(codes.shape[0], codes.shape[2], out_w.shape[1])


# ----------------------------------------------------------------------------- public API


def rvq_encode(
    x: torch.Tensor,
    in_w: torch.Tensor,
    in_b: torch.Tensor,
    cb: torch.Tensor,
    cb_norm: torch.Tensor,
    out_w: torch.Tensor,
    out_b: torch.Tensor,
    n_quantizers: int | None = None,
    num_groups: torch.Tensor | None = None,
    *,
    first_codes: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise x `[B, G, D]` through the first `n_quantizers` (None: all S) stages.

    Returns (codes `[B, n, G]` int64, quantised sum `[B, G, D]` in x's dtype). Weights as in
    the module docstring; `cb_norm` = `F.normalize(cb, dim=-1)`. num_groups `[B]` int64 or
    None: tokens at or past it get code 0 and a zero sum, at no cost. first_codes `[B, G]`
    int32/int64 or None: stage 0's codes, assigned instead of searched (STACodec). Inference
    only (no gradient). Registered as `torch.ops.flexicodec_fast.rvq_encode`.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(
            f"x must be a [B, G, D] tensor, got {getattr(x, 'shape', type(x).__name__)}"
        )
    _check_float("x", x, x.shape)
    stages, size, cdim, dim = _check_stages(cb, out_w, out_b, x.device)
    if x.shape[2] != dim:
        raise ValueError(f"x must be [B, G, D] with D = {dim} (out_w's), got shape {list(x.shape)}")
    _check_float("in_w", in_w, (stages, cdim, dim), x.device)
    _check_float("in_b", in_b, (stages, cdim), x.device)
    _check_float("cb_norm", cb_norm, (stages, size, cdim), x.device)
    n = stages if n_quantizers is None else n_quantizers
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= stages:
        raise ValueError(
            f"n_quantizers must be an int in [1, {stages}] or None, got {n_quantizers!r}"
        )
    if num_groups is not None:
        if not isinstance(num_groups, torch.Tensor) or num_groups.dtype != torch.int64:
            raise TypeError(
                f"num_groups must be an int64 tensor or None, got "
                f"{getattr(num_groups, 'dtype', type(num_groups).__name__)}"
            )
        if tuple(num_groups.shape) != (x.shape[0],) or num_groups.device != x.device:
            raise ValueError(
                f"num_groups must be [B] = [{x.shape[0]}] on {x.device}, got "
                f"shape {list(num_groups.shape)} on {num_groups.device}"
            )
    if first_codes is not None:
        if not isinstance(first_codes, torch.Tensor) or first_codes.dtype not in (
            torch.int32,
            torch.int64,
        ):
            raise TypeError(
                f"first_codes must be an int32 or int64 tensor or None, got "
                f"{getattr(first_codes, 'dtype', type(first_codes).__name__)}"
            )
        if tuple(first_codes.shape) != tuple(x.shape[:2]) or first_codes.device != x.device:
            raise ValueError(
                f"first_codes must be [B, G] = {list(x.shape[:2])} on {x.device}, got "
                f"shape {list(first_codes.shape)} on {first_codes.device}"
            )
    select_backend(backend, x.device)
    return _encode_op(x, in_w, in_b, cb, cb_norm, out_w, out_b, n, num_groups, backend, first_codes)


def rvq_decode(
    codes: torch.Tensor,
    cb: torch.Tensor,
    out_w: torch.Tensor,
    out_b: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Sum of the stage outputs of codes `[B, K, G]` (int32/int64, 1 <= K <= S): `[B, G, D]`
    in out_w's dtype. Registered as `torch.ops.flexicodec_fast.rvq_decode`."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"codes must be int32 or int64, got {codes.dtype}")
    stages, _, _, _ = _check_stages(cb, out_w, out_b, codes.device)
    if codes.dim() != 3 or not 1 <= codes.shape[1] <= stages:
        raise ValueError(
            f"codes must be [B, K, G] with 1 <= K <= {stages}, got shape {list(codes.shape)}"
        )
    select_backend(backend, codes.device)
    return _decode_op(codes, cb, out_w, out_b, backend)
