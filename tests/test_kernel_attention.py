"""Attention kernel (kernels/attention.py) vs `reference.attention`.

The reference core is RoPE (`apply_rope`) + `allowed_keys` + SDPA, output rows past each
item's length zeroed. Tolerances (tests/tolerances.py, design §4): fp32 element-wise and as a
whole tensor; fp16/bf16 by the rule "error of the kernel <= 2x the error of PyTorch in the
same dtype, both against fp64". The interpreter's bf16 `tl.dot` is broken (design §5), so
bf16 runs on the torch path here and is compiled in test_aot.py.
"""

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close, assert_elementwise, assert_same_precision

from flexicodec_fast.kernels import attention as attention_mod
from flexicodec_fast.kernels.attention import apply_rope, attention, rope_tables
from flexicodec_fast.reference import attention as ref_attention
from flexicodec_fast.reference.attention import AttentionPattern

PATTERNS = {
    "full": {},
    "window0": {"window": 0},
    "window1": {"window": 1},
    "window_large": {"window": 100},
    "causal": {"causal": True},
    "causal_context1": {"causal": True, "context": 1},
    "causal_context5": {"causal": True, "context": 5},
}


def reference_core(q, k, v, lengths, pattern_kwargs):
    """`reference.attention`'s attention core, `[B, L, H*Dh]`, invalid rows zeroed."""
    batch, heads, length, head_dim = q.shape
    cos, sin = ref_attention.rope_tables(length, head_dim, device=q.device)
    q, k = ref_attention.apply_rope(q, cos, sin), ref_attention.apply_rope(k, cos, sin)
    pattern = AttentionPattern(**pattern_kwargs)
    mask = ref_attention.allowed_keys(length, pattern, lengths, device=q.device)
    out = F.scaled_dot_product_attention(q, k, v, mask)
    out = out.transpose(1, 2).reshape(batch, length, heads * head_dim)
    if lengths is not None:
        valid = torch.arange(length).view(1, -1, 1) < lengths.view(-1, 1, 1)
        out = torch.where(valid, out, out.new_zeros(()))
    return out


def _qkv(batch, heads, length, head_dim, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, head_dim, generator=gen).to(dtype) for _ in range(3)]


