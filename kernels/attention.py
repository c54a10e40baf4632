"""Flash-style attention with interleaved-pair RoPE, per-item key lengths and banded patterns.

    q', k' = RoPE(q), RoPE(k)                 (pairs (2i, 2i+1), positions 0..L-1)
    out[b, t, h*Dh:(h+1)*Dh] = softmax_s(q'[b,h,t] . k'[b,h,s] / sqrt(Dh)) v[b,h,s]

over the keys s visible from query t: `s < lengths[b]` and, for a banded pattern,
`t - before <= s <= t + after`. The reference's patterns (`reference.attention`) map to
  full:                  not banded
  window w:              before = after = w
  causal, context c:     before = c - 1 (L - 1 without a context), after = 0.
Rows `t >= lengths[b]` of the output are zero (the reference leaves them finite but
meaningless and its callers zero them).

RoPE follows the reference exactly: tables `cos, sin [L, Dh/2]` float32 computed with its
formula, rotation in float32, result cast back to the input dtype before the products.
Scores, softmax statistics and the output accumulator are float32 (online softmax, exp2 with
the scale folded in). fp32 inputs multiply in full fp32 with `fp32_precision="ieee"` (the
parity mode, the default) or in tf32 with `"tf32"`; fp16/bf16 inputs use tensor cores.

Layout: q, k, v `[B, H, L, Dh]` with a contiguous last dimension (any other strides, so the
views of a fused QKV projection can be passed as they are) and any even Dh (the Triton path
takes Dh <= 128 and pads its tiles to a power of two, see `tile_width`); lengths `[B]` int64
or None (values past L act as L); output `[B, L, H*Dh]` contiguous, the input dtype, ready
for the output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_float_dtype, check_inner_contiguous
from ._triton import select_backend, tl, triton

MAX_HEAD_DIM = 128
PRECISIONS = ("ieee", "tf32")
NUM_STAGES = 2
TORCH_QUERY_CHUNK = 256
ROPE_CHUNK = 2048
LOG2_E = 1.4426950408889634


@triton.jit
def _rope(x, cos, sin, ROWS: tl.constexpr, HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rotate the interleaved pairs of `x` `[ROWS, BLOCK_D]` in fp32 by `cos, sin`
    `[ROWS, HALF]`, in the reference's operation order, and cast back to x's dtype."""
    re, im = tl.split(tl.reshape(x.to(tl.float32), [ROWS, HALF, 2]))
    out_re = re * cos - im * sin
    out_im = re * sin + im * cos
    return tl.reshape(tl.join(out_re.to(x.dtype), out_im.to(x.dtype)), [ROWS, BLOCK_D])


