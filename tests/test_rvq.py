"""Residual VQ (spec §8) against an independent loop written from the spec formulas."""

import pytest
import torch
from tolerances import assert_close, assert_elementwise

from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.reference.rvq import ResidualVectorQuantize, VectorQuantize

D, K, SIZE, DIM = 16, 4, 32, 4


def _rvq(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    rvq = ResidualVectorQuantize(D, K, SIZE, DIM, dropout)
    with torch.no_grad():
        for q in rvq.quantizers:
            for conv in (q.in_proj, q.out_proj):
                conv.weight_g.uniform_(0.5, 2.0)
                conv.bias.normal_(0, 0.1)
    return rvq.eval()


def _spec_loop(rvq, z, n):
    """Spec §8 written out in float64: W = g V / |V|, e = z_e / max(|z_e|, 1e-12) (the eps is
    the spec's),
    dist = |e|^2 - 2 e.C^T + |C|^2 on normalised rows, nearest code, dequantise with the raw
    row, out_proj, residual update. Returns codes [B, n, G], z_q [B, D, G] and the gap between
    the best and second-best distance of every lookup."""

    def weight(conv):
        v, g = conv.weight_v.double(), conv.weight_g.double()
        return (g * v / v.flatten(1).norm(dim=1)[:, None, None])[:, :, 0]

    residual, z_q = z.double(), torch.zeros_like(z, dtype=torch.float64)
    codes, gaps = [], []
    for q in rvq.quantizers[:n]:
        z_e = (
            torch.einsum("oi,big->bog", weight(q.in_proj), residual)
            + q.in_proj.bias.double()[:, None]
        )
        e = z_e.transpose(1, 2)
        e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        table = q.codebook.weight.double()
        c = table / table.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        dist = e.pow(2).sum(-1, keepdim=True) - 2 * e @ c.T + c.pow(2).sum(-1)
        best = dist.argmin(-1)
        gaps.append(dist.topk(2, dim=-1, largest=False).values.diff(dim=-1))
        out = torch.einsum("oi,big->bog", weight(q.out_proj), table[best].transpose(1, 2))
        out = out + q.out_proj.bias.double()[:, None]
        z_q, residual = z_q + out, residual - out
        codes.append(best)
    return torch.stack(codes, 1), z_q, torch.cat(gaps).min().item()


@pytest.mark.parametrize("n", [1, 3, K])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_codes_equal_spec_loop(seed, n):
    rvq = _rvq(seed)
    z = torch.randn(3, D, 11, generator=torch.Generator().manual_seed(seed + 10))
    with torch.no_grad():
        z_q, codes, latents, commitment, codebook = rvq(z, n)
    want_codes, want_z_q, gap = _spec_loop(rvq, z, n)
    assert gap > 1e-5  # 10 x NEAR_TIE from a tie: fp32 and fp64 must agree on every lookup
    assert codes.dtype == torch.int64 and codes.shape == (3, n, 11)
    assert torch.equal(codes, want_codes)
    assert_elementwise(z_q.double(), want_z_q, "quantized", "reference")
    assert latents.shape == (3, n * DIM, 11)
    assert commitment.shape == () and codebook.shape == ()
    assert torch.allclose(commitment, codebook)  # equal values in the forward pass


def test_stages_are_a_prefix():
    rvq, z = _rvq(), torch.randn(2, D, 7)
    with torch.no_grad():
        full = rvq(z)
        for n in range(1, K + 1):
            part = rvq(z, n)
            assert torch.equal(part[1], full[1][:, :n])
            assert torch.equal(part[2], full[2][:, : n * DIM])


def test_first_index_wins_ties():
    vq = VectorQuantize(DIM, 8, DIM)
    with torch.no_grad():
        # in_proj = identity (g = |row of I| = 1), so z_e = z
        vq.in_proj.weight_v.copy_(torch.eye(DIM)[:, :, None])
        vq.in_proj.weight_g.fill_(1.0)
        vq.in_proj.bias.zero_()
        vq.codebook.weight.normal_()
        vq.codebook.weight[5] = vq.codebook.weight[2]
        row = vq.codebook.weight[2]
        z = torch.stack([0.5 * row, 2 * row, row], -1)
        assert torch.equal(vq.nearest(z[None]), torch.tensor([[2, 2, 2]]))
        vq.codebook.weight.copy_(torch.randn(DIM).expand(8, DIM))
        assert torch.equal(vq.nearest(torch.randn(1, DIM, 6)), torch.zeros(1, 6, dtype=torch.long))


def test_dequantise_uses_raw_codebook_rows():
    rvq = _rvq()
    q = rvq.quantizers[0]
    codes = torch.tensor([[0, 3, 3, 31]])
    assert torch.equal(q.dequantize(codes), q.codebook.weight[codes].transpose(1, 2))


@pytest.mark.parametrize("n", [1, 2, K])
def test_from_codes_reproduces_forward(n):
    """Forward's z_q carries the straight-through sum `z_e + (C - z_e)`, which rounds
    differently from `C`, so the two agree to fp32 rounding, not bit for bit."""
    rvq, z = _rvq(3), torch.randn(4, D, 9)
    with torch.no_grad():
        z_q, codes, *_ = rvq(z, n)
        decoded = rvq.from_codes(codes)
    assert decoded.shape == z_q.shape
    assert_close(decoded, z_q, "dequantized", "reference")


@pytest.mark.parametrize("dropout, dropped", [(1.0, 6), (0.5, 3), (0.0, 0)])
def test_training_dropout_masks_each_item(dropout, dropped):
    rvq, batch = _rvq(4, dropout).train(), 6
    z = torch.randn(batch, D, 5, requires_grad=True)
    torch.manual_seed(123)
    z_q, codes, latents, commitment, codebook = rvq(z, n_quantizers=1)  # ignored in training
    # the official draw: every item gets U{1..K} stages, the first int(B * dropout) use it
    torch.manual_seed(123)
    n_b = torch.full((batch,), K + 1)
    n_b[:dropped] = torch.randint(1, K + 1, (batch,))[:dropped]
    assert codes.shape == (batch, K, 5) and latents.shape == (batch, K * DIM, 5)

    residual, want_z_q = z.detach(), 0
    want_commit = want_book = 0
    with torch.no_grad():
        for k, q in enumerate(rvq.quantizers):
            out, commit_k, book_k, codes_k, _ = q(residual)
            keep = (k < n_b).float()
            want_z_q = want_z_q + out * keep[:, None, None]
            want_commit = want_commit + (commit_k * keep).mean()
            want_book = want_book + (book_k * keep).mean()
            assert torch.equal(codes[:, k], codes_k)
            residual = residual - out  # every stage advances the residual, masked or not
    assert torch.equal(z_q.detach(), want_z_q)
    assert torch.equal(commitment.detach(), want_commit)
    assert torch.equal(codebook.detach(), want_book)

    (z_q.square().mean() + commitment + codebook).backward()
    q0 = rvq.quantizers[0]
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert q0.codebook.weight.grad.abs().sum() > 0  # codebook loss reaches the rows used
    assert q0.in_proj.weight_v.grad.abs().sum() > 0 and q0.out_proj.weight_g.grad.abs().sum() > 0


def test_training_item_with_one_stage_gets_stage_zero_only():
    rvq = _rvq(5, 1.0).train()
    z = torch.randn(8, D, 3)
    torch.manual_seed(7)
    n_b = torch.randint(1, K + 1, (8,))
    assert (n_b == 1).any() and (n_b == K).any()
    torch.manual_seed(7)
    with torch.no_grad():
        z_q, *_ = rvq(z)
        first = rvq.quantizers[0](z)[0]
    ones = n_b == 1
    assert torch.equal(z_q[ones], first[ones])
    assert not torch.allclose(z_q[~ones], first[~ones])


@pytest.mark.parametrize("n", [0, K + 1, 2.0, True])
def test_bad_n_quantizers(n):
    with pytest.raises(InputError):
        _rvq()(torch.randn(1, D, 2), n)


@pytest.mark.parametrize(
    "codes",
    [
        torch.zeros(1, K + 1, 2, dtype=torch.long),
        torch.zeros(1, 0, 2, dtype=torch.long),
        torch.zeros(1, 2, 2),
        torch.zeros(2, 2, dtype=torch.long),
        torch.full((1, 2, 2), SIZE),
        torch.full((1, 2, 2), -1),
    ],
)
def test_bad_codes(codes):
    with pytest.raises(InputError):
        _rvq().from_codes(codes)


def test_fixture_quantizer_loads_standalone(fixture_state_dict):
    prefix = "dac.quantizer."
    state = {k[len(prefix) :]: v for k, v in fixture_state_dict.items() if k.startswith(prefix)}
    rvq = ResidualVectorQuantize(64, 4, 64, 8, 1.0)
    result = rvq.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
