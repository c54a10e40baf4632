"""Interleave / retrieve kernels (kernels/interleave.py) vs the reference aggregator layout.

The reference builds the sequence with `interleave_positions` + `scatter_positions` and reads
the query outputs with a gather (`reference.aggregator`). Both ops are data movement plus one
fp32 addition (`mean + embedding`), so every path is bit-identical to the reference, forward
and backward, in fp32 and fp16. Outputs may be sized for the worst case G = T: rows past the
reference's `T + G_max` (sequence) or `G_max` (tokens) must be zero.
"""

import pytest
import torch
from tolerances import assert_elementwise

from flexicodec_fast.kernels import interleave as interleave_mod
from flexicodec_fast.kernels.interleave import interleave, retrieve
from flexicodec_fast.reference.aggregator import interleave_positions, scatter_positions
from flexicodec_fast.reference.merging import Segmentation, group_ids_from_lengths

BACKENDS = ["torch", "triton"]

# Per-item group lengths (the padded frames of shorter items are past their lengths).
CASES = {
    "mixed_padded_tails": [[1, 3, 2, 8, 1], [2, 2, 1], [5]],
    "one_group": [[1]],
    "one_long_group": [[21]],
    "T_1_and_empty_item": [[1], []],
    "every_frame_merged": [[8, 8, 8, 4]],
    "no_frame_merged": [[1] * 19],
    "odd_many_groups": [[1, 2, 3, 1, 1, 2, 1, 4, 1, 1, 2, 3, 1], [3, 3, 3, 1, 1, 1, 1]],
}


def _segmentation(lengths_per_item) -> Segmentation:
    groups = max(len(g) for g in lengths_per_item)
    token_lengths = torch.tensor(
        [g + [0] * (groups - len(g)) for g in lengths_per_item], dtype=torch.long
    ).view(len(lengths_per_item), groups)
    frame_lengths = token_lengths.sum(1)
    frames = max(int(frame_lengths.max()), 1)
    group_ids = group_ids_from_lengths(token_lengths, frames)
    num_groups = (token_lengths > 0).sum(1)
    return Segmentation(
        torch.zeros(len(lengths_per_item), frames - 1),
        group_ids,
        token_lengths,
        num_groups,
        frame_lengths,
    )


def _reference_sequence(x, means, embedding, seg):
    batch, frames, dim = x.shape
    frame_pos, query_pos, _ = interleave_positions(seg)
    sequence = x.new_zeros(batch, frames + seg.max_groups, dim)
    scatter_positions(sequence, x, frame_pos)
    scatter_positions(sequence, means[:, : seg.max_groups] + embedding, query_pos)
    return sequence


def _reference_tokens(y, seg):
    _, query_pos, _ = interleave_positions(seg)
    index = query_pos.clamp(min=0).unsqueeze(-1).expand(-1, -1, y.shape[-1])
    return torch.gather(y, 1, index) * (query_pos >= 0).unsqueeze(-1).to(y.dtype)


