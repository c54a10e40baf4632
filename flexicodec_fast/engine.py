"""`Engine`: corpus encoding and decoding that keeps a GPU busy (design §9).

Clips (any iterable, any lengths) are read lazily and grouped by length into a fixed grid of
buckets. Each bucket runs as one batch through the same stage functions as `fast_encode` /
`fast_decode` (`flexicodec_fast.fast`). With static shapes (the default on CUDA) every shape
comes from the bucket (`Sizes.of(..., static=True)`, `G = T` token columns), lengths travel
as device tensors, and nothing reads a device value on the host until the bucket's results
come back in one transfer; each bucket shape is captured once as a CUDA graph and replayed.
On a CPU a batch is sized by its longest clip instead (less to compute, nothing to wait for).

Why exact: every stage masks per item, so a clip padded into a larger bucket keeps the codes
it gets alone; the grid only trades padding for the number of captured shapes. Results come
out in input order, one dict per clip with `fast_encode`'s keys for that clip alone.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .fast import DECODE_STAGES, ENCODE_STAGES, FastCodec, Sizes, decode_stages, encode_stages
from .loading import resolve_device
from .model_input import resolve_model
from .options import EncodeOptions
from .reference import variants
from .reference.errors import InputError, describe
from .reference.frontend import MIN_SAMPLES
from .reference.result import EncodeResult
from .resampling import resample

# Bucket lengths in seconds: dense where speech corpora have most clips, so that padding
# costs at most ~25 % above 4 s; 13 shapes a direction at most.
DEFAULT_BUCKET_SECONDS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)
# Live activations per audio sample of the widest DAC level, in buffers of that level's
# width: the input, Snake's scratch, the workspace and the convolution's output, doubled for
# the allocator's slack. An estimate that sizes batches, not a measurement.
ACTIVATION_BUFFERS = 8
CPU_MEMORY_BUDGET = 2 * 2**30
CUDA_MEMORY_FRACTION = 0.5


@dataclass(frozen=True)
class Bucket:
    """A static batch shape: `batch` clips of at most `samples` samples (16 kHz; a multiple
    of the hop), or for decoding `frames` = `samples / hop` codec frames."""

    samples: int
    batch: int


@dataclass
class EngineStats:
    """What the engine did: clips and audio seconds, bucket runs, padding, CUDA graphs."""

    clips: int = 0
    audio_seconds: float = 0.0
    runs: int = 0
    padded_seconds: float = 0.0
    oversize_clips: int = 0
    peak_held: int = 0  # the most clips held at once (at most max_held + 1)
    graphs: dict = field(default_factory=dict)  # (direction, key) -> capture seconds
    graph_failures: dict = field(default_factory=dict)  # (direction, key) -> reason

    @property
    def captured_shapes(self) -> int:
        return len(self.graphs)

    @property
    def capture_seconds(self) -> float:
        return sum(self.graphs.values())


def activation_bytes_per_sample(model) -> int:
    """Bytes of activations per 16 kHz sample at the widest level of the DAC stacks (the
    largest per-sample footprint of the pipeline), `ACTIVATION_BUFFERS` buffers of fp32."""
    cfg = model.config
    widest = 0.0
    channels, resolution = cfg.encoder_dim, 1
    for rate in cfg.encoder_rates:
        widest = max(widest, channels / resolution)
        channels, resolution = channels * 2, resolution * rate
    channels, resolution = cfg.decoder_dim, model.hop_length
    for rate in cfg.decoder_rates:
        channels, resolution = channels // 2, resolution // rate
        widest = max(widest, channels / resolution)
    return math.ceil(widest * 4 * ACTIVATION_BUFFERS)


def default_memory_budget(device: torch.device) -> int:
    """Bytes a batch's activations may take: half the free GPU memory, or 2 GiB on a CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_FRACTION)
    return CPU_MEMORY_BUDGET


