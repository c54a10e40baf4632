"""Shared set-up of the benchmark suites: `pytest bench --benchmark-only`.

Conventions (design §7, §8). Throughput is audio seconds processed per wall second (higher is
better); a kernel workload of B items of T frames is B * T / 12.5 audio seconds. Every
benchmark records in `extra_info` its workload (audio seconds, B, T, G, D), its throughput,
GB/s (memory-bound ops) or GFLOP/s (compute-bound ops), the device, dtype, thread count and
the torch / triton / flexicodec_fast versions. Benchmarks of one workload share a
pytest-benchmark group with one benchmark per provider:

    reference      the readable reference (flexicodec_fast.reference), fp32
    official       the official algorithm, re-written from spec §13 (bench/baselines.py)
    torch          the fast path's torch implementation (what CPUs run); torch-bf16: bf16
    triton         the fast path's Triton kernels, CUDA only; triton-bf16: bf16
    triton+graph   the Triton kernel replayed from a CUDA graph (capturable kernels only)

Providers of a workload run back to back in one session, so their ratios stay meaningful on
a shared, noisy machine. After the run every benchmark's extra_info gets
`speedup_vs_reference` and `speedup_vs_official` (that provider's median time over this
one's, same group) and `..._min` (the same with minimum times), and the terminal summary
prints the median ratios.

Options (each also an environment variable, for CI):
  --bench-size full|tiny   FLEXICODEC_BENCH_SIZE (default full). full: the released
                           architecture with random weights, kernels at B = 8, D = 512;
                           tiny: the tiny test model and small shapes, for CI (~1 minute).
  --bench-frames 125,4500  FLEXICODEC_BENCH_FRAMES: kernel workloads, frames per item
                           (default 125, 750, 4500 and 45000: 10 s to 1 h).
  --bench-long             FLEXICODEC_BENCH_LONG=1: also the 10-minute clip end to end.
  --bench-device auto|cpu|cuda  FLEXICODEC_BENCH_DEVICE (default auto: CUDA if present).
  --bench-max-gb 8         skip a case whose estimated working set is larger (GB).
  --bench-max-gflop 300    on CPU, skip a case needing more arithmetic than this per call.
  --bench-threads N        FLEXICODEC_BENCH_THREADS: torch's CPU threads (default: torch's
                           own choice). On a machine shared with other jobs, 1 thread avoids
                           OpenMP threads waiting on each other and gives steadier numbers.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from dataclasses import dataclass

import pytest
import torch

try:
    import pytest_benchmark  # noqa: F401
except ImportError as e:
    raise pytest.UsageError(
        "the benchmarks need pytest-benchmark: pip install -e '.[bench]'"
    ) from e

FRAME_RATE = 12.5

# The released FlexiCodec architecture (`config` of the official full-size state-dict
# manifest, spec §12.1); tests/test_bench_smoke.py checks it against the manifest.
RELEASED_CONFIG = {
    "sample_rate": 16000,
    "encoder_dim": 32,
    "encoder_rates": [4, 4, 5, 8, 2],
    "decoder_rates": [2, 8, 5, 4, 4],
    "n_codebooks": 24,
    "quantizer_dropout": 1.0,
    "codebook_size": 4096,
    "semantic_codebook_size": 32768,
    "is_causal": False,
    "use_similarity_alignment": True,
    "similarity_threshold": 0.91,
    "semantic_downsample_factor": 1.33333,
    "skip_normalize": True,
    "semantic_model_type": "sensevoice",
    "latent_dim": 512,
    "ssl_dim": 512,
    "use_bottleneck_transformer": True,
    "transformer_num_layers": 32,
    "transformer_dim_feedforward": 2048,
    "transformer_num_heads": 8,
    "transformer_causal": False,
    "transformer_context_frames": 16,
    "max_tokens_per_group": 8,
    "semantic_model_path": None,
    "use_query_token_aggregator": True,
    "use_dynamic_similarity_threshold": True,
    "similarity_threshold_lower": 0.8,
    "similarity_threshold_upper": 1.0,
}

# Average frame rate the end-to-end benchmarks merge to (the paper's operating point).
TARGET_FRAME_RATE = 8.0


@dataclass(frozen=True)
class Workload:
    """An end-to-end workload: `batch` clips of `seconds` each."""

    batch: int
    seconds: float
    long: bool = False

    @property
    def label(self) -> str:
        return f"B{self.batch}x{self.seconds:g}s"

    @property
    def audio_seconds(self) -> float:
        return self.batch * self.seconds


@dataclass(frozen=True)
class BenchConfig:
    """Everything the options decide."""

    size: str
    device: torch.device
    run_long: bool
    max_bytes: float
    max_flop: float
    frames: tuple[int, ...]
    batch: int  # kernel workloads
    dim: int
    fsq_dim: int
    rvq_stages: int
    codebook_size: int
    codebook_dim: int
    heads: int
    head_dim: int
    kernel_seconds: float  # timed seconds aimed at per kernel benchmark
    workloads: tuple[Workload, ...]
    e2e_rounds: int
    e2e_warmup: int


def _option(config, name: str, env: str, default):
    value = config.getoption(name)
    if value is None:
        value = os.environ.get(env, default)
    return value


def pytest_addoption(parser):
    group = parser.getgroup("flexicodec benchmarks")
    group.addoption("--bench-size", choices=("full", "tiny"), default=None)
    group.addoption("--bench-frames", default=None, help="comma-separated frames per item")
    group.addoption("--bench-long", action="store_true", default=None)
    group.addoption("--bench-device", choices=("auto", "cpu", "cuda"), default=None)
    group.addoption("--bench-max-gb", type=float, default=None)
    group.addoption("--bench-max-gflop", type=float, default=None)
    group.addoption("--bench-threads", type=int, default=None)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "providers(*names): the providers a benchmark is parametrised over"
    )
    config.stash[_CONFIG_KEY] = _bench_config(config)
    threads = _option(config, "--bench-threads", "FLEXICODEC_BENCH_THREADS", None)
    if threads is not None:
        if int(threads) < 1:
            raise pytest.UsageError(f"--bench-threads: a positive count, got {threads!r}")
        torch.set_num_threads(int(threads))


_CONFIG_KEY = pytest.StashKey[BenchConfig]()


def _bench_config(config) -> BenchConfig:
    size = _option(config, "--bench-size", "FLEXICODEC_BENCH_SIZE", "full")
    if size not in ("full", "tiny"):
        raise pytest.UsageError(f"--bench-size / FLEXICODEC_BENCH_SIZE: full or tiny, got {size!r}")
    device_name = _option(config, "--bench-device", "FLEXICODEC_BENCH_DEVICE", "auto")
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: no CUDA device is available")
    run_long = _option(config, "--bench-long", "FLEXICODEC_BENCH_LONG", "0")
    run_long = run_long is True or str(run_long).lower() in ("1", "true", "yes")
    default_frames = "125,750,4500,45000" if size == "full" else "48"
    frames_text = _option(config, "--bench-frames", "FLEXICODEC_BENCH_FRAMES", default_frames)
    try:
        frames = tuple(int(t) for t in str(frames_text).split(",") if t.strip())
    except ValueError as e:
        raise pytest.UsageError(
            f"--bench-frames: comma-separated integers, got {frames_text!r}"
        ) from e
    if not frames or min(frames) < 2:
        raise pytest.UsageError(f"--bench-frames: frame counts >= 2, got {frames_text!r}")
    max_gb = float(_option(config, "--bench-max-gb", "FLEXICODEC_BENCH_MAX_GB", 8.0))
    max_gflop = float(_option(config, "--bench-max-gflop", "FLEXICODEC_BENCH_MAX_GFLOP", 300.0))
    common = dict(
        size=size,
        device=torch.device(device_name),
        run_long=run_long,
        max_bytes=max_gb * 1e9,
        max_flop=max_gflop * 1e9,
        frames=frames,
    )
    if size == "full":
        return BenchConfig(
            **common,
            batch=8,
            dim=512,
            fsq_dim=768,
            rvq_stages=7,  # num_quantizers = 8: one FSQ + seven acoustic stages
            codebook_size=4096,
            codebook_dim=8,
            heads=8,
            head_dim=64,
            kernel_seconds=1.0,
            workloads=(Workload(1, 10.0), Workload(4, 10.0), Workload(1, 600.0, long=True)),
            e2e_rounds=3,
            e2e_warmup=1,
        )
    return BenchConfig(
        **common,
        batch=2,
        dim=64,
        fsq_dim=64,
        rvq_stages=3,
        codebook_size=64,
        codebook_dim=8,
        heads=2,
        head_dim=32,
        kernel_seconds=0.05,
        workloads=(Workload(1, 2.0), Workload(2, 2.0)),
        e2e_rounds=1,
        e2e_warmup=1,
    )


# ----------------------------------------------------------------------------- parameters


def _provider_marks(provider: str, cfg: BenchConfig) -> list:
    if not provider.startswith("triton"):
        return []
    from flexicodec_fast.kernels._triton import HAS_TRITON

    if cfg.device.type != "cuda":
        return [
            pytest.mark.skip(
                reason=f"Triton providers need a CUDA device; this run is on {cfg.device.type}"
            )
        ]
    if not HAS_TRITON:
        return [pytest.mark.skip(reason="Triton is not installed (pip install triton)")]
    return []


def pytest_generate_tests(metafunc):
    """Workload x provider, provider varying fastest, so that the providers of one workload
    run back to back."""
    if "provider" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("providers")
    if marker is None:
        raise pytest.UsageError(f"{metafunc.function.__name__}: missing @pytest.mark.providers")
    cfg = metafunc.config.stash[_CONFIG_KEY]
    params = []
    if "frames" in metafunc.fixturenames:
        for frames in cfg.frames:
            for provider in marker.args:
                params.append(
                    pytest.param(
                        frames,
                        provider,
                        id=f"T{frames}-{provider}",
                        marks=_provider_marks(provider, cfg),
                    )
                )
        metafunc.parametrize(("frames", "provider"), params)
    elif "workload" in metafunc.fixturenames:
        for workload in cfg.workloads:
            long_skip = []
            if workload.long and not cfg.run_long:
                long_skip = [
                    pytest.mark.skip(
                        reason="the 10-minute clip takes many minutes per call with the "
                        "reference on a CPU: opt in with --bench-long"
                    )
                ]
            for provider in marker.args:
                params.append(
                    pytest.param(
                        workload,
                        provider,
                        id=f"{workload.label}-{provider}",
                        marks=long_skip + _provider_marks(provider, cfg),
                    )
                )
        metafunc.parametrize(("workload", "provider"), params)


# ----------------------------------------------------------------------------- environment


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def environment(cfg: BenchConfig) -> dict:
    """What every benchmark records about where it ran."""
    import flexicodec_fast

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": cfg.device.type,
        "device_name": _device_name(cfg.device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "triton": triton_version,
        "flexicodec_fast": flexicodec_fast.__version__,
        "python": platform.python_version(),
        "bench_size": cfg.size,
    }


# ----------------------------------------------------------------------------- memory


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field_name}")


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of each call of a wrapped function.

    CPU: the resident set's high-water mark, reset before each call (Linux `clear_refs` 5,
    then `VmHWM`), so each call's own peak is seen; where that is unavailable, the process's
    lifetime peak (`ru_maxrss`), which only ever grows. CUDA: `max_memory_allocated` after
    `reset_peak_memory_stats`. Also the increase over what was in use before the call.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = device.type == "cpu" and _can_reset_peak_rss()
        self.peaks: list[int] = []
        self.increases: list[int] = []

    def wrap(self, fn):
        def call():
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                before = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                out = fn()
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device)
            elif self.resettable:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                before = _status_kb("VmRSS") * 1024
                out = fn()
                peak = _status_kb("VmHWM") * 1024
            else:
                before = 0
                out = fn()
                # ru_maxrss is in KiB on Linux (bytes on macOS, where VmHWM does not exist
                # either; this fallback is for Linux without clear_refs).
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.peaks.append(peak)
            self.increases.append(peak - before)
            return out

        return call

    def info(self, skip_first: int) -> dict:
        """extra_info entries over the calls after the first `skip_first` (the warm-up)."""
        peaks, increases = (
            self.peaks[skip_first:] or self.peaks,
            self.increases[skip_first:] or self.increases,
        )
        if not peaks:
            return {}
        if self.device.type == "cuda":
            return {
                "cuda_max_memory_allocated_bytes": max(peaks),
                "cuda_memory_increase_bytes": max(increases),
            }
        if self.resettable:
            return {
                "peak_rss_bytes": max(peaks),
                "peak_rss_increase_bytes": max(increases),
                "peak_rss_method": "per call (VmHWM after clear_refs)",
            }
        return {"peak_rss_bytes": max(peaks), "peak_rss_method": "process lifetime (ru_maxrss)"}


# ----------------------------------------------------------------------------- runner

_RESULTS: list[dict] = []  # (group, provider, median) of this session, for the summary


class Runner:
    """Runs one benchmark the suite's way and fills its extra_info."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.device = cfg.device
        self.env = environment(cfg)

    def require(self, what: str, nbytes: float = 0.0, flop: float = 0.0) -> None:
        """Skip the current benchmark when it would exceed the memory or CPU budget."""
        if nbytes > self.cfg.max_bytes:
            pytest.skip(
                f"{what} needs ~{nbytes / 1e9:.1f} GB, more than --bench-max-gb "
                f"{self.cfg.max_bytes / 1e9:g}"
            )
        if self.device.type == "cpu" and flop > self.cfg.max_flop:
            pytest.skip(
                f"{what} needs ~{flop / 1e9:.0f} GFLOP a call, more than --bench-max-gflop "
                f"{self.cfg.max_flop / 1e9:g} on a CPU"
            )

    def synced(self, fn):
        """fn, followed by a device synchronisation on CUDA (so wall time covers the work)."""
        if self.device.type != "cuda":
            return fn

        def call():
            out = fn()
            torch.cuda.synchronize(self.device)
            return out

        return call

    def cuda_graph(self, fn):
        """A function replaying `fn` from a CUDA graph (skips when fn cannot be captured)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = fn()
        except Exception as e:  # noqa: BLE001 - report why capture is impossible
            pytest.skip(f"not capturable in a CUDA graph: {type(e).__name__}: {e}")

        def replay():
            graph.replay()
            return out

        return replay

    def run(
        self,
        benchmark,
        fn,
        *,
        group: str,
        op: str,
        provider: str,
        dtype: str,
        workload: dict,
        audio_seconds: float,
        bytes_moved: float | None = None,
        flop: float | None = None,
        rounds: int | None = None,
        warmup: int | None = None,
        memory: bool = False,
    ):
        """Time `fn` (no arguments). rounds None: one untimed call, then as many rounds as
        fit `kernel_seconds` (3 to 200). Returns the last call's result."""
        benchmark.group = group
        call = self.synced(fn)
        meter = PeakMemory(self.device) if memory else None
        if meter is not None:
            call = meter.wrap(call)
        if rounds is None:
            start = time.perf_counter()
            call()
            elapsed = max(time.perf_counter() - start, 1e-6)
            rounds = min(200, max(3, math.ceil(self.cfg.kernel_seconds / elapsed)))
            warmup = 0
        result = benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup or 0, iterations=1)
        info = benchmark.extra_info
        info.update(self.env)
        info.update(op=op, provider=provider, dtype=dtype, audio_seconds=audio_seconds, **workload)
        median = benchmark.stats.stats.median if benchmark.stats else None
        if median:
            info["median_s"] = median
            info["throughput_audio_s_per_s"] = audio_seconds / median
            if bytes_moved is not None:
                info["bytes_moved"] = bytes_moved
                info["gbps"] = bytes_moved / median / 1e9
            if flop is not None:
                info["flop"] = flop
                info["gflops"] = flop / median / 1e9
            _RESULTS.append({"group": group, "provider": provider, "median": median})
        if meter is not None:
            info.update(meter.info(skip_first=len(meter.peaks) - rounds))
        return result


