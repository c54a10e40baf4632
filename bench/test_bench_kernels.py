"""Kernel benchmarks: each fused op against the reference op and the official algorithm it
replaces (issue #3), at B = 8 items of T frames with D = 512 channels (`--bench-size full`).

Workloads are planted segmentations: a boundary after each frame with probability 0.64 (so
about 8 Hz, the paper's operating point, and G ~ 0.64 T), each group's frames a shared random
direction plus 5 % noise, merged at threshold 0.5, far from every similarity (within a group
~0.997, across groups ~0 +- 0.05). Features arrive channels-first `[B, D, T]` as in the
pipeline; the official baseline reads them so, the reference and the fast path read the
channels-last views the pipeline hands them (Triton gets contiguous rows, as in
`fast_encode`). Inputs are built outside the timed region and shared by every provider of a
workload.

Ops and the shapes they run at (G groups; "floor bytes" = inputs read once + live outputs
written once, the GB/s basis):
  merge       similarity, boundaries, ids, token lengths, means of two `[B, T, D]` streams
  interleave  aggregator input `[B, T + G, D]` from frames + queries, and query retrieval
              (every provider goes from channels-first frames to the transformer's rows and
              back; the official's layout changes happen in its transformer, so its
              baseline does them explicitly)
  unmerge     two `[B, G, D]` token streams -> `[B, T, D]` frames
  snake       `[B, D, 2T]`: the DAC encoder's 512-channel residual units run at 25 Hz
  fsq         `[B, G, 768]` (FSQ's project-in, bound, round, index, dequant, project-out)
  rvq_encode  seven acoustic stages (num_quantizers = 8), K = 4096, codebook dim 8 (GFLOP/s)
  rvq_decode  the same stages' dequantisation (GFLOP/s)
  attention   RoPE attention over the aggregator sequence L = T + G, 8 heads of 64 (GFLOP/s)

Cases whose working set exceeds --bench-max-gb (the official dense `[B, G, T]` matrices at
long T) or, on a CPU, whose arithmetic exceeds --bench-max-gflop are skipped with the reason.
"""

from __future__ import annotations

import baselines
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from flexicodec_fast.kernels import attention as kattention
from flexicodec_fast.kernels import fsq as kfsq
from flexicodec_fast.kernels import interleave as kinterleave
from flexicodec_fast.kernels import merge as kmerge
from flexicodec_fast.kernels import rvq as krvq
from flexicodec_fast.kernels import snake as ksnake
from flexicodec_fast.kernels import unmerge as kunmerge
from flexicodec_fast.reference import attention as ref_attention
from flexicodec_fast.reference import merging as ref_merging
from flexicodec_fast.reference.aggregator import interleave_positions, scatter_positions
from flexicodec_fast.reference.fsq import FSQ
from flexicodec_fast.reference.rvq import ResidualVectorQuantize
from flexicodec_fast.reference.snake import snake as ref_snake

BOUNDARY_PROBABILITY = 0.64  # 12.5 Hz * 0.64 = 8 Hz
THRESHOLD = 0.5
MAX_TOKENS = 8
FSQ_LEVELS = (8, 8, 8, 8, 8)
WITH_BASELINE = ("reference", "official", "torch", "triton", "triton+graph")
NO_BASELINE = ("reference", "torch", "triton", "triton+graph")

_inputs: dict = {}  # the inputs of the current (op, T): providers of a workload share them


def shared_inputs(key, make):
    """`make()` once per key; inputs of the previous key are dropped (they can be GBs)."""
    if key not in _inputs:
        _inputs.clear()
        _inputs[key] = make()
    return _inputs[key]


def _backend(provider: str) -> str:
    return "torch" if provider == "torch" else "triton"


def _planted(cfg, frames: int, seed: int):
    """Channels-first features `[B, D, T]` of planted groups, and a second stream."""
    gen = torch.Generator().manual_seed(seed)
    batch, dim = cfg.batch, cfg.dim
    boundary = torch.rand(batch, frames - 1, generator=gen) < BOUNDARY_PROBABILITY
    run = torch.cat([torch.zeros(batch, 1, dtype=torch.long), boundary.long().cumsum(1)], 1)
    sem = torch.randn(batch, frames, dim, generator=gen).gather(
        1, run.unsqueeze(-1).expand(-1, -1, dim)
    )
    sem += 0.05 * torch.randn(batch, frames, dim, generator=gen)
    ac = torch.randn(batch, dim, frames, generator=gen)
    return sem.transpose(1, 2).contiguous().to(cfg.device), ac.to(cfg.device)