def _inputs(seg, groups, dim=20, dtype=torch.float32, seed=0):
    """Frames (garbage past each item), means `[B, groups, D]` (garbage past each item's
    groups: they must be ignored) and an fp32 embedding."""
    gen = torch.Generator().manual_seed(seed)
    batch, frames = seg.group_ids.shape
    x = torch.randn(batch, frames, dim, generator=gen).to(dtype)
    means = torch.randn(batch, groups, dim, generator=gen).to(dtype)
    embedding = torch.randn(dim, generator=gen)
    return x, means, embedding


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("worst_case", [False, True])
def test_forward_matches_reference(backend, name, worst_case):
    seg = _segmentation(CASES[name])
    frames = seg.group_ids.shape[1]
    groups = frames if worst_case else seg.max_groups
    x, means, embedding = _inputs(seg, groups)
    expected = _reference_sequence(x, means, embedding.to(x.dtype), seg)
    out = interleave(
        x, means, embedding, seg.group_ids, seg.frame_lengths, seg.num_groups, backend=backend
    )
    assert out.shape == (x.shape[0], frames + groups, x.shape[2])
    length = frames + seg.max_groups
    assert torch.equal(out[:, :length], expected)
    assert not out[:, length:].any()
    y = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    tokens = retrieve(y, seg.group_ids, seg.num_groups, backend=backend)
    assert tokens.shape == (x.shape[0], groups, x.shape[2])
    assert torch.equal(tokens[:, : seg.max_groups], _reference_tokens(y[:, :length], seg))
    assert not tokens[:, seg.max_groups :].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_bit_identical(backend):
    """Half frames and means with an fp32 embedding: the reference adds in fp32 and rounds on
    the scatter; the kernel does the same single rounding."""
    seg = _segmentation(CASES["mixed_padded_tails"])
    x, means, embedding = _inputs(seg, seg.max_groups, dim=130, dtype=torch.float16)
    out = interleave(
        x, means, embedding, seg.group_ids, seg.frame_lengths, seg.num_groups, backend=backend
    )
    batch, frames, dim = x.shape
    frame_pos, query_pos, _ = interleave_positions(seg)
    expected = x.new_zeros(batch, frames + seg.max_groups, dim)
    scatter_positions(expected, x, frame_pos)
    scatter_positions(expected, (means + embedding).half(), query_pos)  # fp32 sum, one rounding
    assert out.dtype == torch.float16 and torch.equal(out, expected)
    assert torch.equal(
        retrieve(out, seg.group_ids, seg.num_groups, backend=backend), _reference_tokens(out, seg)
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["mixed_padded_tails", "T_1_and_empty_item", "odd_many_groups"])
def test_backward_matches_reference(backend, name):
    seg = _segmentation(CASES[name])
    frames = seg.group_ids.shape[1]
    x0, means0, emb0 = _inputs(seg, frames)  # worst-case G = T
    grad = torch.randn(
        x0.shape[0], 2 * frames, x0.shape[2], generator=torch.Generator().manual_seed(2)
    )
    x, means, emb = (t.clone().requires_grad_() for t in (x0, means0, emb0))
    interleave(
        x, means, emb, seg.group_ids, seg.frame_lengths, seg.num_groups, backend=backend
    ).backward(grad)
    xr, meansr, embr = (t.clone().requires_grad_() for t in (x0, means0, emb0))
    length = frames + seg.max_groups
    _reference_sequence_autograd(xr, meansr, embr, seg).backward(grad[:, :length])
    assert torch.equal(x.grad, xr.grad)
    assert torch.equal(means.grad, meansr.grad)
    assert_elementwise(emb.grad, embr.grad, "single_reduction", backend)

    y0 = torch.randn(x0.shape[0], 2 * frames, x0.shape[2])
    grad_tokens = torch.randn(x0.shape[0], frames, x0.shape[2])
    y = y0.clone().requires_grad_()
    retrieve(y, seg.group_ids, seg.num_groups, backend=backend).backward(grad_tokens)
    yr = y0[:, :length].clone().requires_grad_()
    _reference_tokens(yr, seg).backward(grad_tokens[:, : seg.max_groups])
    assert torch.equal(y.grad[:, :length], yr.grad)
    assert not y.grad[:, length:].any()


def _reference_sequence_autograd(x, means, embedding, seg):
    """The reference layout built out of place, so autograd gives its gradients."""
    batch, frames, dim = x.shape
    frame_pos, query_pos, _ = interleave_positions(seg)
    rows = torch.arange(batch).view(-1, 1)
    sequence = x.new_zeros(batch, frames + seg.max_groups, dim)
    live = frame_pos >= 0
    sequence = sequence.index_put((rows.expand_as(frame_pos)[live], frame_pos[live]), x[live])
    queries = means[:, : seg.max_groups] + embedding
    live = query_pos >= 0
    return sequence.index_put((rows.expand_as(query_pos)[live], query_pos[live]), queries[live])