@pytest.fixture(scope="session")
def bench_config(request) -> BenchConfig:
    return request.config.stash[_CONFIG_KEY]


@pytest.fixture(scope="session")
def runner(bench_config) -> Runner:
    torch.manual_seed(0)
    return Runner(bench_config)


# ----------------------------------------------------------------------------- ratios


def _speedups(benchmarks: list[dict]) -> None:
    """Add `speedup_vs_reference` / `speedup_vs_official` (ratio of medians) and the same
    ratio of minimum times (`..._min`: on a shared machine the least disturbed round is the
    steadier estimate) to each benchmark's extra_info."""
    stats_by_group: dict[str, dict[str, dict]] = {}
    for b in benchmarks:
        provider = b.get("extra_info", {}).get("provider")
        if provider and (b.get("stats") or {}).get("median"):
            stats_by_group.setdefault(b["group"], {})[provider] = b["stats"]
    for b in benchmarks:
        stats = b.get("stats") or {}
        if not stats.get("median"):
            continue
        group = stats_by_group.get(b["group"], {})
        for base in ("reference", "official"):
            if base in group:
                info = b.setdefault("extra_info", {})
                info[f"speedup_vs_{base}"] = group[base]["median"] / stats["median"]
                info[f"speedup_vs_{base}_min"] = group[base]["min"] / stats["min"]


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    _speedups(output_json["benchmarks"])


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    cfg = config.stash[_CONFIG_KEY]
    machine_info["flexicodec_bench"] = {
        **environment(cfg),
        "note": "providers of one group ran back to back in this session; the machine may "
        "have been shared, so compare ratios within a group rather than absolute times",
    }


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    groups: dict[str, dict[str, float]] = {}
    for r in _RESULTS:
        groups.setdefault(r["group"], {})[r["provider"]] = r["median"]
    write = terminalreporter.write_line
    terminalreporter.section("flexicodec speed-ups (same session; >1 = faster than the base)")
    write(f"{'group':<34}{'provider':<14}{'median':>12}{'x reference':>13}{'x official':>12}")
    for group, medians in groups.items():
        for provider, median in medians.items():
            ref = medians.get("reference")
            off = medians.get("official")
            write(
                f"{group:<34}{provider:<14}{median * 1e3:>10.2f}ms"
                f"{'' if ref is None else f'{ref / median:.2f}':>13}"
                f"{'' if off is None else f'{off / median:.2f}':>12}"
            )