@triton.jit
def _attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    len_ptr,
    o_ptr,
    stride_qb,
    stride_qh,
    stride_ql,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_tl,
    stride_ob,
    stride_ol,
    H,
    L,
    before,
    after,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BANDED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One program: `BLOCK_M` queries of one (item, head), all their visible keys.

    q, k, v `[B, H, L, HEAD_DIM]` (last dim contiguous); cos, sin `[L, HEAD_DIM // 2]`
    float32; len `[B]` int64; o `[B, L, H * HEAD_DIM]` (last dim contiguous).
    Grid: `(cdiv(L, BLOCK_M), B * H)`. Only key blocks that intersect
    `[m0 - before, m0 + BLOCK_M - 1 + after]` and `[0, len)` are visited, so a banded
    pattern costs O(L * (before + after)) rather than O(L^2). `qk_scale` is
    `log2(e) / sqrt(HEAD_DIM)`, so the softmax runs on exp2.

    Tiles are `BLOCK_D` wide, a power of two >= 16 (what `tl.dot` takes) and >= HEAD_DIM:
    the columns past HEAD_DIM load as zeros, which add nothing to q.k, rotate to zeros
    (whole pairs, as HEAD_DIM is even) and are not stored.
    """
    HALF: tl.constexpr = BLOCK_D // 2
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    length = tl.minimum(tl.load(len_ptr + b), L).to(tl.int32)

    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    pairs = tl.arange(0, HALF)
    dim_in = (dims < HEAD_DIM)[None, :]
    pair_in = (pairs < HEAD_DIM // 2)[None, :]

    row_in = (rows < L)[:, None]
    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_ql + dims[None, :],
        mask=row_in & dim_in,
        other=0.0,
    )
    q_cos = tl.load(
        cos_ptr + rows[:, None] * stride_tl + pairs[None, :], mask=row_in & pair_in, other=0.0
    )
    q_sin = tl.load(
        sin_ptr + rows[:, None] * stride_tl + pairs[None, :], mask=row_in & pair_in, other=0.0
    )
    q = _rope(q, q_cos, q_sin, BLOCK_M, HALF, BLOCK_D)

    if BANDED:
        lo = tl.maximum(m0 - before, 0)
        hi = tl.minimum(m0 + BLOCK_M + after, length)
    else:
        lo = 0
        hi = length
    # A block of queries that are all past the item's end visits no key.
    hi = tl.where(m0 < length, hi, lo)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_in = (cols < L)[:, None]
        k_in = col_in & dim_in
        k = tl.load(k_base + cols[:, None] * stride_kl + dims[None, :], mask=k_in, other=0.0)
        k_cos = tl.load(
            cos_ptr + cols[:, None] * stride_tl + pairs[None, :], mask=col_in & pair_in, other=0.0
        )
        k_sin = tl.load(
            sin_ptr + cols[:, None] * stride_tl + pairs[None, :], mask=col_in & pair_in, other=0.0
        )
        k = _rope(k, k_cos, k_sin, BLOCK_N, HALF, BLOCK_D)
        v = tl.load(v_base + cols[:, None] * stride_vl + dims[None, :], mask=k_in, other=0.0)

        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        visible = (cols < length)[None, :]
        if BANDED:
            delta = rows[:, None] - cols[None, :]
            visible = visible & (delta <= before) & (delta >= -after)
        qk = tl.where(visible, qk, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        # Rows with no visible key yet keep m = -inf; subtract 0 there so exp2 gives 0, not NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_ref[:, None])
        correction = tl.math.exp2(m_i - m_ref)
        l_i = l_i * correction + tl.sum(p, axis=1)
        acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new

    valid = rows < length
    out = acc / tl.where(valid, l_i, 1.0)[:, None]
    out = tl.where(valid[:, None], out, 0.0)
    tl.store(
        o_ptr + b * stride_ob + rows[:, None] * stride_ol + h * HEAD_DIM + dims[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=row_in & dim_in,
    )


def rope_tables(length: int, head_dim: int, max_period: float = 10000.0, device=None):
    """cos and sin of the rotation angles, each `[length, head_dim // 2]` float32, computed
    exactly as the reference does: angle of pair i at position t is
    `t * exp(i * (-ln(max_period) * 2 / head_dim))`."""
    ds = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    freqs = torch.exp(ds * (-math.log(max_period) * 2 / head_dim))
    ts = torch.arange(length, device=device, dtype=torch.float32).view(-1, 1)
    angles = freqs * ts
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of `x` `[..., L, D]` by `cos, sin` `[L, D/2]` (float32 maths,
    result in x's dtype; bit-identical to the reference's `apply_rope`)."""
    pairs = x.unflatten(-1, (-1, 2))
    re, im = pairs[..., 0].float(), pairs[..., 1].float()
    out_re = re * cos - im * sin
    out_im = re * sin + im * cos
    return torch.stack([out_re.to(x.dtype), out_im.to(x.dtype)], dim=-1).flatten(-2)


def band_limits(
    length: int, window: int | None, causal: bool, context: int | None
) -> tuple[bool, int, int]:
    """`(banded, before, after)`: key s is visible from query t iff
    `t - before <= s <= t + after` (when banded)."""
    if window is not None:
        return True, window, window
    if causal:
        return True, (length - 1 if context is None else context - 1), 0
    return False, length, length