def test_block_boundaries_with_small_blocks(monkeypatch):
    """Blocks of 4 rows: queries and tails land in other programs' rows."""
    monkeypatch.setattr(interleave_mod, "BLOCK_T", 4)
    monkeypatch.setattr(interleave_mod, "BLOCK_D", 8)
    seg = _segmentation(CASES["odd_many_groups"])
    x, means, embedding = _inputs(seg, seg.group_ids.shape[1], dim=19)
    out = interleave(
        x, means, embedding, seg.group_ids, seg.frame_lengths, seg.num_groups, backend="triton"
    )
    ref_out = interleave(
        x, means, embedding, seg.group_ids, seg.frame_lengths, seg.num_groups, backend="torch"
    )
    assert torch.equal(out, ref_out)
    assert torch.equal(
        retrieve(out, seg.group_ids, seg.num_groups, backend="triton"),
        retrieve(out, seg.group_ids, seg.num_groups, backend="torch"),
    )


def test_torch_path_many_groups():
    """G = T = 4000: the torch path scatters and gathers, O(B (T + G) D)."""
    seg = _segmentation([[1] * 4000])
    x, means, embedding = _inputs(seg, 4000, dim=2)
    out = interleave(
        x, means, embedding, seg.group_ids, seg.frame_lengths, seg.num_groups, backend="torch"
    )
    assert torch.equal(out[0, ::2], x[0]) and torch.equal(out[0, 1::2], means[0] + embedding)
    assert torch.equal(retrieve(out, seg.group_ids, seg.num_groups, backend="torch"), out[:, 1::2])


def test_opcheck():
    seg = _segmentation(CASES["mixed_padded_tails"])
    x, means, embedding = _inputs(seg, seg.max_groups)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.interleave_queries.default,
        (
            x.requires_grad_(),
            means.requires_grad_(),
            embedding.requires_grad_(),
            seg.group_ids,
            seg.frame_lengths,
            seg.num_groups,
            "torch",
        ),
    )
    y = torch.randn(x.shape[0], x.shape[1] + seg.max_groups, x.shape[2], requires_grad=True)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.retrieve_queries.default,
        (y, seg.group_ids, seg.num_groups, "torch"),
    )


def test_errors():
    seg = _segmentation(CASES["mixed_padded_tails"])
    x, means, embedding = _inputs(seg, seg.max_groups)
    ids, lengths, counts = seg.group_ids, seg.frame_lengths, seg.num_groups
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got NoneType"):
        interleave(None, means, embedding, ids, lengths, counts)
    with pytest.raises(TypeError, match="means must have x's dtype torch.float32"):
        interleave(x, means.half(), embedding, ids, lengths, counts)
    with pytest.raises(ValueError, match=r"means must be of shape \[3, 5, 20\], got \[3, 5, 4\]"):
        interleave(x, means[..., :4], embedding, ids, lengths, counts)
    with pytest.raises(ValueError, match=r"embedding must be of shape \[20\], got \[21\]"):
        interleave(x, means, torch.zeros(21), ids, lengths, counts)
    with pytest.raises(TypeError, match="group_ids must be int64, got torch.int32"):
        interleave(x, means, embedding, ids.int(), lengths, counts)
    with pytest.raises(ValueError, match=r"lengths must be of shape \[3\], got \[2\]"):
        interleave(x, means, embedding, ids, lengths[:2], counts)
    with pytest.raises(ValueError, match=r"group_ids must be of shape \[3, 15\]"):
        interleave(x, means, embedding, ids[:, :4], lengths, counts)
    with pytest.raises(ValueError, match=r"y must be \[B, T \+ G, D\] with T = 15"):
        retrieve(x[:, :4], ids, counts)
    with pytest.raises(ValueError, match="num_groups must be of shape"):
        retrieve(x, ids, counts[:1])
    with pytest.raises(ValueError, match="x must have a contiguous last dimension"):
        interleave(
            x.transpose(1, 2).contiguous().transpose(1, 2),
            means,
            embedding,
            ids,
            lengths,
            counts,
            backend="triton",
        )
