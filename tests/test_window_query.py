"""ALMTokenizer pieces (`flexicodec_fast.window_query`): fixed-window query compression through the
interleave kernels with uniform group lengths, the MAE and AR losses.

The encoder and decoder are checked against their sequences built frame by frame in plain
Python, for windows that divide T and windows that do not, with ragged batches; the Triton
interleave kernels (interpreter) give the torch path's results, gradients included.
"""

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_elementwise

from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.reference.rvq import ResidualVectorQuantize
from flexicodec_fast.window_query import (
    ContinuousARPredictor,
    MAEHead,
    WindowQueryDecoder,
    WindowQueryEncoder,
    gather_frames,
    mae_loss,
    mae_mask,
    rvq_stage_outputs,
    sample_window,
    window_segments,
)

C = 16
T = 12
LENGTHS = torch.tensor([12, 7, 1])


pytestmark = pytest.mark.usefixtures("one_thread")


def _encoder(backend="torch", seed=0):
    torch.manual_seed(seed)
    return WindowQueryEncoder(C, C, 2, 1, 32, backend=backend).eval()


def _decoder(backend="torch", seed=1):
    torch.manual_seed(seed)
    return WindowQueryDecoder(C, C, 2, 1, 32, backend=backend).eval()


def _x(batch=3, frames=T, seed=2):
    return torch.randn(batch, C, frames, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("window", [3, 5, 1, 12, 20])
def test_window_segments(window):
    group_ids, num_groups, groups = window_segments(LENGTHS, T, window)
    assert groups == -(-T // window)
    for b, n in enumerate(LENGTHS.tolist()):
        assert group_ids[b].tolist() == [t // window if t < n else -1 for t in range(T)]
        assert int(num_groups[b]) == -(-n // window)
    with pytest.raises(InputError, match="window: expected an int >= 1"):
        window_segments(LENGTHS, T, 0)


def _encoder_by_hand(encoder, x, window, lengths):
    """Per item: `[x_0 .. x_{w-1}, Q, x_w ..., Q]` (a shorter last window keeps its query),
    the transformer on it, the outputs at the query rows."""
    tokens = torch.zeros(x.shape[0], C, -(-x.shape[2] // window))
    for b, n in enumerate(lengths.tolist()):
        rows, query_rows = [], []
        for start in range(0, n, window):
            rows += [x[b, :, t] for t in range(start, min(start + window, n))]
            query_rows.append(len(rows))
            rows.append(encoder.query)
        out = encoder.transformer(torch.stack(rows, 1).unsqueeze(0))[0]
        for g, row in enumerate(query_rows):
            tokens[b, :, g] = out[:, row]
    return tokens


@pytest.mark.parametrize("window", [3, 5])  # divides T = 12, does not
def test_encoder_is_the_formula(window):
    encoder = _encoder()
    x = _x()
    with torch.no_grad():
        tokens, frames = encoder(x, window, LENGTHS)
        expected = _encoder_by_hand(encoder, x, window, LENGTHS)
    assert_elementwise(tokens, expected, "reduction", "reference")
    assert frames.shape == x.shape and not frames[1, :, 7:].any()


def _decoder_by_hand(decoder, tokens, frames, window, lengths):
    """Per item: `[M .. M, t_0 + E, M .. M, t_1 + E, ...]`, the outputs at the mask rows."""
    out_frames = torch.zeros(tokens.shape[0], C, frames)
    for b, n in enumerate(lengths.tolist()):
        rows, frame_rows = [], []
        for g, start in enumerate(range(0, n, window)):
            for _ in range(start, min(start + window, n)):
                frame_rows.append(len(rows))
                rows.append(decoder.mask_token)
            rows.append(tokens[b, :, g] + decoder.token_embedding)
        out = decoder.transformer(torch.stack(rows, 1).unsqueeze(0))[0]
        for t, row in enumerate(frame_rows):
            out_frames[b, :, t] = out[:, row]
    return out_frames


@pytest.mark.parametrize("window", [4, 5])
def test_decoder_is_the_formula(window):
    decoder = _decoder()
    with torch.no_grad():
        decoder.token_embedding.normal_()
    tokens = torch.randn(3, C, -(-T // window))
    with torch.no_grad():
        out = decoder(tokens, T, window, LENGTHS)
        expected = _decoder_by_hand(decoder, tokens, T, window, LENGTHS)
    assert_elementwise(out, expected, "reduction", "reference")
    with pytest.raises(InputError, match=r"tokens: expected G = ceil\(12 / 4\) = 3 tokens"):
        decoder(torch.randn(3, C, 4), T, 4, LENGTHS)


@pytest.mark.parametrize("window", [3, 5])
def test_batched_equals_per_item(window):
    encoder, decoder = _encoder(), _decoder()
    x = _x()
    with torch.no_grad():
        tokens, _ = encoder(x, window, LENGTHS)
        frames = decoder(tokens, T, window, LENGTHS)
        for b, n in enumerate(LENGTHS.tolist()):
            g = -(-n // window)
            tokens_b, _ = encoder(x[b : b + 1, :, :n], window)
            assert_elementwise(tokens[b : b + 1, :, :g], tokens_b, "reduction")
            assert not tokens[b, :, g:].any()
            frames_b = decoder(tokens_b, n, window)
            assert_elementwise(frames[b : b + 1, :, :n], frames_b, "reduction")


@pytest.mark.parametrize("window", [3, 5])
def test_triton_interleave_matches_torch_path(window):
    """The same modules on the interleave kernels (interpreter): outputs and gradients."""
    x = _x()
    results = []
    for backend in ("torch", "triton"):
        encoder, decoder = _encoder(backend), _decoder(backend)
        xg = x.clone().requires_grad_()
        tokens, _ = encoder(xg, window, LENGTHS)
        frames = decoder(tokens, T, window, LENGTHS)
        frames.pow(2).sum().backward()
        results.append((frames, xg.grad, encoder.query.grad, decoder.mask_token.grad))
    for ours, theirs in zip(*results, strict=True):
        assert_elementwise(ours, theirs, "reduction", "triton")


def test_gather_frames_and_sample_window():
    group_ids, _, groups = window_segments(torch.tensor([5]), 5, 2)
    y = torch.arange(5 + groups, dtype=torch.float32).view(1, -1, 1)
    # Rows: f0 f1 Q f2 f3 Q f4 Q -> frames at rows 0, 1, 3, 4, 6.
    assert gather_frames(y, group_ids).flatten().tolist() == [0, 1, 3, 4, 6]
    torch.manual_seed(3)
    drawn = {sample_window([2, 3, 4]) for _ in range(50)}
    assert drawn == {2, 3, 4}


def test_mae_mask_and_loss():
    torch.manual_seed(4)
    lengths = torch.tensor([40, 10, 0])
    for _ in range(10):
        mask = mae_mask(lengths, 40)
        counts = mask.sum(1)
        assert not mask[1, 10:].any() and counts[2] == 0
        assert round(0.2 * 40) <= counts[0] <= round(0.3 * 40)
        assert round(0.2 * 10) <= counts[1] <= round(0.3 * 10)
    prediction, target = torch.randn(3, C, 40), torch.randn(3, C, 40)
    expected = torch.stack(
        [(prediction[b, :, t] - target[b, :, t]).pow(2).mean() for b, t in mask.nonzero().tolist()]
    ).mean()
    torch.testing.assert_close(mae_loss(prediction, target, mask), expected)


def test_ar_predictor_is_causal():
    """Prediction g sees the context up to g and the target before g only."""
    torch.manual_seed(5)
    ar = ContinuousARPredictor(C, C, 2, 1, 32).eval()
    context, target = torch.randn(2, C, 9), torch.randn(2, C, 9)
    with torch.no_grad():
        base = ar(context, target)
        context2, target2 = context.clone(), target.clone()
        context2[..., 5] += 1.0
        target2[..., 5] += 1.0
        moved_context, moved_target = ar(context2, target), ar(context, target2)
    assert torch.equal(moved_context[..., :5], base[..., :5])
    assert not torch.allclose(moved_context[..., 5], base[..., 5])
    assert torch.equal(moved_target[..., :6], base[..., :6])
    assert not torch.allclose(moved_target[..., 6], base[..., 6])


def test_ar_loss_is_the_formula():
    torch.manual_seed(6)
    ar = ContinuousARPredictor(C, C, 2, 1, 32).eval()
    stages = [torch.randn(2, C, 7) for _ in range(3)]
    lengths = torch.tensor([7, 3])
    with torch.no_grad():
        prediction = ar(stages[0] + stages[1], stages[2], lengths)
        error = (prediction - stages[2]).pow(2).mean(1)
        expected = torch.cat([error[0], error[1, :3]]).mean()
        torch.testing.assert_close(ar.loss(stages, lengths), expected)
    with pytest.raises(InputError, match="at least 3 RVQ stage outputs"):
        ar.loss(stages[:2])


def test_rvq_stage_outputs_sum_to_the_rvq_output():
    torch.manual_seed(7)
    rvq = ResidualVectorQuantize(C, 3, 32, 4).eval()
    z = torch.randn(2, C, 5)
    with torch.no_grad():
        z_q, *_ = rvq(z)
        stages = rvq_stage_outputs(rvq, z, 3)
    torch.testing.assert_close(stages[0] + stages[1] + stages[2], z_q)


def test_tiny_codec_with_mae_and_ar_losses_trains():
    """Window-query encoder -> 3-stage RVQ -> decoder with w drawn per batch from {2, 3, 4}
    and T = 10 (not divisible by 3 or 4), on one ragged batch: reconstruction + VQ + MAE +
    AR losses fall within 15 steps."""
    torch.manual_seed(8)
    encoder = WindowQueryEncoder(C, C, 2, 1, 32, backend="torch")
    decoder = WindowQueryDecoder(C, C, 2, 1, 32, backend="torch")
    rvq = ResidualVectorQuantize(C, 3, 32, 4)
    mae_head = MAEHead(C, C, 2, 1, 32)
    ar = ContinuousARPredictor(C, C, 2, 1, 32)
    modules = [encoder, decoder, rvq, mae_head, ar]
    opt = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=1e-2)
    t = torch.linspace(0, 1, 10)
    lengths = torch.tensor([10, 7])
    x = torch.sin(6.28 * torch.rand(2, C, 1) * 3 * t + torch.rand(2, C, 1))
    losses = []
    for _ in range(15):
        window = sample_window([2, 3, 4])
        mask = mae_mask(lengths, 10)
        tokens, frames = encoder(x, window, lengths, mask)
        num_tokens = (lengths + window - 1) // window
        z_q, _, _, commitment, codebook = rvq(tokens)
        recon = decoder(z_q, 10, window, lengths)
        valid = (torch.arange(10) < lengths.view(-1, 1)).unsqueeze(1)
        loss = (
            F.mse_loss(recon * valid, x * valid)
            + 0.25 * commitment
            + codebook
            + mae_loss(mae_head(frames, lengths), x, mask)
            + ar.loss(rvq_stage_outputs(rvq, tokens, 3), num_tokens)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])
