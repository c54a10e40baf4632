"""The corpus engine: bucketed static-shape batches give exactly `fast_encode`'s per-clip
codes, in input order, without host syncs in the steady state, in bounded memory."""

import pytest
import torch
from responsive import responsive
from tolerances import CODE_KEYS, assert_audio_close, assert_close, assert_codes_equal

from flexicodec_fast import EncodeOptions, Engine, InputError
from flexicodec_fast import engine as engine_module
from flexicodec_fast import fast as fast_module
from flexicodec_fast.engine import activation_bytes_per_sample
from flexicodec_fast.fast import DECODE_STAGES, ENCODE_STAGES, Sizes, fast_decode, fast_encode
from flexicodec_fast.host_syncs import HostSyncCounter
from flexicodec_fast.tiny import random_tiny_model

# Bucket grid of the tests: 0.5 s and 1 s, rounded up to whole hops.
BUCKETS = (0.5, 1.0)
# Clip lengths: both buckets, a bucket's exact length, and one longer than the largest.
LENGTHS = (4000, 8960, 16000, 3000, 12000, 6400, 20000, 9100, 1360)
# Merged tokens for this model and seed: some frames merge, none at a near-tie.
THRESHOLD = 0.93


@pytest.fixture(scope="module")
def model():
    return responsive(random_tiny_model(seed=3), seed=3).eval()


def _clips(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen) * 0.1 for n in lengths]


def _engine(model, **kwargs):
    args = dict(num_quantizers=4, merging_threshold=THRESHOLD, bucket_seconds=BUCKETS)
    return Engine(model, max_batch=3, **{**args, **kwargs})


def _assert_same_encode(got, want):
    assert_codes_equal(got, want)
    for key in ("similarity", "semantic_features"):
        assert_close(got[key], want[key], "features")
    assert_close(got["decoder_latent"], want["decoder_latent"], "latent")


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_engine_equals_fast_encode_per_clip_in_order(model, static):
    """Static shapes (the CUDA default: bucket length, G = T) and per-batch sizes (the CPU
    default) both give every clip exactly its own codes."""
    clips = _clips(LENGTHS, seed=0)
    engine = _engine(model, static_shapes=static)
    results = list(engine.encode_many(c for c in clips))  # a generator
    assert len(results) == len(clips)
    merged = 0
    for clip, got in zip(clips, results, strict=True):
        want = fast_encode(clip[None], model, num_quantizers=4, merging_threshold=THRESHOLD)
        _assert_same_encode(got, want)
        assert int(got["audio_lengths"][0]) == clip.shape[0]
        merged += int(got["token_lengths"].sum() - got["total_frames"].sum())
    assert merged > 0, "no frame merged: the test would not see merging bugs"
    assert engine.stats.oversize_clips == 1
    assert engine.stats.clips == len(clips)


@pytest.mark.parametrize(
    "options",
    [
        dict(num_quantizers=1),
        dict(target_frame_rate=8.0),
        dict(num_quantizers=None, merging_threshold=0.86),
    ],
    ids=["nq1", "target_rate", "all_quantizers"],
)
def test_engine_options_equal_fast_encode(model, options):
    clips = _clips((5000, 16000, 7000, 2500), seed=1)
    opts = EncodeOptions(**{"num_quantizers": 4, "merging_threshold": THRESHOLD, **options})
    engine = Engine(model, options=opts, bucket_seconds=BUCKETS, max_batch=2, static_shapes=True)
    for clip, got in zip(clips, engine.encode_many(clips), strict=True):
        want = fast_encode(clip[None], model, options=opts)
        _assert_same_encode(got, want)
        if opts.target_frame_rate is not None:
            # The chosen threshold is one of the item's similarities, which batching moves
            # by fp32 rounding (the codes above are identical).
            assert_close(got["thresholds"], want["thresholds"], "features")


def test_engine_takes_audio_sample_rate_pairs(model):
    gen = torch.Generator().manual_seed(2)
    pairs = [
        (torch.randn(n, generator=gen) * 0.1, sr)
        for n, sr in ((12000, 24000), (30000, 48000), (6000, 16000), (9000, 22050))
    ]
    engine = _engine(model)
    for (audio, sr), got in zip(pairs, engine.encode_many(pairs), strict=True):
        want = fast_encode(
            audio[None], model, sample_rate=sr, num_quantizers=4, merging_threshold=THRESHOLD
        )
        _assert_same_encode(got, want)
        assert int(got["source_lengths"][0]) == audio.shape[0]
        assert got["source_sample_rate"] == sr


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_decode_many_equals_fast_decode(model, static):
    clips = _clips(LENGTHS, seed=4)
    engine = _engine(model, static_shapes=static)
    results = list(engine.encode_many(clips))
    decoded = list(engine.decode_many(results))
    for result, audio in zip(results, decoded, strict=True):
        want = fast_decode(
            model, result["semantic_codes"], result["acoustic_codes"], result["token_lengths"]
        )[0, 0]
        assert_audio_close(audio, want)