def _segmented(cfg, frames: int):
    """Planted features and their segmentation (fast torch path, identical to the
    reference), with G = the batch's largest group count."""
    sem, ac = _planted(cfg, frames, seed=frames)
    merged = kmerge.merge(
        sem.transpose(1, 2),
        threshold=THRESHOLD,
        max_tokens_per_group=MAX_TOKENS,
        streams=(sem.transpose(1, 2), ac.transpose(1, 2)),
        backend="torch",
    )
    groups = int(merged.num_groups.max())
    return sem, ac, merged, groups


def _workload(cfg, frames: int, groups: int, dim: int | None = None) -> dict:
    return {
        "B": cfg.batch,
        "T": frames,
        "G": groups,
        "D": cfg.dim if dim is None else dim,
        "frame_rate_hz": 12.5 * groups / frames,
    }


def _run(runner, benchmark, fn, *, op, provider, frames, groups, dim=None, **kw):
    cfg = runner.cfg
    if provider == "triton+graph":
        fn = runner.cuda_graph(fn)
    return runner.run(
        benchmark,
        fn,
        group=f"{op} B{cfg.batch} T{frames}",
        op=op,
        provider=provider,
        dtype="fp32",
        workload=_workload(cfg, frames, groups, dim),
        audio_seconds=cfg.batch * frames / 12.5,
        **kw,
    )


@pytest.mark.providers(*WITH_BASELINE)
def test_merge(benchmark, runner, frames, provider):
    cfg = runner.cfg
    b, d, t = cfg.batch, cfg.dim, frames
    sem, ac, merged, groups = shared_inputs(("merge", t), lambda: _segmented(cfg, t))
    size = 4
    floor = 2 * b * t * d * size + 2 * b * groups * d * size + b * t * (4 + 8) + b * groups * 8
    if provider == "official":
        runner.require("the official [B, G, T] alignment", nbytes=3 * b * groups * t * 4)

        def fn():
            return baselines.official_merge(sem, ac, THRESHOLD, MAX_TOKENS)
    elif provider == "reference":

        def fn():
            h, x = sem.transpose(1, 2), ac.transpose(1, 2)
            seg = ref_merging.segment(h, THRESHOLD, MAX_TOKENS)
            return (
                seg,
                ref_merging.group_means(h, seg.group_ids, seg.max_groups),
                ref_merging.group_means(x, seg.group_ids, seg.max_groups),
            )
    else:
        h, x = sem.transpose(1, 2), ac.transpose(1, 2)
        if provider.startswith("triton"):
            h, x = h.contiguous(), x.contiguous()

        def fn():
            return kmerge.merge(
                h,
                threshold=THRESHOLD,
                max_tokens_per_group=MAX_TOKENS,
                streams=(h, x),
                backend=_backend(provider),
            )

    _run(
        runner,
        benchmark,
        fn,
        op="merge",
        provider=provider,
        frames=t,
        groups=groups,
        bytes_moved=floor,
    )


def _interleave_inputs(cfg, frames):
    sem, ac, merged, groups = _segmented(cfg, frames)
    embedding = torch.randn(cfg.dim, device=cfg.device)
    means = merged.means[1][:, :groups].contiguous()
    reference_seg = ref_merging.segment(sem.transpose(1, 2), THRESHOLD, MAX_TOKENS)
    queries = (means + embedding).transpose(1, 2).contiguous()
    return ac, merged, groups, embedding, means, reference_seg, queries


@pytest.mark.providers(*WITH_BASELINE)
def test_interleave(benchmark, runner, frames, provider):
    cfg = runner.cfg
    b, d, t = cfg.batch, cfg.dim, frames
    ac, merged, groups, embedding, means, seg, queries = shared_inputs(
        ("interleave", t), lambda: _interleave_inputs(cfg, t)
    )
    floor = 4 * d * b * (t + groups + (t + groups) + 2 * groups) + 16 * b * t
    if provider == "official":
        runner.require("the official [B, G, T] comparison", nbytes=b * groups * t * 9)
        lengths = merged.token_lengths[:, :groups]

        def fn():
            seq, order = baselines.official_interleave(ac, queries, lengths, merged.num_groups)
            # The official transformer reads its conv-layout input as [B, L, D] rows (its
            # first LayerNorm makes them contiguous) and hands back [B, L, D] rows, viewed
            # as [B, D, L] for the query gather: the same layout changes the other
            # providers make inside interleave and retrieve.
            rows = seq.transpose(1, 2).contiguous()
            return baselines.official_retrieve(rows.transpose(1, 2), order, t, merged.num_groups)
    elif provider == "reference":
        x = ac.transpose(1, 2)

        def fn():
            frame_pos, query_pos, _ = interleave_positions(seg)
            sequence = x.new_zeros(b, t + groups, d)
            scatter_positions(sequence, x, frame_pos)
            scatter_positions(sequence, means + embedding, query_pos)
            index = query_pos.clamp(min=0).unsqueeze(-1).expand(-1, -1, d)
            return torch.gather(sequence, 1, index) * (query_pos >= 0).unsqueeze(-1)
    else:
        x = ac.transpose(1, 2)
        if provider.startswith("triton"):
            x = x.contiguous()
        lengths = torch.full((b,), t, device=x.device)

        def fn():
            y = kinterleave.interleave(
                x,
                means,
                embedding,
                merged.group_ids,
                lengths,
                merged.num_groups,
                backend=_backend(provider),
            )
            return kinterleave.retrieve(
                y, merged.group_ids, merged.num_groups, backend=_backend(provider)
            )

    _run(
        runner,
        benchmark,
        fn,
        op="interleave",
        provider=provider,
        frames=t,
        groups=groups,
        bytes_moved=floor,
    )


