"""STACodec pieces: RVQ with an assigned first stage (`reference.semantic_rvq`, and the
kernel's `first_codes` mode in `kernels.rvq`), k-means, and the SPD predictor.

The assigned stage has no search, so its code is exact on every path; the later stages
search, and the Triton path's codes are compared on tokens whose best-vs-second distance gap
is above NEAR_TIE at every searched stage (design §4), as in test_kernel_rvq.
"""

import pytest
import torch
import torch.nn.functional as F
from tolerances import NEAR_TIE, assert_elementwise

from flexicodec_fast.kernels.rvq import rvq_encode, stacked_weights
from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.reference.rvq import ResidualVectorQuantize
from flexicodec_fast.reference.semantic_rvq import (
    SemanticPredictor,
    SemanticResidualVectorQuantize,
    assign_clusters,
    fit_kmeans,
    spd_loss_weight,
)

BACKENDS = ["torch", "triton"]
DIM, STAGES, SIZE = 32, 3, 40


pytestmark = pytest.mark.usefixtures("one_thread")


def _module(seed=0):
    torch.manual_seed(seed)
    return SemanticResidualVectorQuantize(DIM, STAGES, SIZE, 8).eval()


def _x(batch, groups, seed=1):
    return torch.randn(batch, groups, DIM, generator=torch.Generator().manual_seed(seed))


def _tokens(batch, groups, seed=2):
    return torch.randint(0, SIZE, (batch, groups), generator=torch.Generator().manual_seed(seed))


def _search_gap(module, x, tokens):
    """Smallest best-vs-second distance gap `[B, G]` over the searched stages (1..)."""
    with torch.no_grad():
        residual = x.transpose(1, 2)
        first = module.quantizers[0]
        z_e = first.in_proj(residual)
        residual = residual - first.out_proj(z_e + (first.dequantize(tokens) - z_e))
        gap = torch.full(x.shape[:2], float("inf"))
        for stage in module.quantizers[1:]:
            e = F.normalize(stage.in_proj(residual).transpose(1, 2).reshape(-1, 8))
            c = F.normalize(stage.codebook.weight)
            dist = e.pow(2).sum(1, keepdim=True) - 2 * e @ c.t() + c.pow(2).sum(1, keepdim=True).t()
            two = dist.topk(2, dim=1, largest=False).values
            gap = torch.minimum(gap, (two[:, 1] - two[:, 0]).view(x.shape[:2]))
            residual = residual - stage(residual)[0]
    return gap


# ----------------------------------------------------------------------------- assigned RVQ


def test_assigned_rvq_is_the_formula():
    """Stage 0 = out_proj(C0[s]) with code s; stages 1.. = a plain RVQ of the same stages on
    what is left, code for code and bit for bit."""
    module = _module()
    x, tokens = _x(2, 11).transpose(1, 2), _tokens(2, 11)
    with torch.no_grad():
        z_q, codes, latents, *_ = module(x, tokens)
        first = module.quantizers[0]
        z_e = first.in_proj(x)
        o0 = first.out_proj(z_e + (first.dequantize(tokens) - z_e))  # the reference's rounding
        plain = ResidualVectorQuantize(DIM, STAGES - 1, SIZE, 8).eval()
        plain.quantizers = module.quantizers[1:]
        rest_q, rest_codes, rest_latents, *_ = plain(x - o0)
    assert torch.equal(codes[:, 0], tokens) and torch.equal(codes[:, 1:], rest_codes)
    assert_elementwise(z_q, o0 + rest_q, "reduction", "reference")
    assert torch.equal(latents[:, 8:], rest_latents)
    assert torch.equal(latents[:, :8], first.in_proj(x))


def test_quantizer_dropout_keeps_the_semantic_stage():
    torch.manual_seed(3)
    module = SemanticResidualVectorQuantize(DIM, STAGES, SIZE, 8, quantizer_dropout=1.0).train()
    x, tokens = _x(4, 6).transpose(1, 2), _tokens(4, 6)
    z_q, codes, *_ = module(x, tokens)
    assert torch.equal(codes[:, 0], tokens)
    first = module.quantizers[0]
    stage0 = first.out_proj(first.dequantize(tokens))
    # Some item kept stage 0 only: it differs from stage 0's output by the straight-through
    # rounding (ulps), the later stages would add O(0.1).
    assert (z_q - stage0).abs().amax(dim=(1, 2)).min() < 1e-6


def test_straight_through_and_codebook_gradients():
    """The input gets the straight-through gradient of stage 0; the codebook loss trains
    exactly the rows of the assigned tokens."""
    module = _module().train()
    module.quantizer_dropout = 0.0
    x = _x(2, 9).transpose(1, 2).requires_grad_()
    tokens = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]] * 2)
    z_q, _, _, commitment, codebook = module(x, tokens)
    (z_q.pow(2).sum() + commitment + codebook).backward()
    assert x.grad.abs().sum() > 0
    row_grad = module.quantizers[0].codebook.weight.grad.abs().sum(1)
    assert (row_grad[:5] > 0).all() and not row_grad[5:].any()