def test_steady_state_has_no_host_syncs(model):
    """The static-shape path (what runs on CUDA, graphed) reads nothing on the host."""
    engine = _engine(model, static_shapes=True)
    list(engine.decode_many(engine.encode_many(_clips(LENGTHS, seed=5))))
    second = _clips([n - 37 for n in LENGTHS[:-1]] + [1500], seed=6)
    with HostSyncCounter(record_sites=True) as syncs:
        list(engine.decode_many(engine.encode_many(second)))
    assert syncs.total == 0, syncs.sites


def test_the_counter_sees_a_host_read(model):
    """The sync test above could pass by counting nothing: the eager path reads lengths."""
    with HostSyncCounter() as syncs:
        fast_encode(_clips([5000], seed=7)[0][None], model, num_quantizers=2)
    assert syncs.total > 0


def test_memory_stays_bounded_for_a_long_generator():
    model = random_tiny_model(seed=0).eval()
    count, max_held = 2000, 40

    def clips():
        gen = torch.Generator().manual_seed(8)
        for i in range(count):
            # Mostly short clips, every 97th long enough for the other bucket: its bucket
            # never fills, so only the max_held rule makes the generator move on.
            n = 9000 if i % 97 == 0 else 1400 + 10 * (i % 7)
            yield torch.randn(n, generator=gen) * 0.05

    engine = Engine(
        model, num_quantizers=2, bucket_seconds=BUCKETS, max_held=max_held, max_batch=256
    )
    seen = 0
    for i, result in enumerate(engine.encode_many(clips())):
        assert int(result["audio_lengths"][0]) == (9000 if i % 97 == 0 else 1400 + 10 * (i % 7))
        seen += 1
    assert seen == count
    assert engine.stats.peak_held <= max_held + 1


def test_bad_clips_raise_with_their_index_or_are_yielded(model):
    clips = _clips((5000, 6000), seed=9)
    bad = [clips[0], torch.zeros(100), clips[1], torch.full((4000,), float("nan"))]
    with pytest.raises(InputError, match="clip 1: expected at least 1360 samples"):
        list(_engine(model).encode_many(bad))
    out = list(_engine(model, errors="yield").encode_many(bad))
    assert isinstance(out[1], InputError) and isinstance(out[3], InputError)
    assert "clip 3: expected finite samples" in str(out[3])
    want = fast_encode(clips[1][None], model, num_quantizers=4, merging_threshold=THRESHOLD)
    _assert_same_encode(out[2], want)


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_progress_credits_each_clip_once_stage_by_stage(model, static):
    """Every coded clip's shares add up to 1, in one equal share per pipeline stage of its
    batch, credited while the batch runs (before its results are handed out); a refused
    clip gets none. Decode likewise."""
    clips = _clips((5000, 16000, 7000, 20000, 2500), seed=4)
    clips.insert(2, torch.zeros(100))
    events = []
    engine = _engine(
        model, static_shapes=static, errors="yield", progress=lambda i, s: events.append((i, s))
    )
    results = []
    for index, result in enumerate(engine.encode_many(clips)):
        results.append(result)
        want = 0.0 if isinstance(result, InputError) else 1.0
        assert sum(s for i, s in events if index in i) == pytest.approx(want)
    credited = {}
    for indices, share in events:
        assert share == pytest.approx(1 / len(ENCODE_STAGES))
        for index in indices:
            credited[index] = credited.get(index, 0.0) + share
    assert sorted(credited) == [0, 1, 3, 4, 5]
    assert all(total == pytest.approx(1.0) for total in credited.values())
    events.clear()
    good = [r for r in results if not isinstance(r, InputError)]
    list(engine.decode_many(good))
    assert all(share == pytest.approx(1 / len(DECODE_STAGES)) for _, share in events)
    assert sum(s for i, s in events if 0 in i) == pytest.approx(1.0)


