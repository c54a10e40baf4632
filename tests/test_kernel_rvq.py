"""RVQ kernels (kernels/rvq.py) vs `reference.rvq.ResidualVectorQuantize` (eval mode).

The torch path is the reference's arithmetic in its layout: codes and sums are bit-identical.
The Triton kernel reduces in other orders, so a code whose best and second-best distances
are within ~1e-6 may differ (design §4); each token's smallest best-vs-second gap over its
stages is measured on the reference, and codes must be equal on every token whose gap is
above NEAR_TIE. Sums are fp32 reductions, judged by tests/tolerances.py.
"""

import pytest
import torch
import torch.nn.functional as F
from tolerances import NEAR_TIE, assert_close, assert_elementwise, assert_rounded_from

from flexicodec_fast.kernels import rvq as rvq_mod
from flexicodec_fast.kernels.rvq import rvq_decode, rvq_encode, stacked_weights
from flexicodec_fast.reference.rvq import ResidualVectorQuantize

BACKENDS = ["torch", "triton"]
DIM, STAGES, SIZE = 48, 4, 100  # 100 codes: three full blocks of 32 and a partial one


def _module(dim=DIM, stages=STAGES, size=SIZE, seed=0):
    torch.manual_seed(seed)
    return ResidualVectorQuantize(dim, stages, size, 8).eval()


def _reference(module, x, n):
    """(codes [B, n, G], sum [B, G, D], smallest best-vs-second distance gap [B, G])."""
    with torch.no_grad():
        z_q, codes, *_ = module(x.transpose(1, 2), n)
        residual = x.transpose(1, 2)
        gap = torch.full(x.shape[:2], float("inf"))
        for stage in module.quantizers[:n]:
            e = F.normalize(stage.in_proj(residual).transpose(1, 2).reshape(-1, 8))
            c = F.normalize(stage.codebook.weight)
            dist = e.pow(2).sum(1, keepdim=True) - 2 * e @ c.t() + c.pow(2).sum(1, keepdim=True).t()
            two = dist.topk(2, dim=1, largest=False).values
            gap = torch.minimum(gap, (two[:, 1] - two[:, 0]).view(x.shape[:2]))
            residual = residual - stage(residual)[0]
    return codes, z_q.transpose(1, 2), gap