def _unmerge_inputs(cfg, frames):
    _, _, merged, groups = _segmented(cfg, frames)
    gen = torch.Generator().manual_seed(1)
    sem = torch.randn(cfg.batch, groups, cfg.dim, generator=gen).to(cfg.device)
    ac = torch.randn(cfg.batch, groups, cfg.dim, generator=gen).to(cfg.device)
    lengths = merged.token_lengths[:, :groups].contiguous()
    return sem, ac, lengths, groups


@pytest.mark.providers(*WITH_BASELINE)
def test_unmerge(benchmark, runner, frames, provider):
    cfg = runner.cfg
    b, d, t = cfg.batch, cfg.dim, frames
    sem, ac, lengths, groups = shared_inputs(("unmerge", t), lambda: _unmerge_inputs(cfg, t))
    floor = 4 * d * b * (2 * groups + t) + 8 * b * groups
    if provider == "official":
        sem_cf, ac_cf = sem.transpose(1, 2).contiguous(), ac.transpose(1, 2).contiguous()

        def fn():
            return baselines.official_unmerge(sem_cf, ac_cf, lengths)
    elif provider == "reference":

        def fn():
            return ref_merging.expand_groups(ac, lengths) + ref_merging.expand_groups(sem, lengths)
    else:

        def fn():
            return kunmerge.unmerge(sem, ac, lengths, t, backend=_backend(provider))

    _run(
        runner,
        benchmark,
        fn,
        op="unmerge",
        provider=provider,
        frames=t,
        groups=groups,
        bytes_moved=floor,
    )


def _snake_inputs(cfg, frames):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(cfg.batch, cfg.dim, 2 * frames, generator=gen)
    alpha = 0.5 + torch.rand(1, cfg.dim, 1, generator=gen)
    return x.to(cfg.device), alpha.to(cfg.device)


@pytest.mark.providers(*WITH_BASELINE)
def test_snake(benchmark, runner, frames, provider):
    cfg = runner.cfg
    x, alpha = shared_inputs(("snake", frames), lambda: _snake_inputs(cfg, frames))
    if provider == "official":

        def fn():
            return baselines.official_snake(x, alpha)
    elif provider == "reference":

        def fn():
            return ref_snake(x, alpha)
    else:

        def fn():
            return ksnake.snake(x, alpha, backend=_backend(provider))

    _run(
        runner,
        benchmark,
        fn,
        op="snake",
        provider=provider,
        frames=frames,
        groups=0,
        bytes_moved=2 * x.numel() * 4,
    )