def test_stage_ticks_name_the_stages_in_order(model, monkeypatch):
    """The progress shares assume these lists name every tick of the pipelines."""
    names = []

    def recording(stages):
        def run(*args, tick, **kwargs):
            def named(stage):
                names.append(stage)
                tick(stage)

            return stages(*args, tick=named, **kwargs)

        return run

    monkeypatch.setattr(engine_module, "encode_stages", recording(fast_module.encode_stages))
    monkeypatch.setattr(engine_module, "decode_stages", recording(fast_module.decode_stages))
    engine = _engine(model, progress=lambda i, s: None)
    result = next(engine.encode_many(_clips((6000,), seed=5)))
    assert tuple(names) == ENCODE_STAGES
    names.clear()
    next(engine.decode_many([result]))
    assert tuple(names) == DECODE_STAGES


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(progress="bar"), "progress"),
        (dict(bucket_seconds=()), "bucket_seconds"),
        (dict(bucket_seconds=(1, -2)), "bucket_seconds"),
        (dict(memory_budget=0), "memory_budget"),
        (dict(max_batch=0), "max_batch"),
        (dict(errors="ignore"), "errors"),
        (dict(options=EncodeOptions(dither=1.0)), "deterministic"),
        (dict(merging_threshold=2.0), "merging_threshold"),
    ],
)
def test_bad_engine_arguments(model, kwargs, match):
    with pytest.raises(InputError, match=match):
        Engine(model, **kwargs)


def test_bucket_batch_sizes_follow_the_memory_budget(model):
    per_sample = activation_bytes_per_sample(model)
    budget = per_sample * 16000 * 3  # three 1 s clips
    engine = Engine(
        model, num_quantizers=None, bucket_seconds=(0.5, 1.0), memory_budget=budget, max_batch=64
    )
    # Bucket lengths are whole hops (the codec frames), batches what fits the budget.
    hop = model.hop_length
    half, one = (-(-n // hop) * hop for n in (8000, 16000))
    assert [(b.samples, b.batch) for b in engine.buckets] == [
        (half, budget // (per_sample * half)),
        (one, budget // (per_sample * one)),
    ]
    assert engine.bucket_for(one + 1) is None and engine.bucket_for(half).samples == half


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_engine_equals_eager_and_reference():
    """On CUDA in fp32 mode: graphed engine codes == eager engine == fast_encode per clip ==
    the reference, all with TF32 off."""
    model = responsive(random_tiny_model(seed=3), seed=3).cuda().eval()
    clips = _clips(LENGTHS, seed=10)
    graphed = Engine(model, num_quantizers=4, merging_threshold=THRESHOLD, bucket_seconds=BUCKETS)
    eager = Engine(
        model,
        num_quantizers=4,
        merging_threshold=THRESHOLD,
        bucket_seconds=BUCKETS,
        cuda_graphs=False,
    )
    got = list(graphed.encode_many(clips))
    assert not graphed.stats.graph_failures, graphed.stats.graph_failures
    assert graphed.stats.captured_shapes > 0
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for clip, g, e in zip(clips, got, eager.encode_many(clips), strict=True):
            _assert_same_encode(g, e)
            with torch.inference_mode():
                ref = model.encode(clip[None].cuda(), num_quantizers=4, merging_threshold=THRESHOLD)
            for key in CODE_KEYS:
                assert torch.equal(g[key], ref[key].cpu()), key
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    decoded = list(graphed.decode_many(got))
    for r, audio in zip(got, decoded, strict=True):
        want = fast_decode(model, r["semantic_codes"], r["acoustic_codes"], r["token_lengths"])
        assert_audio_close(audio, want[0, 0].cpu())


def test_graphed_batches_round_up_to_powers_of_two(model):
    """With CUDA graphs a part-filled bucket runs at the next power of two rows (at most
    the bucket's batch): at most twice the work, and log2(batch) + 1 shapes a bucket."""
    engine = Engine(model, num_quantizers=None, bucket_seconds=(1.0,), max_batch=6)
    bucket = engine.buckets[0]
    assert bucket.batch == 6
    assert [engine._batch_rows(bucket, n) for n in range(1, 7)] == [1, 2, 3, 4, 5, 6]
    engine.cuda_graphs = True  # what a CUDA device turns on
    assert [engine._batch_rows(bucket, n) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]


def test_static_sizes_never_skip_masks(model):
    """A bucket's batches share one code path (one CUDA graph): a batch whose clips all fill
    the bucket must not drop the masks another batch of that bucket needs."""
    n = 16640
    static = Sizes.of(model, [n, n], n, static=True)
    assert not (static.features_full or static.hops_full or static.frames_full)
    alone = Sizes.of(model, [n, n], n, static=False)
    assert alone.features_full and alone.hops_full and alone.frames_full
    assert (static.frame_max, static.feature_max) == (alone.frame_max, alone.feature_max)