def _lengths(batch, length):
    """Differing per-item lengths: full, shorter, about half (and 0 for a fourth item)."""
    return torch.tensor([length, max(length - 7, 1), max(length // 2, 1), 0][:batch])


def _assert_fp32_close(out, ref):
    assert_elementwise(out, ref, "reduction", "triton")
    assert_close(out, ref, "reduction", "triton")


SHAPES = [  # (B, H, L, Dh): L = 1, L smaller than a block, odd multi-block L
    (1, 1, 1, 16),
    (2, 2, 7, 32),
    (3, 2, 37, 64),
]


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fp32_matches_reference(pattern, shape, backend):
    q, k, v = _qkv(*shape)
    lengths = _lengths(shape[0], shape[2])
    ref = reference_core(q, k, v, lengths, PATTERNS[pattern])
    blocks = (16, 16) if backend == "triton" else None
    out = attention(q, k, v, lengths, backend=backend, blocks=blocks, **PATTERNS[pattern])
    assert out.shape == ref.shape and out.dtype == torch.float32
    _assert_fp32_close(out, ref)


@pytest.mark.parametrize("head_dim", [16, 128])
def test_head_dims_and_default_tiles(head_dim):
    q, k, v = _qkv(2, 1, 40, head_dim, seed=1)
    lengths = torch.tensor([40, 23])
    for pattern in ("full", "window1", "causal_context5"):
        ref = reference_core(q, k, v, lengths, PATTERNS[pattern])
        _assert_fp32_close(attention(q, k, v, lengths, backend="triton", **PATTERNS[pattern]), ref)


@pytest.mark.parametrize(("head_dim", "tile"), [(2, 16), (12, 16), (80, 128), (96, 128)])
def test_head_dims_padded_to_a_power_of_two(head_dim, tile):
    # The kernel's tiles are `tile` wide: the padding must leave q.k, the interleaved RoPE
    # pairs and the 1 / sqrt(Dh) softmax scale on the true head dim, and read nothing past
    # Dh: q, k, v are views whose rows continue with NaN up to the tile's width.
    q, k, v = _qkv(3, 2, 37, head_dim, seed=10)
    q, k, v = (
        torch.cat([t, t.new_full((3, 2, 37, tile - head_dim), torch.nan)], -1) for t in (q, k, v)
    )
    q, k, v = (t[..., :head_dim] for t in (q, k, v))
    lengths = _lengths(3, 37)
    for pattern in ("full", "window1", "causal", "causal_context5"):
        ref = reference_core(q, k, v, lengths, PATTERNS[pattern])
        for blocks in ((16, 16), None):
            out = attention(q, k, v, lengths, backend="triton", blocks=blocks, **PATTERNS[pattern])
            assert out.shape == ref.shape
            _assert_fp32_close(out, ref)


def test_fp16_padded_head_dim_error_within_twice_pytorch():
    q, k, v = (t.half() for t in _qkv(2, 2, 29, 80, seed=11))
    lengths = torch.tensor([29, 18])
    for pattern in ("full", "causal_context5"):
        kwargs = PATTERNS[pattern]
        truth = reference_core(q.double(), k.double(), v.double(), lengths, kwargs)
        torch_fp16 = reference_core(q, k, v, lengths, kwargs).double()
        kernel = attention(q, k, v, lengths, backend="triton", blocks=(16, 16), **kwargs)
        assert_same_precision(kernel, torch_fp16, truth, "attention", "triton", "fp16")


def test_heads_wider_than_the_kernel_take_the_torch_path_under_auto(monkeypatch):
    q, k, v = _qkv(2, 1, 9, 256, seed=12)
    lengths = torch.tensor([9, 5])
    torch_path = attention(q, k, v, lengths, backend="torch", window=2)
    # As on CUDA: "auto" resolves to Triton; which head dims reach the launcher?
    launched = []

    def launch(q, *args):
        launched.append(q.shape[-1])
        return q.new_zeros(q.shape[0], q.shape[2], q.shape[1] * q.shape[3])

    monkeypatch.setattr(attention_mod, "select_backend", lambda backend, device: "triton")
    monkeypatch.setattr(attention_mod, "_launch", launch)
    out = attention(q, k, v, lengths, window=2)
    assert launched == []
    assert torch.equal(out, torch_path)
    attention(q[..., :128], k[..., :128], v[..., :128], lengths)
    assert launched == [128]


def test_no_lengths_and_4_item_batch_with_empty_item():
    q, k, v = _qkv(4, 1, 20, 16, seed=2)
    ref = reference_core(q, k, v, None, {})
    _assert_fp32_close(attention(q, k, v, backend="triton", blocks=(16, 16)), ref)
    lengths = _lengths(4, 20)
    out = attention(q, k, v, lengths, backend="triton", blocks=(16, 16), window=2)
    assert torch.equal(out[3], torch.zeros_like(out[3]))
    _assert_fp32_close(out, reference_core(q, k, v, lengths, {"window": 2}))


def test_fp16_error_within_twice_pytorch():
    q, k, v = _qkv(2, 2, 45, 64, seed=3)
    q, k, v = (t.half() for t in (q, k, v))
    lengths = torch.tensor([45, 30])
    for pattern in ("full", "window1", "causal_context5"):
        kwargs = PATTERNS[pattern]
        truth = reference_core(q.double(), k.double(), v.double(), lengths, kwargs)
        torch_fp16 = reference_core(q, k, v, lengths, kwargs).double()
        kernel = attention(q, k, v, lengths, backend="triton", blocks=(16, 16), **kwargs)
        assert kernel.dtype == torch.float16
        assert_same_precision(kernel, torch_fp16, truth, "attention", "triton", "fp16")
        ours_torch = attention(q, k, v, lengths, backend="torch", **kwargs)
        assert_same_precision(ours_torch, torch_fp16, truth, "attention", "torch", "fp16")


def test_bf16_torch_path_matches_reference():
    q, k, v = (t.bfloat16() for t in _qkv(2, 2, 30, 32, seed=4))
    lengths = torch.tensor([30, 11])
    for pattern in ("full", "window1"):
        truth = reference_core(q.double(), k.double(), v.double(), lengths, PATTERNS[pattern])
        ref = reference_core(q, k, v, lengths, PATTERNS[pattern])
        out = attention(q, k, v, lengths, backend="torch", **PATTERNS[pattern])
        assert_same_precision(out, ref, truth, "attention", "torch", "bf16")
        assert_elementwise(out, ref, "attention", "torch", "bf16")


@pytest.mark.parametrize("pattern", ["window1", "window_large", "causal", "causal_context5"])
def test_torch_path_chunked_over_long_sequences(pattern):
    # L > TORCH_QUERY_CHUNK: the banded torch path runs several query chunks.
    q, k, v = _qkv(2, 1, 600, 16, seed=5)
    lengths = torch.tensor([600, 421])
    ref = reference_core(q, k, v, lengths, PATTERNS[pattern])
    _assert_fp32_close(attention(q, k, v, lengths, backend="torch", **PATTERNS[pattern]), ref)


def test_rope_by_position_slices_changes_nothing(monkeypatch):
    # The torch path rotates q and k ROPE_CHUNK positions at a time (bounded temporaries on
    # long inputs); RoPE is element-wise, so any slicing gives the same bits.
    q, k, v = _qkv(2, 2, 90, 16, seed=9)
    lengths = torch.tensor([90, 61])
    whole = attention(q, k, v, lengths, backend="torch", window=4)
    monkeypatch.setattr(attention_mod, "ROPE_CHUNK", 7)
    assert torch.equal(attention(q, k, v, lengths, backend="torch", window=4), whole)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_batch_invariant(backend):
    q, k, v = _qkv(3, 2, 30, 32, seed=6)
    lengths = torch.tensor([30, 17, 9])
    batched = attention(
        q,
        k,
        v,
        lengths,
        backend=backend,
        blocks=(16, 16) if backend == "triton" else None,
        window=3,
    )
    for b in range(3):
        n = int(lengths[b])
        alone = attention(
            q[b : b + 1, :, :n],
            k[b : b + 1, :, :n],
            v[b : b + 1, :, :n],
            backend=backend,
            blocks=(16, 16) if backend == "triton" else None,
            window=3,
        )
        if backend == "triton":  # programs are per (item, head): the same bits
            assert torch.equal(batched[b, :n], alone[0])
        else:  # SDPA's CPU kernels block differently for another L
            _assert_fp32_close(batched[b, :n], alone[0])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_views_of_a_fused_qkv_projection(backend):
    gen = torch.Generator().manual_seed(7)
    batch, length, heads, head_dim = 2, 19, 2, 16
    projected = torch.randn(batch, length, 3 * heads * head_dim, generator=gen)
    q, k, v = projected.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    assert not q.is_contiguous()
    lengths = torch.tensor([19, 5])
    out = attention(q, k, v, lengths, backend=backend, causal=True)
    ref = reference_core(q.contiguous(), k.contiguous(), v.contiguous(), lengths, {"causal": True})
    _assert_fp32_close(out, ref)


def test_shared_rope_is_the_reference_rope():
    cos, sin = rope_tables(33, 64)
    ref_cos, ref_sin = ref_attention.rope_tables(33, 64)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(2, 3, 33, 64).to(dtype)
        assert torch.equal(apply_rope(x, cos, sin), ref_attention.apply_rope(x, cos, sin))


def test_empty_and_opcheck():
    q, k, v = _qkv(2, 1, 0, 16)
    assert attention(q, k, v, backend="triton").shape == (2, 0, 16)
    q, k, v = _qkv(2, 2, 9, 16)
    lengths = torch.tensor([9, 4])
    torch.library.opcheck(
        torch.ops.flexicodec_fast.attention.default,
        (q, k, v, lengths, 2, False, None, 10000.0, "ieee", "torch", 0, 0),
    )


def test_errors():
    q, k, v = _qkv(2, 1, 8, 16)
    lengths = torch.tensor([8, 3])
    with pytest.raises(ValueError, match=r"q must be \[B, H, L, Dh\]"):
        attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="k must have q's shape"):
        attention(q, k[:, :, :4], v)
    with pytest.raises(TypeError, match="v must have q's dtype torch.float32"):
        attention(q, k, v.half())
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16"):
        attention(q.double(), k.double(), v.double())
    with pytest.raises(TypeError, match="lengths must be int64, got torch.int32"):
        attention(q, k, v, lengths.int())
    with pytest.raises(ValueError, match=r"lengths must be \[B\] = \[2\]"):
        attention(q, k, v, lengths[:1])
    with pytest.raises(ValueError, match="either windowed or causal"):
        attention(q, k, v, window=2, causal=True)
    with pytest.raises(ValueError, match="context applies to causal attention only"):
        attention(q, k, v, context=4)
    with pytest.raises(ValueError, match="context must be None or an int >= 1, got 0"):
        attention(q, k, v, causal=True, context=0)
    with pytest.raises(ValueError, match="window must be None or an int >= 0, got -1"):
        attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="fp32_precision must be one of"):
        attention(q, k, v, fp32_precision="tf16")
    with pytest.raises(ValueError, match="blocks must be None or"):
        attention(q, k, v, blocks=(8, 16))
    with pytest.raises(ValueError, match="head dim of q must be even"):
        odd = torch.randn(1, 1, 4, 15)
        attention(odd, odd, odd)
    wide = torch.randn(1, 1, 4, 130)
    with pytest.raises(ValueError, match="supports head dims up to 128, got 130"):
        attention(wide, wide, wide, backend="triton")
    with pytest.raises(ValueError, match="q must have a contiguous last dimension"):
        qt = q.transpose(2, 3).contiguous().transpose(2, 3)
        attention(qt, k, v, backend="triton")