# ----------------------------------------------------------------------------- e2e model


def build_model(cfg: BenchConfig):
    """The model the end-to-end benchmarks run: the released architecture (or the tiny
    one) with seeded random weights, in eval mode, on the bench device."""
    from flexicodec_fast.reference.config import FlexiCodecConfig, SenseVoiceConfig
    from flexicodec_fast.reference.model import FlexiCodec
    from flexicodec_fast.tiny import random_tiny_model

    if cfg.size == "tiny":
        model = random_tiny_model(seed=0)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = FlexiCodec(FlexiCodecConfig.from_dict(RELEASED_CONFIG), SenseVoiceConfig())
    return model.eval().to(cfg.device)


def pick_threshold(similarity: torch.Tensor, frame_rate: float) -> float:
    """A merging threshold giving about `frame_rate` Hz on these similarities `[B, T-1]`
    (full-length items), placed in the widest gap between neighbouring similarity values
    near the target, so that no similarity is close to it (no near-ties, design §4)."""
    sims = similarity.double().flatten().sort().values
    n = sims.numel()
    frames = similarity.shape[1] + 1
    # groups per frame = (1 + boundaries) / T; a boundary is a similarity <= threshold.
    boundaries = (frame_rate / FRAME_RATE * frames - 1) / (frames - 1) * n
    k = min(n - 1, max(1, round(boundaries)))
    window = max(1, n // 50)
    lo, hi = max(1, k - window), min(n - 1, k + window)
    gaps = sims[lo : hi + 1] - sims[lo - 1 : hi]
    best = lo + int(gaps.argmax())
    return float((sims[best - 1] + sims[best]) / 2)


class Codec:
    """The end-to-end model, its merging threshold, and the inputs and outputs the
    benchmarks compare against, each built on first use and kept for the session."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self._model = None
        self._threshold = None
        self._cache: dict = {}

    @property
    def model(self):
        if self._model is None:
            self._model = build_model(self.cfg)
        return self._model

    @property
    def num_quantizers(self) -> int:
        return min(8, self.model.max_num_quantizers)

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def audio(self, workload: Workload) -> torch.Tensor:
        """`[B, N]`: item i is `synthetic_speech(seconds, seed=i)`."""
        from flexicodec_fast.profiling import synthetic_speech

        def make():
            clips = [synthetic_speech(workload.seconds, seed=i) for i in range(workload.batch)]
            return torch.stack(clips).to(self.cfg.device)

        return self._cached(("audio", workload), make)

    @property
    def threshold(self) -> float:
        """Chosen once, on the largest regular workload, for `TARGET_FRAME_RATE`."""
        if self._threshold is None:
            from flexicodec_fast import fast_encode

            workload = max((w for w in self.cfg.workloads if not w.long), key=lambda w: w.batch)
            enc = fast_encode(self.audio(workload), self.model, num_quantizers=1)
            self._threshold = pick_threshold(enc["similarity"].cpu(), TARGET_FRAME_RATE)
        return self._threshold

    def encode_args(self) -> dict:
        return {"num_quantizers": self.num_quantizers, "merging_threshold": self.threshold}

    def fast_codes(self, workload: Workload) -> dict:
        """fp32 fast-path codes (the decode benchmarks' input)."""
        from flexicodec_fast import fast_encode

        return self._cached(
            ("codes", workload),
            lambda: fast_encode(self.audio(workload), self.model, **self.encode_args()),
        )

    def reference_encode(self, workload: Workload) -> dict:
        def make():
            with torch.inference_mode():
                return self.model.encode(self.audio(workload), **self.encode_args())

        return self._cached(("reference codes", workload), make)

    def fast_audio(self, workload: Workload) -> torch.Tensor:
        """fp32 fast decode of `fast_codes` (what bf16 audio is compared with)."""
        from flexicodec_fast import fast_decode

        def make():
            enc = self.fast_codes(workload)
            return fast_decode(
                self.model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]
            )

        return self._cached(("audio out", workload), make)

    def reference_audio(self, workload: Workload) -> torch.Tensor:
        def make():
            enc = self.fast_codes(workload)
            with torch.inference_mode():
                return self.model.decode(
                    enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]
                )

        return self._cached(("reference audio", workload), make)

    def remember(self, key: str, workload: Workload, value) -> None:
        """Keep a benchmark's own output (e.g. the reference's codes) for later comparisons."""
        self._cache.setdefault((key, workload), value)

    def workload_info(self, workload: Workload) -> dict:
        """B, clip length, T (frames per item), G (mean tokens per item), D, frame rate."""
        enc = self.fast_codes(workload)
        frames = enc["token_lengths"].sum(dim=1).float()
        tokens = enc["total_frames"].float()
        return {
            "B": workload.batch,
            "clip_seconds": workload.seconds,
            "T": int(frames.max()),
            "G": float(tokens.mean()),
            "D": self.model.config.latent_dim,
            "frame_rate_hz": float((tokens / frames).mean() * FRAME_RATE),
            "merging_threshold": self.threshold,
            "num_quantizers": self.num_quantizers,
        }


@pytest.fixture(scope="session")
def codec(bench_config) -> Codec:
    return Codec(bench_config)