def _fsq_inputs(cfg, frames):
    _, _, _, groups = _segmented(cfg, frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        module = FSQ(list(FSQ_LEVELS), cfg.fsq_dim).eval().to(cfg.device)
        x = torch.randn(cfg.batch, groups, cfg.fsq_dim).to(cfg.device)
    return module, x, groups


@pytest.mark.providers(*NO_BASELINE)
def test_fsq(benchmark, runner, frames, provider):
    cfg = runner.cfg
    module, x, groups = shared_inputs(("fsq", frames), lambda: _fsq_inputs(cfg, frames))
    if provider == "reference":

        def fn():
            with torch.inference_mode():
                return module(x)
    else:
        w = (module.project_in.weight, module.project_in.bias)
        w_out = (module.project_out.weight, module.project_out.bias)

        def fn():
            return kfsq.fsq(x, *w, *w_out, FSQ_LEVELS, backend=_backend(provider))

    _run(
        runner,
        benchmark,
        fn,
        op="fsq",
        provider=provider,
        frames=frames,
        groups=groups,
        dim=cfg.fsq_dim,
        bytes_moved=2 * x.numel() * 4 + cfg.batch * groups * 4,
    )


def _rvq_inputs(cfg, frames):
    _, _, _, groups = _segmented(cfg, frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        rvq = (
            ResidualVectorQuantize(cfg.dim, cfg.rvq_stages, cfg.codebook_size, cfg.codebook_dim)
            .eval()
            .to(cfg.device)
        )
        x = torch.randn(cfg.batch, groups, cfg.dim).to(cfg.device)
    stacked = krvq.stacked_weights(rvq)
    codes, _ = krvq.rvq_encode(x, *stacked, cfg.rvq_stages, backend="torch")
    return rvq, x, stacked, baselines.rvq_stage_tensors(rvq), codes, groups


def _rvq_flop(cfg, groups: int, encode: bool) -> float:
    tokens, s, k, cd, d = (
        cfg.batch * groups,
        cfg.rvq_stages,
        cfg.codebook_size,
        cfg.codebook_dim,
        cfg.dim,
    )
    per_stage = 2 * k * cd + 4 * d * cd if encode else 2 * cd * d
    return float(tokens * s * per_stage)


@pytest.mark.providers(*WITH_BASELINE)
def test_rvq_encode(benchmark, runner, frames, provider):
    cfg = runner.cfg
    rvq, x, stacked, stages, _, groups = shared_inputs(
        ("rvq", frames), lambda: _rvq_inputs(cfg, frames)
    )
    flop = _rvq_flop(cfg, groups, encode=True)
    distances = 3 * cfg.batch * groups * cfg.codebook_size * 4
    x_cf = x.transpose(1, 2).contiguous()
    if provider == "official":
        runner.require("the official [B*G, K] distance matrix", nbytes=distances, flop=flop)

        def fn():
            return baselines.official_rvq_encode(x_cf, stages, cfg.rvq_stages)
    elif provider == "reference":
        runner.require("the reference's [B*G, K] distance matrix", nbytes=distances, flop=flop)

        def fn():
            with torch.inference_mode():
                return rvq(x_cf, cfg.rvq_stages)
    else:
        runner.require("rvq_encode", flop=flop)

        def fn():
            return krvq.rvq_encode(x, *stacked, cfg.rvq_stages, backend=_backend(provider))

    _run(
        runner,
        benchmark,
        fn,
        op="rvq_encode",
        provider=provider,
        frames=frames,
        groups=groups,
        flop=flop,
    )


@pytest.mark.providers(*WITH_BASELINE)
def test_rvq_decode(benchmark, runner, frames, provider):
    cfg = runner.cfg
    rvq, _, stacked, stages, codes, groups = shared_inputs(
        ("rvq", frames), lambda: _rvq_inputs(cfg, frames)
    )
    cb, out_w, out_b = stacked[2], stacked[4], stacked[5]
    if provider == "official":

        def fn():
            return baselines.official_rvq_decode(codes, stages)
    elif provider == "reference":

        def fn():
            with torch.inference_mode():
                return rvq.from_codes(codes)
    else:

        def fn():
            return krvq.rvq_decode(codes, cb, out_w, out_b, backend=_backend(provider))

    _run(
        runner,
        benchmark,
        fn,
        op="rvq_decode",
        provider=provider,
        frames=frames,
        groups=groups,
        flop=_rvq_flop(cfg, groups, encode=False),
        bytes_moved=cfg.batch * groups * (cfg.dim * 4 + cfg.rvq_stages * 8),
    )


def _attention_inputs(cfg, frames):
    _, _, _, groups = _segmented(cfg, frames)
    gen = torch.Generator().manual_seed(5)
    shape = (cfg.batch, cfg.heads, frames + groups, cfg.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(cfg.device) for _ in range(3))
    return q, k, v, groups


@pytest.mark.providers(*NO_BASELINE)
def test_attention(benchmark, runner, frames, provider):
    cfg = runner.cfg
    b, h, dh = cfg.batch, cfg.heads, cfg.head_dim
    groups_estimate = round(frames * BOUNDARY_PROBABILITY)
    length = frames + groups_estimate
    runner.require("full attention", flop=4.0 * b * h * length**2 * dh)
    q, k, v, groups = shared_inputs(("attention", frames), lambda: _attention_inputs(cfg, frames))
    length = q.shape[2]
    if provider == "reference":

        def fn():
            cos, sin = ref_attention.rope_tables(length, dh, device=q.device)
            qr, kr = ref_attention.apply_rope(q, cos, sin), ref_attention.apply_rope(k, cos, sin)
            out = F.scaled_dot_product_attention(qr, kr, v)
            return rearrange(out, "b h l d -> b l (h d)")
    else:

        def fn():
            return kattention.attention(q, k, v, backend=_backend(provider))

    _run(
        runner,
        benchmark,
        fn,
        op="attention",
        provider=provider,
        frames=frames,
        groups=groups,
        dim=h * dh,
        flop=4.0 * b * h * length**2 * dh,
    )
