"""Merge kernels (kernels/merge.py) vs `reference.merging`.

Discrete outputs (group ids, token lengths, group counts) must be equal on every path. The
torch path is the reference's arithmetic, so its similarities and means are bit-identical;
the Triton similarity reduces in another order (within ~1e-7), so inputs are built with every
valid similarity at least 1e-5 from the threshold, and `test_near_ties_are_the_only_source`
shows that only similarities within 1e-6 of it can disagree. Means add frames in the
reference's order, so they are bit-identical on both paths in fp32.
"""

import pytest
import torch
from tolerances import NEAR_TIE, assert_elementwise

from flexicodec_fast.kernels import merge as merge_mod
from flexicodec_fast.kernels.merge import group_means, merge, segment
from flexicodec_fast.reference import merging as ref

BACKENDS = ["torch", "triton"]
THRESHOLD = 0.9
MARGIN = 1e-5  # input construction: 10 x NEAR_TIE from tau, so every split is decided


def _features(pattern, dim=24, seed=0, zero_frames=()):
    """`[B, T, D]` features whose adjacent cosine is ~0.999 where `pattern[b][t]` (transition
    t -> t+1) is True and |cos| < 0.9 elsewhere. `zero_frames`: (b, t) set to 0 (cos = 0)."""
    gen = torch.Generator().manual_seed(seed)
    merge_next = torch.tensor(pattern, dtype=torch.bool)
    batch, transitions = merge_next.shape
    h = torch.randn(batch, transitions + 1, dim, generator=gen)
    for t in range(transitions):
        near = h[:, t] + 0.04 * torch.randn(batch, dim, generator=gen)
        h[:, t + 1] = torch.where(merge_next[:, t, None], near, h[:, t + 1])
    for b, t in zero_frames:
        h[b, t] = 0
    return h


def _random_pattern(batch, frames, p_merge, seed):
    gen = torch.Generator().manual_seed(seed)
    return (
        (torch.rand(batch, max(frames - 1, 0), generator=gen) < p_merge).tolist()
        if frames > 1
        else [[] for _ in range(batch)]
    )


# name: (pattern, lengths or None, max_tokens_per_group, zero frames)
CASES = {
    "odd_T_mixed_padded_tails": (_random_pattern(3, 37, 0.6, 1), [37, 20, 6], 3, ()),
    "T_smaller_than_a_block": (_random_pattern(2, 5, 0.5, 2), None, 8, ()),
    "T_1": ([[]], None, 8, ()),
    "T_1_two_items_one_empty": ([[], []], [1, 0], 8, ()),
    "one_group": ([[True] * 12], None, None, ()),
    "every_frame_merged_max_hits": ([[True] * 19], None, 8, ()),
    "no_frame_merged": ([[False] * 22], None, 8, ()),
    "runs_cross_scan_blocks": (_random_pattern(2, 70, 0.85, 3), [70, 41], 5, ()),
    "zero_vectors": (_random_pattern(2, 15, 0.9, 4), [15, 11], 4, ((0, 3), (0, 4), (1, 10))),
}


def _case(name, dtype=torch.float32):
    pattern, lengths, max_tokens, zeros = CASES[name]
    h = _features(pattern, zero_frames=zeros).to(dtype)
    if lengths is not None:
        lengths = torch.tensor(lengths)
    return h, lengths, max_tokens


def _check_margin(h, lengths):
    sim = ref.adjacent_cosine(h.float(), lengths)
    valid = sim != 0  # invalid transitions are 0, far below the threshold
    assert ((sim - THRESHOLD).abs()[valid] > MARGIN).all(), "test input too close to tau"


def _assert_segments_equal(out, seg):
    groups = seg.max_groups
    assert torch.equal(out.group_ids, seg.group_ids)
    assert torch.equal(out.num_groups, seg.num_groups)
    assert torch.equal(out.token_lengths[:, :groups], seg.token_lengths)
    assert not out.token_lengths[:, groups:].any()
    starts = seg.token_lengths.cumsum(1) - seg.token_lengths
    live = torch.arange(groups) < seg.num_groups[:, None]
    assert torch.equal(out.group_starts[:, :groups], torch.where(live, starts, 0))
    assert not out.group_starts[:, groups:].any()