def test_token_errors():
    module = _module()
    x = _x(2, 5).transpose(1, 2)
    with pytest.raises(InputError, match=r"semantic_tokens: expected an integer tensor \[B, G\]"):
        module(x, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(InputError, match=r"expected values in \[0, 40\), got values in \[40, 40\]"):
        module(x, torch.full((2, 5), 40))
    with pytest.raises(InputError, match="semantic_tokens: expected an integer tensor"):
        module(x, torch.zeros(2, 5))


# ----------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,n", [((2, 37), 3), ((1, 1), 3), ((2, 17), 1)])
def test_kernel_assigned_first_stage(backend, shape, n):
    module = _module()
    x, tokens = _x(*shape), _tokens(*shape)
    with torch.no_grad():
        ref_q, ref_codes, *_ = module(x.transpose(1, 2), tokens, n)
    ref_q = ref_q.transpose(1, 2)
    codes, total = rvq_encode(x, *stacked_weights(module), n, first_codes=tokens, backend=backend)
    assert torch.equal(codes[:, 0], tokens)
    if backend == "torch":
        assert torch.equal(codes, ref_codes) and torch.equal(total, ref_q)
        return
    far = _search_gap(module, x, tokens) > NEAR_TIE
    assert far.float().mean() > 0.9
    assert torch.equal(codes.transpose(1, 2)[far], ref_codes.transpose(1, 2)[far])
    assert_elementwise(total[far], ref_q[far], "reduction", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_assigning_the_searched_codes_changes_nothing(backend):
    """first_codes = the codes stage 0 would find: the result of the plain encode, exactly."""
    weights = stacked_weights(_module())
    x = _x(2, 21, seed=4)
    codes, total = rvq_encode(x, *weights, backend=backend)
    again, total_again = rvq_encode(x, *weights, first_codes=codes[:, 0].int(), backend=backend)
    assert torch.equal(again, codes) and torch.equal(total_again, total)


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_codes_of_padded_tokens_are_not_read(backend):
    """With num_groups, tokens past an item may carry any first code (here -1): code 0 and
    a zero sum, the live tokens as without padding."""
    weights = stacked_weights(_module())
    x, tokens = _x(2, 19, seed=5), _tokens(2, 19, seed=5)
    codes, total = rvq_encode(x, *weights, first_codes=tokens, backend=backend)
    num_groups = torch.tensor([19, 7])
    padded = tokens.clone()
    padded[1, 7:] = -1
    codes_ng, total_ng = rvq_encode(
        x, *weights, num_groups=num_groups, first_codes=padded, backend=backend
    )
    live = torch.arange(19) < num_groups[:, None]
    assert torch.equal(codes_ng.transpose(1, 2)[live], codes.transpose(1, 2)[live])
    assert torch.equal(total_ng[live], total[live])
    assert not codes_ng.transpose(1, 2)[~live].any() and not total_ng[~live].any()


def test_kernel_first_codes_opcheck_and_errors():
    weights = stacked_weights(_module())
    x, tokens = _x(2, 5), _tokens(2, 5)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.rvq_encode.default,
        (x, *weights, 2, torch.tensor([5, 2]), "torch", tokens),
    )
    with pytest.raises(TypeError, match="first_codes must be an int32 or int64 tensor or None"):
        rvq_encode(x, *weights, first_codes=tokens.float())
    with pytest.raises(ValueError, match=r"first_codes must be \[B, G\] = \[2, 5\]"):
        rvq_encode(x, *weights, first_codes=tokens[:, :4])


# ----------------------------------------------------------------------------- k-means


def test_assign_clusters_is_the_formula():
    gen = torch.Generator().manual_seed(6)
    features, centroids = torch.randn(50, 3, generator=gen), torch.randn(7, 3, generator=gen)
    expected = [
        min(range(7), key=lambda k, row=row: float(((row - centroids[k]) ** 2).sum()))
        for row in features
    ]
    assert assign_clusters(features, centroids).tolist() == expected


def test_fit_kmeans_recovers_separated_clusters():
    """Four tight blobs far apart: every blob gets its own centroid, at its mean; the same
    seed gives the same centroids."""
    gen = torch.Generator().manual_seed(7)
    centres = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0], [-10.0, -10.0, 0]])
    truth = torch.arange(4).repeat_interleave(30)
    features = centres[truth] + 0.1 * torch.randn(120, 3, generator=gen)
    centroids = fit_kmeans(features, 4, iters=20, seed=0)
    labels = assign_clusters(features, centroids)
    for blob in range(4):
        members = labels[truth == blob]
        assert (members == members[0]).all()
        torch.testing.assert_close(centroids[members[0]], features[truth == blob].mean(0))
    assert len(set(labels.tolist())) == 4
    assert torch.equal(fit_kmeans(features, 4, iters=20, seed=0), centroids)