def banded_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor,
    before: int,
    after: int,
    global_rows: int = 0,
    chunk: int = TORCH_QUERY_CHUNK,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention `[B, H, L, Dh]` x3 -> `[B, H, L, Dh]` where query t sees key s iff
    `t - before <= s <= t + after` and `key_valid[b, s]` (`[B, L]` bool), in O(L * band):
    `chunk` queries at a time over only the keys their band reaches, so the boolean mask
    (which forces the math kernel) is O(chunk * keys), not O(L^2).

    The first `global_rows` positions are global (every query sees them, they see every
    valid key). Every query also sees itself, so a row past an item's end stays finite; such
    rows never reach a valid row, whose band excludes invalid keys.

    out: where to write the result (any strides, e.g. a transposed view of a `[B, L, H, Dh]`
    buffer, so that callers need no layout copy); allocated when None."""
    length = q.shape[2]
    positions = torch.arange(length, device=q.device)
    if out is None:
        out = q.new_empty(q.shape[:3] + v.shape[3:])
    if global_rows:
        mask = key_valid[:, None, None, :]
        out[:, :, :global_rows] = F.scaled_dot_product_attention(q[:, :, :global_rows], k, v, mask)
    for a0 in range(global_rows, length, chunk):
        a1 = min(length, a0 + chunk)
        k0, k1 = max(global_rows, a0 - before), min(length, a1 + after)
        if global_rows:
            keys = torch.cat([positions[:global_rows], positions[k0:k1]])
            kc, vc = k[:, :, keys], v[:, :, keys]
        else:
            keys = positions[k0:k1]
            kc, vc = k[:, :, k0:k1], v[:, :, k0:k1]
        delta = positions[a0:a1].view(-1, 1) - keys.view(1, -1)
        visible = ((delta <= before) & (delta >= -after)) | (keys < global_rows)
        visible = (visible & key_valid[:, None, None, keys]) | (delta == 0)
        out[:, :, a0:a1] = F.scaled_dot_product_attention(q[:, :, a0:a1], kc, vc, visible)
    return out


def attention_torch(
    q, k, v, lengths=None, window=None, causal=False, context=None, max_period=10000.0
):
    """Torch path: RoPE by `apply_rope`, then `F.scaled_dot_product_attention`.

    Without masking (`lengths` None and no band) one mask-free SDPA call runs, which
    PyTorch serves with its flash kernel: memory O(L), the whole hour-long case included.
    Callers pass None when they know every item is full length: finding that out here would
    read the lengths on the host (a device sync).
    Otherwise `banded_sdpa` runs, `TORCH_QUERY_CHUNK` queries at a time over the keys their
    band can reach.
    Returns `[B, L, H*Dh]` with rows past each item's length zero.
    """
    batch, heads, length, head_dim = q.shape
    cos, sin = rope_tables(length, head_dim, max_period, device=q.device)
    q, k = _rope_in_chunks(q, cos, sin), _rope_in_chunks(k, cos, sin)
    positions = torch.arange(length, device=q.device)
    banded, before, after = band_limits(length, window, causal, context)
    if lengths is None and not banded:
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(batch, length, heads * head_dim)
    if lengths is None:
        lengths = torch.full((batch,), length, dtype=torch.int64, device=q.device)
    key_ok = positions.view(1, -1) < lengths.view(-1, 1)
    out = q.new_empty(batch, length, heads, head_dim)
    banded_sdpa(q, k, v, key_ok, before, after, out=out.transpose(1, 2))
    # Rows past an item's end are discarded: select zeros, do not multiply.
    out.masked_fill_(~key_ok.view(batch, length, 1, 1), 0.0)
    return out.view(batch, length, heads * head_dim)


def _rope_in_chunks(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` of `[B, H, L, Dh]` over `ROPE_CHUNK`-position slices into one output:
    the same values, but its temporaries (together more than twice the size of x) exist for
    one slice at a time."""
    out = torch.empty_like(x)
    for a0 in range(0, x.shape[2], ROPE_CHUNK):
        a1 = a0 + ROPE_CHUNK
        out[:, :, a0:a1] = apply_rope(x[:, :, a0:a1], cos[a0:a1], sin[a0:a1])
    return out


def tile_width(head_dim: int) -> int:
    """The kernel's `BLOCK_D` for `head_dim`: the next power of two, at least 16 (the
    smallest inner dimension `tl.dot` takes)."""
    return max(16, triton.next_power_of_2(head_dim))


def launch_config(block_d: int, dtype: torch.dtype, fp32_precision: str) -> tuple[int, int, int]:
    """Production `(BLOCK_M, BLOCK_N, num_warps)` for tiles `block_d` wide: the largest tiles
    that do not spill on sm_80 or sm_90 (measured with `kernels.aot`; the production head
    dim 64 is checked by tests/test_aot.py). Full-fp32 products run on CUDA cores and hold
    their operands in registers, hence the small tiles of the "ieee" mode."""
    if dtype != torch.float32:
        return (64, 64, 4) if block_d <= 64 else (64, 32, 4)
    if fp32_precision == "tf32":
        return (64, 32, 4) if block_d <= 64 else (32, 32, 4)
    return (32, 16, 4) if block_d <= 64 else (16, 16, 8)


