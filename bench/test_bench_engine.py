"""Corpus benchmark of the engine (issue #21): `pytest bench --benchmark-only -k engine`.

A mixed-length corpus of short clips (`profiling.synthetic_speech`, clip i with seed 100 + i,
lengths uniform in 2-6 s, about a minute of audio with `--bench-size full`; 0.3-0.8 s,
about 1.5 s, with `tiny`) on the model of the end-to-end benchmarks (`Codec`: the released
architecture with seeded random weights, the threshold picked for ~8 Hz, 8 quantizers).
Clips are host tensors, as read from files, for every provider:

    reference   a loop of the reference `model.encode`, one clip at a time (fp32)
    loop        a loop of `fast_encode`, one clip at a time (fp32)
    engine      `Engine(...).encode_many(clips)` (fp32; on CUDA each bucket shape replayed from
                a CUDA graph, captured in the warm-up round)

The three run back to back in one group, op "encode" (B = clips, `clip_seconds` their mean,
T the longest clip's frames, G mean tokens per clip). Besides the common extra_info each
records `codes_identical_to_reference` (every clip's semantic and acoustic codes, token
lengths and token counts `torch.equal` to the reference's); `loop` and `engine` record
`speedup_vs_loop` (the loop's median time over theirs; the loop ran just before); the engine
records its bucket runs, captured shapes and the padded share of its batches.
"""

from __future__ import annotations

import pytest
import torch

from flexicodec_fast import Engine, fast_encode
from flexicodec_fast.profiling import synthetic_speech

PROVIDERS = ("reference", "loop", "engine")
CODE_KEYS = ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames")
# (shortest, longest, total) seconds of the corpus per --bench-size.
CORPUS = {"full": (2.0, 6.0, 60.0), "tiny": (0.3, 0.8, 1.5)}

_MEDIANS: dict[str, float] = {}  # provider -> median seconds, this session


def corpus_lengths(low: float, high: float, total: float, seed: int = 0) -> list[float]:
    """Clip lengths in seconds (10 ms steps), uniform in [low, high], until `total`."""
    gen = torch.Generator().manual_seed(seed)
    lengths: list[float] = []
    while sum(lengths) < total:
        lengths.append(round(low + (high - low) * float(torch.rand((), generator=gen)), 2))
    return lengths


@pytest.fixture(scope="module")
def corpus(bench_config) -> list[torch.Tensor]:
    lengths = corpus_lengths(*CORPUS[bench_config.size])
    return [synthetic_speech(s, seed=100 + i) for i, s in enumerate(lengths)]


def _same_codes(got: dict, want: dict) -> bool:
    for key in CODE_KEYS:
        a, b = got[key], want[key]
        if (a is None) != (b is None):
            return False
        if a is not None and not torch.equal(a.cpu(), b.cpu()):
            return False
    return True


@pytest.fixture(scope="module")
def reference_codes(codec, corpus) -> list[dict]:
    # Built (and the threshold picked) outside inference mode: a model made inside it has
    # inference-tensor weights, which the fast path's weight cache cannot version.
    model, args = codec.model, codec.encode_args()
    with torch.inference_mode():
        return [model.encode(clip[None].to(codec.cfg.device), **args) for clip in corpus]


@pytest.mark.parametrize("method", PROVIDERS)
def test_engine_corpus(benchmark, runner, codec, corpus, reference_codes, method):
    model, args = codec.model, codec.encode_args()
    device = codec.cfg.device
    engine = None
    if method == "reference":

        def fn():
            with torch.inference_mode():
                return [model.encode(clip[None].to(device), **args) for clip in corpus]

    elif method == "loop":

        def fn():
            return [fast_encode(clip[None], model, **args) for clip in corpus]

    else:
        engine = Engine(model, device=device, **args)

        def fn():
            return list(engine.encode_many(corpus))

    seconds = [c.shape[0] / 16000 for c in corpus]
    audio_seconds = sum(seconds)
    frames = [int(r["token_lengths"].sum()) for r in reference_codes]
    tokens = [int(r["total_frames"].sum()) for r in reference_codes]
    results = runner.run(
        benchmark,
        fn,
        group=f"encode corpus {len(corpus)} clips {min(seconds):.1f}-{max(seconds):.1f} s",
        op="encode",
        provider=method,
        dtype="fp32",
        workload={
            "B": len(corpus),
            "clip_seconds": audio_seconds / len(corpus),  # the mean; min and max below
            "clip_seconds_min": min(seconds),
            "clip_seconds_max": max(seconds),
            "T": max(frames),
            "G": sum(tokens) / len(tokens),
            "D": model.config.latent_dim,
            "frame_rate_hz": sum(tokens) / sum(frames) * 12.5,
            "merging_threshold": codec.threshold,
            "num_quantizers": codec.num_quantizers,
        },
        audio_seconds=audio_seconds,
        rounds=runner.cfg.e2e_rounds,
        warmup=runner.cfg.e2e_warmup,
        memory=True,
    )
    info = benchmark.extra_info
    info["codes_identical_to_reference"] = all(
        _same_codes(got, want) for got, want in zip(results, reference_codes, strict=True)
    )
    median = benchmark.stats.stats.median if benchmark.stats else None
    if median:
        _MEDIANS[method] = median
        if method != "reference" and "loop" in _MEDIANS:
            info["speedup_vs_loop"] = _MEDIANS["loop"] / median
    if engine is not None:
        stats = engine.stats
        info.update(
            engine_runs=stats.runs,
            captured_shapes=stats.captured_shapes,
            capture_seconds=stats.capture_seconds,
            graph_failures=len(stats.graph_failures),
            padded_fraction=stats.padded_seconds / (stats.padded_seconds + stats.audio_seconds),
        )