class Engine:
    """Encode and decode many clips with static-shape length buckets.

    ```python
    engine = Engine(model, device="auto", precision="fp32", num_quantizers=8)
    for r in engine.encode_many(clips):   # 1-D float tensors at 16 kHz or (audio, rate)
        ...                               # r: fast_encode's result for that clip alone
    for audio in engine.decode_many(results):   # dicts like r, or codes-file items
        ...                                     # 1-D 16 kHz audio, decoded_length(T)
    ```

    model: a `prepare_model` model (or the official dict layout); it is used on `device`
        ("auto": the model's own device if it is a GPU, else CUDA when available), copied
        there if it lives elsewhere.
    precision, num_quantizers, merging_threshold, target_frame_rate, backend,
    attention_window, mix_down: as `fast_encode` (or pass `options=EncodeOptions(...)`).
    static_shapes: run every batch of a bucket at the bucket's shape (the bucket's length,
        its batch size, `G = T` token columns) with no host reads between stages; None
        (default): on CUDA only. On a CPU nothing waits for a device, so by default a batch
        is sized by its longest clip and its largest token count (read once) instead, which
        computes less; the codes are the same either way.
    cuda_graphs: with static shapes on CUDA, capture each bucket shape once and replay it (a
        shape whose capture fails runs eagerly, with one warning naming the reason).
    bucket_seconds: the length grid; a clip longer than the largest bucket runs alone.
    memory_budget: bytes of activations a batch may use (default: half the free GPU
        memory, 2 GiB on a CPU); with `max_batch` it sets each bucket's batch size.
    max_held: clips held at once (waiting in buckets, or finished and waiting for an
        earlier clip): when reached, the bucket holding the oldest unfinished clip runs
        partly filled, so memory stays bounded for any input order.
    errors: "raise" (a bad clip raises `InputError` naming its index) or "yield" (the
        `InputError` is yielded in that clip's place and the rest go on).
    progress: called as work is issued, `progress(indices, share)`: `share` of the work on
        the clips with these input indices (0-based, counting every clip given) is done. A
        batch is credited an equal share after each of its pipeline stages (`ENCODE_STAGES`,
        `DECODE_STAGES`; at once for a replayed CUDA graph), so a long clip moves a progress
        bar before it is finished; a clip's shares add up to 1; an `InputError` clip gets
        none.
    """

    def __init__(
        self,
        model,
        *,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        num_quantizers: int | None = 8,
        merging_threshold: float = 0.91,
        target_frame_rate: float | None = None,
        backend: str = "auto",
        attention_window: float | None = None,
        mix_down: bool = False,
        options: EncodeOptions | None = None,
        static_shapes: bool | None = None,
        cuda_graphs: bool = True,
        bucket_seconds: Iterable[float] = DEFAULT_BUCKET_SECONDS,
        memory_budget: int | None = None,
        max_batch: int = 256,
        max_held: int = 4096,
        errors: str = "raise",
        progress: Callable[[tuple[int, ...], float], None] | None = None,
    ):
        model = resolve_model(model)
        own = next(model.parameters()).device
        if device == "auto" and own.type == "cuda":
            device = own
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" names the current device: compare by index, never copy to itself.
            self.device = torch.device("cuda", torch.cuda.current_device())
        if own != self.device:
            model = copy.deepcopy(model).to(self.device)
        model.eval()
        self.model = model
        options = EncodeOptions.given(
            options,
            num_quantizers=num_quantizers,
            merging_threshold=merging_threshold,
            target_frame_rate=target_frame_rate,
            precision=precision,
            backend=backend,
            attention_window=attention_window,
            mix_down=mix_down,
        )
        if options.dither != 0.0:
            raise InputError(
                f"options.dither: the engine is deterministic (dither 0), got {options.dither}; "
                "use fast_encode for the official random front-end"
            )
        if errors not in ("raise", "yield"):
            raise InputError(f"errors: expected 'raise' or 'yield', got {errors!r}")
        self.errors = errors
        if progress is not None and not callable(progress):
            raise InputError(f"progress: expected a callable or None, got {describe(progress)}")
        self.progress = progress
        for name, value in (("max_batch", max_batch), ("max_held", max_held)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name}: expected an int >= 1, got {describe(value)}")
        self.max_held = max_held
        on_cuda = self.device.type == "cuda"
        self.static_shapes = on_cuda if static_shapes is None else bool(static_shapes)
        self.cuda_graphs = bool(cuda_graphs) and on_cuda and self.static_shapes
        self.buckets = self._grid(bucket_seconds, memory_budget, max_batch)
        # Resolved after every argument check: a bad argument is an error, not a warning first.
        self.options = options.for_model(model, stacklevel=2)
        self.fast = FastCodec.for_model(model, self.options.backend, self.options.precision)
        self.stats = EngineStats()
        self._graphs: dict = {}
        self._pool = None

    # ------------------------------------------------------------------------ buckets

    def _grid(self, bucket_seconds, memory_budget, max_batch) -> tuple[Bucket, ...]:
        seconds = sorted(set(bucket_seconds))
        if not seconds or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in seconds
        ):
            raise InputError(
                f"bucket_seconds: expected positive numbers of seconds, got {describe(seconds)}"
            )
        budget = default_memory_budget(self.device) if memory_budget is None else memory_budget
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise InputError(f"memory_budget: expected bytes (an int >= 1), got {describe(budget)}")
        hop = self.model.hop_length
        per_sample = activation_bytes_per_sample(self.model)
        buckets = []
        for s in seconds:
            samples = max(MIN_SAMPLES, math.ceil(s * 16000 / hop) * hop)
            if buckets and samples == buckets[-1].samples:
                continue
            batch = max(1, min(max_batch, budget // (per_sample * samples)))
            buckets.append(Bucket(samples, batch))
        return tuple(buckets)

    def _batch_rows(self, bucket: Bucket, count: int) -> int:
        """Rows a static batch of `count` items runs with: with CUDA graphs the next power of
        two (at most the bucket's batch), so that a part-filled bucket, such as the last one
        of a corpus, computes at most twice its items and each bucket captures at most
        log2(batch) + 1 shapes; without graphs, the items themselves."""
        if not self.cuda_graphs:
            return count
        return min(bucket.batch, 1 << (count - 1).bit_length())

    def bucket_for(self, samples: int) -> Bucket | None:
        """The smallest bucket that holds `samples` samples, or None (the clip runs alone)."""
        for bucket in self.buckets:
            if samples <= bucket.samples:
                return bucket
        return None

    # ------------------------------------------------------------------------ encode

    def _clip(self, index: int, clip):
        """(1-D float32 16 kHz audio on the device, input samples, input rate) of a clip;
        the checks run on the host."""
        sample_rate = 16000
        if isinstance(clip, tuple):
            if len(clip) != 2:
                raise InputError(
                    f"clip {index}: expected a 1-D tensor or (audio, sample_rate), got a "
                    f"tuple of {len(clip)}"
                )
            clip, sample_rate = clip
            if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
                raise InputError(
                    f"clip {index}: expected a positive int sample rate, got "
                    f"{describe(sample_rate)}"
                )
        if isinstance(clip, np.ndarray):
            clip = torch.from_numpy(clip)
        if not isinstance(clip, torch.Tensor) or not clip.is_floating_point():
            raise InputError(f"clip {index}: expected a float tensor [N], got {describe(clip)}")
        if clip.dim() == 2 and self.options.mix_down:
            clip = clip.mean(dim=0)
        if clip.dim() != 1:
            raise InputError(
                f"clip {index}: expected 1-D audio [N] (or [C, N] with mix_down), got "
                f"{describe(clip)}"
            )
        host = clip.detach().to("cpu", torch.float32)
        source_length = host.shape[0]
        if not np.isfinite(host.numpy()).all():
            raise InputError(f"clip {index}: expected finite samples, got NaN or Inf values")
        audio = host.to(self.device)
        if sample_rate != 16000:
            audio = resample(audio, sample_rate, 16000)
        if audio.shape[0] < MIN_SAMPLES:
            raise InputError(
                f"clip {index}: expected at least {MIN_SAMPLES} samples at 16 kHz (85 ms), "
                f"got {audio.shape[0]}"
            )
        return audio, source_length, sample_rate

    def encode_many(self, clips: Iterable) -> Iterator[EncodeResult]:
        """Encode every clip; yields one `EncodeResult` per clip, in input order, with the
        shapes and codes `fast_encode` gives that clip alone (`B = 1`). Holds at most about
        `max_held` clips at a time."""

        def prepare(index, clip):
            source = self._clip(index, clip)
            return source, (self.bucket_for(source[0].shape[0]),)

        return self._ordered(
            clips, prepare, self._encode_batch, lambda source: source[0].shape[0] / 16000
        )

    def _encode_batch(self, key, sources: list, credit):
        bucket = key[0]
        clips = [audio for audio, _, _ in sources]
        samples = [c.shape[0] for c in clips]
        static = self.static_shapes
        if static and bucket is not None:
            padded, batch = bucket.samples, self._batch_rows(bucket, len(clips))
        else:
            # Per batch (or a clip too long for every bucket: its own shape, not graphed).
            padded, batch = max(samples), len(clips)
        # Graph rows past the real clips hold silence of the bucket's length.
        lengths = samples + [padded] * (batch - len(clips))
        sizes = Sizes.of(self.model, lengths, padded, static=static)

        def run(audio, lens, tick=None):
            return encode_stages(
                self.fast, audio, lens, sizes, self.options, static=static, tick=tick
            )

        def fill(audio, lens):
            audio.zero_()
            for row, clip in zip(audio, clips, strict=False):
                row[: clip.shape[0]].copy_(clip)
            lens.copy_(torch.tensor(lengths, dtype=torch.long))

        key = ("encode", padded, batch)
        inputs = (
            torch.zeros(batch, padded, device=self.device),
            torch.zeros(batch, dtype=torch.long, device=self.device),
        )
        graphed = static and bucket is not None
        out = self._execute(key, run, fill, inputs, graphed, credit, ENCODE_STAGES)
        self.stats.padded_seconds += (batch * padded - sum(samples)) / 16000
        return self._split_encoded(out, sources)

    @staticmethod
    def _split_encoded(out: EncodeResult, sources: list) -> list[EncodeResult]:
        """One transfer, then each item cut on the host to its own tokens and frames, with
        the input lengths `fast_encode` records."""
        host = EncodeResult({k: (None if v is None else v.to("cpu")) for k, v in out.items()})
        # Counts read with numpy: plain host memory, no tensor op that would count as a sync.
        groups = host["total_frames"].numpy()
        frames = host["token_lengths"].numpy().sum(axis=1)
        results = []
        for b, (audio, source_length, sample_rate) in enumerate(sources):
            one = host.item(b, int(groups[b]), int(frames[b]))
            # Each result owns its memory: a view would keep the whole batch alive.
            one = EncodeResult(
                {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in one.items()}
            )
            one["sim_matrix"] = one["similarity"]
            one["audio_lengths"] = torch.tensor([audio.shape[0]])
            one["source_lengths"] = torch.tensor([source_length])
            one["source_sample_rate"] = sample_rate
            results.append(one)
        return results

    # ------------------------------------------------------------------------ decode

    def _codes(self, index: int, item):
        """(semantic `[G]`, acoustic `[K, G]` or None, token lengths `[G]`) of one item as
        host tensors, checked on the host, trimmed to its tokens."""

        def get(name):
            if isinstance(item, Mapping):
                return item.get(name)
            return getattr(item, name, None)

        sem, ac, lengths = get("semantic_codes"), get("acoustic_codes"), get("token_lengths")
        if not isinstance(sem, torch.Tensor) or not isinstance(lengths, torch.Tensor):
            raise InputError(
                f"item {index}: expected semantic_codes and token_lengths tensors (an encode "
                f"result or codes-file item), got {describe(item)}"
            )
        sem, lengths = sem.detach().cpu().reshape(-1), lengths.detach().cpu().reshape(-1)
        if ac is not None:
            ac = ac.detach().cpu()
            ac = ac.reshape(-1, ac.shape[-1]) if ac.dim() >= 2 else ac.reshape(1, -1)
        model = self.model
        lengths_np = lengths.numpy()
        live = np.flatnonzero(lengths_np > 0)
        groups = int(live[-1]) + 1 if live.size else 0
        checks = [
            (sem.shape == lengths.shape, "semantic_codes and token_lengths differ in length"),
            (groups >= 1, "token_lengths: expected at least one frame"),
            ((lengths_np >= 0).all(), "token_lengths: expected non-negative counts"),
            (
                ac is None or ac.shape[-1] == lengths.shape[0],
                "acoustic_codes and token_lengths differ in length",
            ),
            (
                ac is None or 1 <= ac.shape[0] <= model.config.n_codebooks,
                f"acoustic_codes: expected 1..{model.config.n_codebooks} stages",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"item {index}: {message}")
        sem_np = sem[:groups].numpy()
        if sem_np.min() < 0 or sem_np.max() >= model.semantic_codebook_size:
            raise InputError(
                f"item {index}: semantic_codes: expected values in "
                f"[0, {model.semantic_codebook_size})"
            )
        if ac is not None:
            ac_np = ac[:, :groups].numpy()
            if ac_np.min() < 0 or ac_np.max() >= model.config.codebook_size:
                raise InputError(
                    f"item {index}: acoustic_codes: expected values in "
                    f"[0, {model.config.codebook_size})"
                )
            ac = ac[:, :groups]
        return sem[:groups], ac, lengths[:groups]

    def decode_many(self, items: Iterable) -> Iterator[torch.Tensor]:
        """Decode every item (an `encode_many` / `fast_encode` result of one clip, or a
        codes-file item); yields 1-D 16 kHz audio of `decoded_length(T)` samples per item, in
        input order, equal to `fast_decode` of that item alone to fp32 rounding."""
        hop = self.model.hop_length

        def prepare(index, item):
            codes = self._codes(index, item)
            frames = int(codes[2].numpy().sum())
            window = variants.window_of(codes[2][None]) if self.model.fixed_window else None
            bucket = self.bucket_for(frames * hop)
            stages = None if codes[1] is None else codes[1].shape[0]
            return (codes, frames, window), (bucket, stages, window)

        return self._ordered(items, prepare, self._decode_batch, lambda c: c[1] * hop / 16000)

    def _decode_batch(self, key, items, credit):
        bucket, stages, window = key[:3]
        hop = self.model.hop_length
        frames = [f for _, f, _ in items]
        static = self.static_shapes
        if static and bucket is not None:
            t_max = groups = bucket.samples // hop
            batch = self._batch_rows(bucket, len(items))
        else:
            t_max, groups, batch = max(frames), max(c[2].shape[0] for c, _, _ in items), len(items)
        # Static shapes never skip masks: the same graph must serve every batch.
        full = not static and len(set(frames)) == 1

        def run(sem, ac, lengths, tick=None):
            return decode_stages(
                self.fast, sem, ac, lengths, t_max, full, self.options.bands, window, tick=tick
            )

        def fill(sem, ac, lengths):
            for buffer in (sem, ac, lengths):
                if buffer is not None:
                    buffer.zero_()
            # Graph slots past the real items decode one silent frame each.
            lengths[len(items) :, 0] = 1
            for b, ((s, a, n), _, _) in enumerate(items):
                g = n.shape[0]
                sem[b, 0, :g].copy_(s)
                lengths[b, :g].copy_(n)
                if ac is not None:
                    ac[b, :, :g].copy_(a)

        inputs = (
            torch.zeros(batch, 1, groups, dtype=torch.long, device=self.device),
            None
            if stages is None
            else torch.zeros(batch, stages, groups, dtype=torch.long, device=self.device),
            torch.zeros(batch, groups, dtype=torch.long, device=self.device),
        )
        audio = self._execute(
            ("decode", t_max, batch, stages, window),
            run,
            fill,
            inputs,
            static and bucket is not None,
            credit,
            DECODE_STAGES,
        ).to("cpu")
        self.stats.padded_seconds += (batch * t_max - sum(frames)) * hop / 16000
        lengths = self.model.dac.decoded_length(torch.tensor(frames)).numpy()
        return [audio[b, 0, : int(n)].clone() for b, n in enumerate(lengths)]

    # ------------------------------------------------------------------------ running

    def _execute(self, key, run, fill, inputs, graphed: bool, credit, stages: tuple[str, ...]):
        """Fill the static inputs and run: replaying the captured graph of `key` on CUDA,
        eagerly otherwise (and for shapes whose capture failed). `credit(share)` is called
        with an equal share after each of `stages` (all at once after a replay)."""
        self.stats.runs += 1

        def tick(stage: str) -> None:
            credit(1 / len(stages))

        with torch.inference_mode(), self.fast.matmul_precision():
            if not (graphed and self.cuda_graphs) or key in self.stats.graph_failures:
                fill(*inputs)
                return run(*inputs, tick)
            if key not in self._graphs:
                self._capture(key, run, fill, inputs)
                if key in self.stats.graph_failures:
                    fill(*inputs)
                    return run(*inputs, tick)
            graph, static_inputs, static_out = self._graphs[key]
            fill(*static_inputs)
            graph.replay()
            credit(1.0)
            return static_out

    def _capture(self, key, run, fill, inputs):
        start = time.perf_counter()
        try:
            fill(*inputs)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                # Warm-up outside the graph: Triton compiles and cuBLAS picks its kernels.
                for _ in range(2):
                    run(*inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._pool):
                out = run(*inputs)
        except RuntimeError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.stats.graph_failures[key] = reason
            warnings.warn(
                f"CUDA graph capture failed for {key[0]} shape {key[1:]}; running it "
                f"eagerly: {reason}",
                stacklevel=4,
            )
            return
        self._graphs[key] = (graph, inputs, out)
        self.stats.graphs[key] = time.perf_counter() - start

    def _ordered(self, items: Iterable, prepare, run_batch, seconds) -> Iterator:
        """The scheduling shared by encode and decode. `prepare(index, item)` -> (payload,
        key), the key a tuple starting with the item's `Bucket` (None: too long for any);
        `run_batch(key, payloads, credit)` -> one result per payload, calling `credit(share)`
        as its work is issued (reported to `progress`). A bucket runs when full; when
        `max_held` items are held, the bucket holding the oldest unfinished item runs partly
        filled; the rest run at the end. Yields results in input order."""
        waiting: dict = {}  # key -> [(index, payload)]
        done: dict = {}  # index -> result (or InputError with errors="yield")
        next_out = 0

        def flush(key):
            entries = waiting.pop(key)
            indices = tuple(index for index, _ in entries)

            def credit(share: float) -> None:
                if self.progress is not None:
                    self.progress(indices, share)

            results = run_batch(key, [payload for _, payload in entries], credit)
            for (index, _), result in zip(entries, results, strict=True):
                done[index] = result

        def oldest():
            return min(waiting, key=lambda k: waiting[k][0][0])

        def held():
            return sum(map(len, waiting.values())) + len(done)

        for index, item in enumerate(items):
            try:
                payload, key = prepare(index, item)
            except InputError as e:
                if self.errors == "raise":
                    raise
                done[index] = e
            else:
                self.stats.clips += 1
                self.stats.audio_seconds += seconds(payload)
                bucket = key[0]
                if bucket is None:
                    # Too long for every bucket: a batch of its own.
                    self.stats.oversize_clips += 1
                    key = (*key, index)
                waiting.setdefault(key, []).append((index, payload))
                self.stats.peak_held = max(self.stats.peak_held, held())
                if len(waiting[key]) >= (1 if bucket is None else bucket.batch):
                    flush(key)
            while True:
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                # The oldest unfinished item is next_out's: running its bucket lets the
                # loop above hand out at least that one.
                if not waiting or held() <= self.max_held:
                    break
                flush(oldest())
        while waiting:
            flush(oldest())
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