def _x(batch, groups, dim=DIM, seed=1):
    return torch.randn(batch, groups, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,n", [((2, 37), 4), ((1, 1), 4), ((3, 16), 2), ((2, 17), 1)])
def test_encode_matches_reference(backend, shape, n):
    module = _module()
    x = _x(*shape)
    ref_codes, ref_sum, gap = _reference(module, x, n)
    codes, total = rvq_encode(x, *stacked_weights(module), n_quantizers=n, backend=backend)
    assert codes.dtype == torch.int64 and codes.shape == (shape[0], n, shape[1])
    if backend == "torch":
        assert torch.equal(codes, ref_codes) and torch.equal(total, ref_sum)
        return
    far = gap > NEAR_TIE
    assert far.float().mean() > 0.9
    assert torch.equal(codes.transpose(1, 2)[far], ref_codes.transpose(1, 2)[far])
    assert_elementwise(total[far], ref_sum[far], "reduction", backend)
    assert_close(total[far], ref_sum[far], "reduction", backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_codes", [1, 3, STAGES])
def test_decode_matches_reference(backend, n_codes):
    module = _module()
    codes = torch.randint(0, SIZE, (2, n_codes, 37), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = module.from_codes(codes).transpose(1, 2)
    _, _, cb, _, out_w, out_b = stacked_weights(module)
    out = rvq_decode(codes, cb, out_w, out_b, backend=backend)
    assert_elementwise(out, expected, "reduction", backend)
    assert_close(out, expected, "dequantized", backend)
    assert torch.equal(rvq_decode(codes.int(), cb, out_w, out_b, backend=backend), out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_groups_skips_padded_tokens(backend):
    """Items with 37, 20 and 0 live tokens: live tokens are unchanged, the rest get code 0
    and a zero sum (a fully padded block of 16 tokens does no work)."""
    module = _module()
    weights = stacked_weights(module)
    x = _x(3, 37)
    codes, total = rvq_encode(x, *weights, backend=backend)
    num_groups = torch.tensor([37, 20, 0])
    codes_ng, total_ng = rvq_encode(x, *weights, num_groups=num_groups, backend=backend)
    live = torch.arange(37) < num_groups[:, None]
    assert torch.equal(codes_ng.transpose(1, 2)[live], codes.transpose(1, 2)[live])
    assert torch.equal(total_ng[live], total[live])
    assert not codes_ng.transpose(1, 2)[~live].any() and not total_ng[~live].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_take_the_first_index(backend):
    """Every code duplicated, the copy 100 rows later (in the next codebook block): the
    distances tie exactly and every path must pick the first copy, as the reference does."""
    module = _module(size=50)
    with torch.no_grad():
        for stage in module.quantizers:
            w = stage.codebook.weight
            stage.codebook = torch.nn.Embedding.from_pretrained(torch.cat([w, w, w]))
    x = _x(2, 21)
    ref_codes, ref_sum, _ = _reference(module, x, STAGES)
    assert ref_codes.max() < 50
    codes, total = rvq_encode(x, *stacked_weights(module), backend=backend)
    assert torch.equal(codes, ref_codes)
    assert_elementwise(total, ref_sum, "reduction", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_are_the_only_source_of_disagreement(backend):
    """Each code has a twin 1e-7 away in the next block: most tokens become near-ties. Codes
    may differ only on tokens whose reference gap is within 1e-6; the torch path never
    differs."""
    module = _module(size=64)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for stage in module.quantizers:
            w = stage.codebook.weight
            twin = w + 1e-7 * torch.randn(w.shape, generator=gen)
            stage.codebook = torch.nn.Embedding.from_pretrained(torch.cat([w, twin]))
    x = _x(2, 32)
    ref_codes, _, gap = _reference(module, x, STAGES)
    codes, _ = rvq_encode(x, *stacked_weights(module), backend=backend)
    near = gap <= NEAR_TIE
    assert near.any()
    differ = (codes != ref_codes).any(dim=1)
    assert not (differ & ~near).any()
    if backend == "torch":
        assert not differ.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_inputs(backend):
    """Half x is computed in fp32: the codes are the fp32 reference's on the upcast values."""
    module = _module()
    x16 = _x(2, 19).half()
    ref_codes, ref_sum, gap = _reference(module, x16.float(), STAGES)
    codes, total = rvq_encode(x16, *stacked_weights(module), backend=backend)
    assert total.dtype == torch.float16
    far = gap > NEAR_TIE
    assert torch.equal(codes.transpose(1, 2)[far], ref_codes.transpose(1, 2)[far])
    assert_rounded_from(total[far], ref_sum[far], "reduction", backend)


def test_small_blocks_and_non_power_of_two_dims(monkeypatch):
    """Codebook blocks of 16 (several partial), D = 40 (padded to 64), codebook dim 6."""
    monkeypatch.setattr(rvq_mod, "BLOCK_K", 16)
    torch.manual_seed(3)
    module = ResidualVectorQuantize(40, 3, 70, 6).eval()
    q = module.quantizers
    with torch.no_grad():
        cb = torch.stack([s.codebook.weight for s in q])
        weights = (
            torch.stack([s.in_proj.weight()[:, :, 0] for s in q]),
            torch.stack([s.in_proj.bias for s in q]),
            cb,
            F.normalize(cb, dim=-1),
            torch.stack([s.out_proj.weight()[:, :, 0] for s in q]),
            torch.stack([s.out_proj.bias for s in q]),
        )
    x = _x(2, 18, dim=40)
    ref_codes, ref_sum = rvq_encode(x, *weights, backend="torch")
    with torch.no_grad():
        z_q, codes_module, *_ = module(x.transpose(1, 2))
    assert torch.equal(ref_codes, codes_module)
    codes, total = rvq_encode(x, *weights, backend="triton")
    assert torch.equal(codes, ref_codes)
    assert_elementwise(total, ref_sum, "reduction", "triton")
    assert_elementwise(
        rvq_decode(codes, *weights[2:3], *weights[4:], backend="triton"),
        z_q.transpose(1, 2),
        "reduction",
        "triton",
    )


def test_torch_path_chunks_the_distance_matrix(monkeypatch):
    monkeypatch.setattr(rvq_mod, "TORCH_CHUNK", 7)
    module = _module()
    x = _x(2, 37)
    ref_codes, ref_sum, _ = _reference(module, x, STAGES)
    codes, total = rvq_encode(x, *stacked_weights(module), backend="torch")
    assert torch.equal(codes, ref_codes) and torch.equal(total, ref_sum)


def test_opcheck():
    module = _module()
    weights = stacked_weights(module)
    x = _x(2, 5)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.rvq_encode.default,
        (x, *weights, 3, torch.tensor([5, 2]), "torch"),
    )
    codes = torch.randint(0, SIZE, (2, 3, 5))
    torch.library.opcheck(
        torch.ops.flexicodec_fast.rvq_decode.default,
        (codes, weights[2], weights[4], weights[5], "torch"),
    )


def test_errors():
    module = _module()
    in_w, in_b, cb, cb_norm, out_w, out_b = stacked_weights(module)
    x = _x(2, 5)
    with pytest.raises(ValueError, match=r"x must be a \[B, G, D\] tensor"):
        rvq_encode(x[0], in_w, in_b, cb, cb_norm, out_w, out_b)
    with pytest.raises(ValueError, match=r"x must be \[B, G, D\] with D = 48"):
        rvq_encode(x[..., :40], in_w, in_b, cb, cb_norm, out_w, out_b)
    with pytest.raises(ValueError, match=r"cb_norm must be of shape \[4, 100, 8\], got \[4, 99"):
        rvq_encode(x, in_w, in_b, cb, cb_norm[:, :99], out_w, out_b)
    with pytest.raises(ValueError, match=r"in_w must be of shape \[4, 8, 48\]"):
        rvq_encode(x, in_w[:3], in_b, cb, cb_norm, out_w, out_b)
    with pytest.raises(TypeError, match="in_b must be float32, float16 or bfloat16"):
        rvq_encode(x, in_w, in_b.double(), cb, cb_norm, out_w, out_b)
    for n in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match=r"n_quantizers must be an int in \[1, 4\] or None"):
            rvq_encode(x, in_w, in_b, cb, cb_norm, out_w, out_b, n_quantizers=n)
    with pytest.raises(TypeError, match="num_groups must be an int64 tensor or None"):
        rvq_encode(x, in_w, in_b, cb, cb_norm, out_w, out_b, num_groups=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"num_groups must be \[B\] = \[2\]"):
        rvq_encode(x, in_w, in_b, cb, cb_norm, out_w, out_b, num_groups=torch.tensor([1]))
    with pytest.raises(TypeError, match="codes must be int32 or int64, got torch.float32"):
        rvq_decode(torch.zeros(2, 1, 5), cb, out_w, out_b)
    with pytest.raises(ValueError, match=r"codes must be \[B, K, G\] with 1 <= K <= 4"):
        rvq_decode(torch.zeros(2, 5, 5, dtype=torch.long), cb, out_w, out_b)
    with pytest.raises(ValueError, match=r"out_w must be of shape \[4, 48, 8\]"):
        rvq_decode(torch.zeros(2, 1, 5, dtype=torch.long), cb, out_w[..., :7], out_b)
    with pytest.raises(ValueError, match="x must have a contiguous last dimension"):
        rvq_encode(
            x.transpose(1, 2).contiguous().transpose(1, 2),
            in_w,
            in_b,
            cb,
            cb_norm,
            out_w,
            out_b,
            backend="triton",
        )