@pytest.fixture(autouse=True)
def small_scan_blocks(monkeypatch):
    # Production scans 1024 frames a block; 8 makes every multi-block carry reachable here.
    monkeypatch.setattr(merge_mod, "SCAN_BLOCK_T", 8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(backend, name):
    h, lengths, max_tokens = _case(name)
    _check_margin(h, lengths)
    acoustic = torch.randn(h.shape[0], h.shape[1], 40, generator=torch.Generator().manual_seed(9))
    out = merge(
        h,
        lengths,
        threshold=THRESHOLD,
        max_tokens_per_group=max_tokens,
        streams=(h, acoustic),
        backend=backend,
    )
    seg = ref.segment(h, THRESHOLD, max_tokens, lengths)
    _assert_segments_equal(out, seg)
    if backend == "torch":
        assert torch.equal(out.similarity, seg.similarity)
    else:
        assert_elementwise(out.similarity, seg.similarity, "similarity", backend)
    groups = seg.max_groups
    for x, mean in zip((h, acoustic), out.means, strict=True):
        assert mean.shape == x.shape
        assert torch.equal(mean[:, :groups], ref.group_means(x, seg.group_ids, groups))
        assert not mean[:, groups:].any()


def test_case_properties():
    """The named cases really are what they claim (reference segmentation)."""

    def seg(name):
        h, lengths, max_tokens = _case(name)
        return ref.segment(h, THRESHOLD, max_tokens, lengths)

    assert seg("one_group").token_lengths.tolist() == [[13]]
    assert seg("every_frame_merged_max_hits").token_lengths.tolist() == [[8, 8, 4]]
    assert seg("no_frame_merged").token_lengths.tolist() == [[1] * 23]
    assert seg("T_1_two_items_one_empty").num_groups.tolist() == [1, 0]
    runs = seg("runs_cross_scan_blocks")
    assert (runs.token_lengths == 5).any() and runs.max_groups > 8
    tails = seg("odd_T_mixed_padded_tails")
    assert tails.num_groups.unique().numel() == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_inputs(backend):
    """Half inputs: similarities are computed in fp32 from the half values, means are fp32
    means rounded once, so both equal the fp32 reference on the upcast values."""
    h, lengths, max_tokens = _case("odd_T_mixed_padded_tails", torch.float16)
    out = merge(
        h,
        lengths,
        threshold=THRESHOLD,
        max_tokens_per_group=max_tokens,
        streams=(h,),
        backend=backend,
    )
    seg = ref.segment(h.float(), THRESHOLD, max_tokens, lengths)
    _assert_segments_equal(out, seg)
    expected = ref.group_means(h.float(), seg.group_ids, seg.max_groups).half()
    assert out.means[0].dtype == torch.float16
    assert torch.equal(out.means[0][:, : seg.max_groups], expected)


def test_bf16_torch_path():
    # bf16 stores truncate under the interpreter (design §5); bf16 is compiled in test_aot.
    h, lengths, max_tokens = _case("odd_T_mixed_padded_tails", torch.bfloat16)
    out = merge(
        h,
        lengths,
        threshold=THRESHOLD,
        max_tokens_per_group=max_tokens,
        streams=(h,),
        backend="torch",
    )
    seg = ref.segment(h.float(), THRESHOLD, max_tokens, lengths)
    _assert_segments_equal(out, seg)
    expected = ref.group_means(h.float(), seg.group_ids, seg.max_groups).bfloat16()
    assert torch.equal(out.means[0][:, : seg.max_groups], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_means_backward(backend):
    h, lengths, max_tokens = _case("odd_T_mixed_padded_tails")
    seg = segment(h, lengths, threshold=THRESHOLD, max_tokens_per_group=max_tokens, backend=backend)
    grad = torch.randn(
        h.shape[0], h.shape[1], h.shape[2], generator=torch.Generator().manual_seed(5)
    )
    x = h.clone().requires_grad_()
    group_means(x, seg, backend=backend).backward(grad)
    x_ref = h.clone().requires_grad_()
    groups = int(seg.num_groups.max())
    ref.group_means(x_ref, seg.group_ids, groups).backward(grad[:, :groups])
    assert torch.equal(x.grad, x_ref.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_are_the_only_source_of_disagreement(backend):
    """tau set to exactly one reference similarity (and others within 1e-7 of it): only
    transitions within 1e-6 of tau may split differently; the torch path never differs."""
    gen = torch.Generator().manual_seed(11)
    h = torch.randn(4, 40, 24, generator=gen)
    h[:, 1:] = h[:, :-1] + 0.3 * h[:, 1:]  # similarities spread around ~0.95
    sim = ref.adjacent_cosine(h)
    tau = float(sim.flatten().sort().values[sim.numel() // 2])
    seg = ref.segment(h, tau, None)
    out = segment(h, threshold=tau, max_tokens_per_group=None, backend=backend)
    starts_ref = seg.group_ids[:, 1:] != seg.group_ids[:, :-1]
    starts = out.group_ids[:, 1:] != out.group_ids[:, :-1]
    near = (sim - tau).abs() < NEAR_TIE
    assert near.sum() >= 1  # the exact tie at least
    assert torch.equal(starts[~near], starts_ref[~near])
    if backend == "torch":
        assert torch.equal(out.group_ids, seg.group_ids)
    assert (out.similarity - sim).abs().max() < NEAR_TIE  # else a far split could flip


def _exact_similarity_frames():
    """`[1, 13, 8]` frames whose adjacent similarities are the same fp32 value on every path:
    integer vectors of integer norm (3, 4) and (4, 3), their multiples by powers of two and
    negatives, unit vectors and zero frames, so each norm is exact and each dot product has
    at most two non-zero terms (no summation order to differ in)."""
    a = torch.tensor([3.0, 4.0, 0, 0, 0, 0, 0, 0])
    b = torch.tensor([0, 0, 0, 0, 0, 0, 4.0, 3.0])
    c = torch.tensor([4.0, 3.0, 0, 0, 0, 0, 0, 0])
    e = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    zero = torch.zeros(8)
    return torch.stack([a, c, 2 * a, 0.25 * c, zero, zero, a, a, -a, e, e, b, 8 * b])[None]


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_exact_ties_start_a_group(backend):
    """`s <= tau` starts a group (spec §4): tau set to each similarity the frames give
    exactly (0 from zero frames, +-1, 0.96, -0.6), every path splits at the tie."""
    h = _exact_similarity_frames()
    sim = ref.adjacent_cosine(h)
    taus = sorted(set(sim.flatten().tolist()))
    # 1e-6: the decimals' fp32 spellings (0.96 and -0.6 are not exact in fp32)
    assert taus == pytest.approx([-1.0, -0.6, 0.0, 0.96, 1.0], abs=1e-6)
    for tau in taus:
        expected = torch.cat([torch.ones(1, 1), sim <= tau], dim=1).long().cumsum(1) - 1
        if backend == "reference":
            out = ref.segment(h, tau, None)
        else:
            out = segment(h, threshold=tau, max_tokens_per_group=None, backend=backend)
            assert torch.equal(out.similarity, sim)
        assert torch.equal(out.group_ids, expected), tau
        counts = torch.bincount(expected[0])
        assert out.num_groups.tolist() == [len(counts)], tau
        assert torch.equal(out.token_lengths[0, : len(counts)], counts), tau
        assert not out.token_lengths[0, len(counts) :].any(), tau


def _official_cosine(h):
    """Spec §4: sum_d (h_t / max(|h_t|, 1e-8)) * (h_t+1 / max(|h_t+1|, 1e-8)), in float64."""
    x = h.double()
    unit = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return (unit[:, :-1] * unit[:, 1:]).sum(-1)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_tiny_norms_follow_the_official_eps(backend):
    """Frames of norm 1e-7 are normalised (eps 1e-8 is below them) and frames of norm 1e-9
    are divided by 1e-8: similar directions give ~0.95 between two frames of norm 1e-7 or
    one of 1e-7 and one of 1, ~0.095 with one frame of norm 1e-9 and ~0.0095 with two. An
    eps 100 times larger or smaller moves these by 10x; tau 0.5 turns that into splits."""
    gen = torch.Generator().manual_seed(12)
    base = torch.randn(24, generator=gen)
    directions = base + 0.3 * torch.randn(10, 24, generator=gen)
    unit = directions / directions.norm(dim=-1, keepdim=True)
    norms = torch.tensor([1.0, 1e-7, 1e-7, 1.0, 1e-9, 1e-7, 1e-9, 1e-9, 1.0, 1e-7])
    h = (unit * norms[:, None])[None]
    want = _official_cosine(h)
    assert (want > 0.5).sum() >= 4 and (want < 0.5).sum() >= 4
    assert ((want - 0.5).abs() > 0.1).all()
    if backend == "reference":
        got = ref.segment(h, 0.5, None)
    else:
        got = segment(h, threshold=0.5, max_tokens_per_group=None, backend=backend)
    assert_elementwise(got.similarity.double(), want, "similarity", backend)
    expected = torch.cat([torch.ones(1, 1), want <= 0.5], dim=1).long().cumsum(1) - 1
    assert torch.equal(got.group_ids, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_strided_frames(backend):
    empty = segment(torch.zeros(0, 5, 8), threshold=0.5, backend=backend)
    assert empty.group_ids.shape == (0, 5) and empty.num_groups.shape == (0,)
    h, lengths, max_tokens = _case("odd_T_mixed_padded_tails")
    wide = torch.cat([h, torch.randn_like(h)], dim=2)[..., : h.shape[2]]  # row stride 2D
    spaced = torch.stack([lengths, torch.zeros_like(lengths)], dim=1)[:, 0]  # stride 2
    out = merge(
        wide,
        spaced,
        threshold=THRESHOLD,
        max_tokens_per_group=max_tokens,
        streams=(wide,),
        backend=backend,
    )
    seg = ref.segment(h, THRESHOLD, max_tokens, lengths)
    _assert_segments_equal(out, seg)
    assert torch.equal(
        out.means[0][:, : seg.max_groups], ref.group_means(h, seg.group_ids, seg.max_groups)
    )


def test_non_positive_max_tokens_disables_the_cap():
    h, lengths, _ = _case("every_frame_merged_max_hits")
    for cap in (None, 0, -3):
        out = segment(h, threshold=THRESHOLD, max_tokens_per_group=cap, backend="triton")
        assert out.token_lengths[0, 0] == 20 and out.num_groups.tolist() == [1]


def test_torch_path_many_groups():
    """T = 4000, no frame merged: outputs are O(B T); an O(T G) alignment would be 16 M."""
    sign = 1.0 - 2.0 * (torch.arange(4000) % 2)
    h = sign.view(1, -1, 1) * torch.ones(1, 1, 4)  # every similarity is -1
    out = segment(h, threshold=THRESHOLD, backend="torch")
    assert out.num_groups.tolist() == [4000] and bool((out.token_lengths == 1).all())


def test_opcheck():
    h, lengths, max_tokens = _case("odd_T_mixed_padded_tails")
    torch.library.opcheck(
        torch.ops.flexicodec_fast.merge_segment.default,
        (h, lengths, THRESHOLD, max_tokens, "torch"),
    )
    seg = segment(h, lengths, threshold=THRESHOLD, max_tokens_per_group=max_tokens)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.merge_group_means.default,
        (
            h.clone().requires_grad_(),
            seg.group_ids,
            seg.group_starts,
            seg.token_lengths,
            seg.num_groups,
            "torch",
        ),
    )


def test_errors():
    h, lengths, _ = _case("odd_T_mixed_padded_tails")
    with pytest.raises(TypeError, match="h must be a torch.Tensor, got list"):
        segment([[1.0]], threshold=0.9)
    with pytest.raises(ValueError, match=r"h must be \[B, T, D\], got shape \[37, 24\]"):
        segment(h[0], threshold=0.9)
    with pytest.raises(TypeError, match="h must be float32, float16 or bfloat16, got torch.int64"):
        segment(h.long(), threshold=0.9)
    with pytest.raises(ValueError, match=r"lengths must be of shape \[B\] = \[3\], got \[2\]"):
        segment(h, lengths[:2], threshold=0.9)
    with pytest.raises(TypeError, match="lengths must be an integer tensor, got torch.float32"):
        segment(h, lengths.float(), threshold=0.9)
    with pytest.raises(TypeError, match="threshold must be a float, got '0.9'"):
        segment(h, threshold="0.9")
    with pytest.raises(TypeError, match="max_tokens_per_group must be an int or None, got 8.0"):
        segment(h, threshold=0.9, max_tokens_per_group=8.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        segment(h, threshold=0.9, backend="cuda")
    with pytest.raises(TypeError, match=r"streams must be a tuple of tensors"):
        merge(h, threshold=0.9, streams=h)
    with pytest.raises(ValueError, match=r"x must be \[B, T, D\] with \[B, T\] = \[3, 37\]"):
        merge(h, threshold=0.9, streams=(h[:, :5],))
    seg = segment(h, threshold=0.9)
    with pytest.raises(TypeError, match="group_ids must be int64, got torch.int32"):
        group_means(h, seg._replace(group_ids=seg.group_ids.int()))
    with pytest.raises(ValueError, match="h must have a contiguous last dimension"):
        segment(h.transpose(1, 2).contiguous().transpose(1, 2), threshold=0.9, backend="triton")