def _launch(
    q, k, v, lengths, window, causal, context, max_period, fp32_precision, block_m, block_n
):
    batch, heads, length, head_dim = q.shape
    block_d = tile_width(head_dim)
    if block_d > MAX_HEAD_DIM:
        raise ValueError(
            f"the Triton kernel supports head dims up to {MAX_HEAD_DIM}, got {head_dim}: "
            "use backend='auto' (the torch path for wider heads) or 'torch'"
        )
    check_inner_contiguous(q=q, k=k, v=v)
    default_m, default_n, num_warps = launch_config(block_d, q.dtype, fp32_precision)
    block_m, block_n = block_m or default_m, block_n or default_n
    out = torch.empty(batch, length, heads * head_dim, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    cos, sin = rope_tables(length, head_dim, max_period, device=q.device)
    if lengths is None:
        lengths = torch.full((batch,), length, dtype=torch.int64, device=q.device)
    banded, before, after = band_limits(length, window, causal, context)
    _attention_kernel[(triton.cdiv(length, block_m), batch * heads)](
        q,
        k,
        v,
        cos,
        sin,
        lengths,
        out,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        cos.stride(0),
        out.stride(0),
        out.stride(1),
        heads,
        length,
        before,
        after,
        LOG2_E / math.sqrt(head_dim),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BANDED=banded,
        INPUT_PRECISION=fp32_precision,
        num_warps=num_warps,
        num_stages=NUM_STAGES,
    )
    return out


def _check(q, k, v, lengths, window, causal, context, fp32_precision, blocks) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_float_dtype(name, t)
    if q.dim() != 4:
        raise ValueError(f"q must be [B, H, L, Dh], got shape {list(q.shape)}")
    if q.shape[-1] % 2:
        raise ValueError(f"the head dim of q must be even for RoPE pairs, got {q.shape[-1]}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {list(q.shape)}, got {list(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on {q.device} like q, got {t.device}")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a torch.Tensor or None, got {type(lengths).__name__}")
        if tuple(lengths.shape) != (q.shape[0],):
            raise ValueError(f"lengths must be [B] = [{q.shape[0]}], got {list(lengths.shape)}")
        if lengths.dtype != torch.int64:
            raise TypeError(f"lengths must be int64, got {lengths.dtype}")
        if lengths.device != q.device:
            raise ValueError(f"lengths must be on {q.device} like q, got {lengths.device}")
    if window is not None:
        if causal:
            raise ValueError(
                "an attention pattern is either windowed or causal, not both: "
                f"got window={window} and causal=True"
            )
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be None or an int >= 0, got {window!r}")
    if context is not None:
        if not causal:
            raise ValueError(
                f"context applies to causal attention only, got context={context} with causal=False"
            )
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ValueError(f"context must be None or an int >= 1, got {context!r}")
    if fp32_precision not in PRECISIONS:
        raise ValueError(f"fp32_precision must be one of {PRECISIONS}, got {fp32_precision!r}")
    if blocks is not None:
        ok = (
            isinstance(blocks, tuple)
            and len(blocks) == 2
            and all(isinstance(n, int) and n >= 16 and n & (n - 1) == 0 for n in blocks)
        )
        if not ok:
            raise ValueError(
                f"blocks must be None or (BLOCK_M, BLOCK_N), powers of two >= 16, got {blocks!r}"
            )


@torch.library.custom_op("flexicodec_fast::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor | None,
    window: int | None,
    causal: bool,
    context: int | None,
    max_period: float,
    fp32_precision: str,
    backend: str,
    block_m: int,
    block_n: int,
) -> torch.Tensor:
    # "auto" leaves heads wider than MAX_HEAD_DIM to the torch path: 256-wide tiles spill
    # registers on sm_80 and sm_90 with the wide-head launch configs (kernels.aot).
    wide = backend == "auto" and q.shape[-1] > MAX_HEAD_DIM
    if select_backend(backend, q.device) == "triton" and not wide:
        return _launch(
            q, k, v, lengths, window, causal, context, max_period, fp32_precision, block_m, block_n
        )
    return attention_torch(q, k, v, lengths, window, causal, context, max_period)


@_attention_op.register_fake
def _(
    q, k, v, lengths, window, causal, context, max_period, fp32_precision, backend, block_m, block_n
):
    batch, heads, length, head_dim = q.shape
    return q.new_empty(batch, length, heads * head_dim)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    window: int | None = None,
    causal: bool = False,
    context: int | None = None,
    max_period: float = 10000.0,
    fp32_precision: str = "ieee",
    backend: str = "auto",
    blocks: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Self-attention core of the mimi transformer with RoPE: `[B, H, L, Dh]` x3 ->
    `[B, L, H*Dh]`.

    lengths: valid positions per item `[B]` int64, or None (all L). Pattern: full (default),
    `window=w` (|t - s| <= w) or `causal=True` with optional `context=c` (0 <= t - s < c).
    fp32_precision: "ieee" (parity) or "tf32", for fp32 inputs on the Triton path.
    backend: "auto" | "triton" | "torch" ("auto" runs head dims over `MAX_HEAD_DIM` on the
    torch path; "triton" refuses them). blocks: `(BLOCK_M, BLOCK_N)` override of the Triton
    tile (tests use small tiles to exercise multi-block loops). Registered as
    `torch.ops.flexicodec_fast.attention`. Not differentiable.
    """
    _check(q, k, v, lengths, window, causal, context, fp32_precision, blocks)
    select_backend(backend, q.device)
    block_m, block_n = blocks or (0, 0)
    return _attention_op(
        q,
        k,
        v,
        lengths,
        window,
        causal,
        context,
        float(max_period),
        fp32_precision,
        backend,
        block_m,
        block_n,
    )