def test_fit_kmeans_with_fewer_distinct_points_than_clusters():
    features = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    centroids = fit_kmeans(features, 3, iters=5, seed=1)
    assert centroids.shape == (3, 2) and torch.isfinite(centroids).all()
    assert (assign_clusters(features, centroids).bincount(minlength=3) > 0).sum() >= 2


def test_fit_kmeans_errors():
    with pytest.raises(InputError, match=r"features: expected a tensor \[N, D\]"):
        fit_kmeans(torch.zeros(5), 2)
    with pytest.raises(InputError, match=r"k: expected an int in \[1, N = 5\]"):
        fit_kmeans(torch.zeros(5, 2), 6)


# ----------------------------------------------------------------------------- SPD


def _predictor(**options):
    torch.manual_seed(8)
    return SemanticPredictor(
        16, SIZE, dim=16, num_heads=2, num_layers=1, dim_feedforward=32, **options
    )


def test_spd_masks_time_and_channels_in_training_only():
    spd = _predictor(time_masks=2, max_time_width=3, channel_masks=1, max_channel_width=4)
    h = torch.randn(4, 16, 20) + 10.0  # no natural zeros
    torch.manual_seed(9)
    masked = spd.mask(h)
    zero = masked == 0
    # Whole steps (all channels) or whole channels (all steps) are zeroed, nothing else.
    for b in range(4):
        steps, chans = zero[b].all(0), zero[b].all(1)
        assert torch.equal(zero[b], steps.view(1, -1) | chans.view(-1, 1))
        assert steps.sum() <= 6 and chans.sum() <= 4
    assert torch.equal(masked[~zero], h[~zero])
    spd.eval()
    assert torch.equal(spd(h), spd.logits(h))


def test_spd_loss_and_prediction():
    spd = _predictor().eval()
    h = torch.randn(2, 16, 9)
    tokens = _tokens(2, 9)
    lengths = torch.tensor([9, 4])
    logits = spd.logits(h, lengths)
    expected = torch.cat(
        [
            F.cross_entropy(logits[0], tokens[0], reduction="none"),
            F.cross_entropy(logits[1, :4], tokens[1, :4], reduction="none"),
        ]
    ).mean()
    torch.testing.assert_close(spd.loss(h, tokens, lengths), expected)
    predicted = spd.predict(h, lengths)
    assert torch.equal(predicted[0], logits[0].argmax(-1)) and not predicted[1, 4:].any()


def test_spd_loss_weight_schedule():
    assert [spd_loss_weight(s, 3, 0.5) for s in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]


def test_tiny_codec_with_semantic_assignment_and_spd_trains():
    """Encoder -> RVQ with stage 0 assigned from k-means tokens of 'semantic' features ->
    decoder; stage 1 (steps < 8) trains the codec alone, stage 2 adds lambda * SPD. The
    codec loss falls, the SPD loss falls once joint, and at inference SPD's tokens are
    assigned in place of the external ones."""
    torch.manual_seed(10)
    semantic_proj = torch.randn(8, 4)  # the "SSL model": a fixed map of the input

    def batch():
        x = torch.randn(4, 8, 12)
        return x, torch.einsum("bct,cd->btd", x, semantic_proj)

    _, sem = batch()
    k = 8
    centroids = fit_kmeans(sem.reshape(-1, 4), k, iters=10, seed=0)
    encoder, decoder = torch.nn.Conv1d(8, 16, 1), torch.nn.Conv1d(16, 8, 1)
    rvq = SemanticResidualVectorQuantize(16, 2, k, 4)
    spd = SemanticPredictor(16, k, dim=16, num_heads=2, num_layers=1, dim_feedforward=32)
    modules = [encoder, decoder, rvq, spd]
    opt = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=1e-2)
    codec_losses, spd_losses = [], []
    for step in range(20):
        x, sem = batch()
        tokens = assign_clusters(sem.reshape(-1, 4), centroids).view(4, 12)
        h = encoder(x)
        z_q, _, _, commitment, codebook = rvq(h, tokens)
        codec = F.mse_loss(decoder(z_q), x) + 0.25 * commitment + codebook
        lam = spd_loss_weight(step, 8, 1.0)
        spd_loss = spd.loss(h, tokens)
        (codec + lam * spd_loss).backward()
        opt.step()
        opt.zero_grad()
        codec_losses.append(codec.item())
        if lam:
            spd_losses.append(spd_loss.item())
    assert sum(codec_losses[-5:]) < 0.8 * sum(codec_losses[:5])
    assert sum(spd_losses[-5:]) < sum(spd_losses[:5])
    for m in modules:
        m.eval()
    x, _ = batch()
    with torch.no_grad():
        h = encoder(x)
        predicted = spd.predict(h)
        _, codes, *_ = rvq(h, predicted)
    assert torch.equal(codes[:, 0], predicted)
