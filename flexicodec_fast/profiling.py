"""`flexicodec-fast profile`: where `fast_encode` + `fast_decode` spend their time, per model part.

The real pipeline runs once under `torch.profiler` with Python stacks recorded
(`with_stack=True`): every op event then hangs below the Python frames that called it. Each
model part is a set of functions of the fast pipeline (`PART_FUNCTIONS`, resolved from the
live code objects, so edits to those files cannot silently break the mapping), and an op
belongs to the outermost part function on its call stack (a transformer called by an
aggregator counts as the aggregator, the bottleneck's own call as the bottleneck). Nothing in
the pipeline is wrapped, patched or re-implemented for profiling; ops outside every part
(argument checks, masks, host syncs) are reported as "other". The two calls themselves run
inside `record_function("encode")` / `record_function("decode")` scopes, so the Chrome trace
shows both phases on its timeline.

On CUDA a background thread also samples NVML (nvidia-ml-py): memory used, GPU
utilisation, power and SM clock; and each memory-bound fused op's achieved bandwidth (the
floor bytes of its input shapes, see `_floor_bytes`, over its device time) is compared with
the device's peak (memory clock x bus width from NVML). Without an NVIDIA driver it says so
in one line and profiles the CPU, where the bandwidth table uses CPU time and has no peak.

`--static` is the ahead-of-time kernel report of `flexicodec_fast.static_profile`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .reference.errors import InputError

SAMPLE_RATE = 16000

PARTS = (
    "front-end",
    "SenseVoice",
    "DAC encoder",
    "merge",
    "aggregators",
    "FSQ",
    "RVQ",
    "unmerge",
    "bottleneck",
    "DAC decoder",
)
OTHER = "other"
PYTHON_OP = "<python>"  # self time of Python frames (interpreter work between ops)

# Snake's out-of-place, in-place and into-a-buffer forms: one read and one write each.
SNAKE_OPS = ("flexicodec_fast::snake", "flexicodec_fast::snake_", "flexicodec_fast::snake_into")
# Fused ops whose cost is moving memory: bandwidth is reported for these.
MEMORY_BOUND_OPS = (
    "flexicodec_fast::merge_segment",
    "flexicodec_fast::merge_group_means",
    "flexicodec_fast::interleave_queries",
    "flexicodec_fast::retrieve_queries",
    "flexicodec_fast::fsq",
    "flexicodec_fast::fsq_decode",
    "flexicodec_fast::unmerge",
    *SNAKE_OPS,
)
_DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::BFloat16": 2,
    "c10::Half": 2,
    "long int": 8,
    "long": 8,
    "int": 4,
}


def synthetic_speech(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A deterministic speech-like test signal `[N]` float32 in [-1, 1].

    Twenty harmonics of a gliding 90-220 Hz pitch under a syllable-rate (about 4 Hz)
    envelope with pauses, plus a little noise. Not speech, but it exercises every stage the
    way speech does (voiced stretches, silences, energy changes), and it needs no data file.
    """
    if not seconds > 0:
        raise InputError(f"seconds: expected a positive duration, got {seconds!r}")
    n = int(round(seconds * sample_rate))
    gen = torch.Generator().manual_seed(seed)

    def contour(rate_hz: float) -> torch.Tensor:
        """Random knots `rate_hz` apart, linearly interpolated to `[n]` values in [0, 1]."""
        knots = torch.rand(1, 1, int(seconds * rate_hz) + 2, generator=gen, dtype=torch.float64)
        return torch.nn.functional.interpolate(knots, size=n, mode="linear", align_corners=True)[
            0, 0
        ]

    f0 = 90.0 + 130.0 * contour(4.0)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    voiced = torch.zeros(n, dtype=torch.float64)
    for k in range(1, 21):
        voiced += torch.sin(k * phase) / k
    syllables = torch.sin(2 * math.pi * 4.0 * torch.arange(n, dtype=torch.float64) / sample_rate)
    envelope = syllables.abs().sqrt() * (contour(2.0) > 0.3)
    noise = torch.randn(n, generator=gen, dtype=torch.float64)
    audio = 0.25 * envelope * voiced / voiced.abs().max() + 0.01 * noise
    return audio.clamp(-1.0, 1.0).float()


# ----------------------------------------------------------------------------- parts


def _methods(cls) -> list:
    return [v for v in vars(cls).values() if inspect.isfunction(v)]


def part_functions() -> dict[str, list]:
    """Model part -> the fast pipeline's functions whose calls (and everything below them)
    make up that part. FSQ includes the ConvNeXt stacks around the quantiser."""
    from .conv_stack import FastDecoder, FastEncoder
    from .fast import FastCodec
    from .fast_modules import FastSenseVoice, FastTransformer
    from .kernels import merge, rvq, unmerge
    from .reference.frontend import FrontEnd
    from .reference.resample import downsample_semantic

    return {
        "front-end": _methods(FrontEnd),
        "SenseVoice": [*_methods(FastSenseVoice), downsample_semantic],
        "DAC encoder": _methods(FastEncoder),
        "merge": [merge.merge, merge.segment, merge.group_means],
        "aggregators": [FastCodec.aggregate],
        "FSQ": [FastCodec.quantize_semantic, FastCodec.decode_semantic],
        "RVQ": [rvq.rvq_encode, rvq.rvq_decode],
        "unmerge": [unmerge.unmerge],
        "bottleneck": [FastTransformer.__call__],
        "DAC decoder": _methods(FastDecoder),
    }


# The profiler names a Python frame "path(first line): function", with the path shortened to
# what follows its sys.path entry.
_FRAME = re.compile(r"^(?P<path>.+)\((?P<line>\d+)\): (?P<name>.+)$")


class PartIndex:
    """Maps the profiler's Python-frame event names to model parts."""

    def __init__(self, parts: dict[str, list] | None = None):
        self._by_key: dict[tuple[str, int], list[tuple[str, str]]] = {}
        for part, functions in (parts or part_functions()).items():
            for fn in functions:
                code = inspect.unwrap(fn).__code__
                key = (code.co_name, code.co_firstlineno)
                self._by_key.setdefault(key, []).append((code.co_filename, part))

    def part_of_frame(self, event_name: str) -> str | None:
        m = _FRAME.match(event_name)
        if m is None:
            return None
        for filename, part in self._by_key.get((m["name"], int(m["line"])), ()):
            if Path(filename).as_posix().endswith(m["path"]):
                return part
        return None

    def part_of(self, event) -> str:
        """The outermost part function on the event's call stack, or `OTHER`."""
        part = OTHER
        node = event
        while node is not None:
            found = self.part_of_frame(node.name)
            if found is not None:
                part = found
            node = node.cpu_parent
        return part


# ----------------------------------------------------------------------------- NVML


class NvmlSampler:
    """Samples one GPU's memory used, utilisation, power and SM clock from a background
    thread (nvidia-ml-py), every `interval` seconds while in the `with` block.

    Never raises for a missing library, driver or metric: `notice` then says in one line
    why there is no telemetry, and metrics the device does not report stay None.
    """

    def __init__(self, device_index: int = 0, interval: float = 0.05):
        self.device_index = device_index
        self.interval = interval
        self.notice: str | None = None
        self.samples: list[dict] = []
        self.peak_bandwidth: float | None = None  # bytes/s
        self._nvml = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NvmlSampler:
        try:
            import pynvml
        except ImportError:
            self.notice = (
                "NVML telemetry unavailable: nvidia-ml-py is not installed "
                "(pip install 'flexicodec-fast[bench]')"
            )
            return self
        try:
            pynvml.nvmlInit()
            self._handle = self._device_handle(pynvml)
        except Exception as e:  # noqa: BLE001 - any NVML failure means no telemetry
            self.notice = f"NVML telemetry unavailable: {e}"
            return self
        self._nvml = pynvml
        self.peak_bandwidth = self._peak_bandwidth()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def _device_handle(self, pynvml):
        """The NVML handle of torch's CUDA device `device_index`, matched by PCI bus id
        (NVML numbers devices ignoring CUDA_VISIBLE_DEVICES); by index when torch cannot say."""
        try:
            props = torch.cuda.get_device_properties(self.device_index)
            bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id.encode())
        except Exception:  # noqa: BLE001 - older torch, or no CUDA in this process
            return pynvml.nvmlDeviceGetHandleByIndex(self.device_index)

    def _metric(self, fn, *args):
        try:
            return fn(self._handle, *args)
        except Exception:  # noqa: BLE001 - a metric this device or driver does not report
            return None

    def _peak_bandwidth(self) -> float | None:
        """Theoretical DRAM bandwidth: max memory clock x bus width x 2 (double data rate)."""
        nv = self._nvml
        clock_mhz = self._metric(nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_MEM)
        width_bits = self._metric(nv.nvmlDeviceGetMemoryBusWidth)
        if not clock_mhz or not width_bits:
            return None
        return clock_mhz * 1e6 * 2 * width_bits / 8

    def _sample(self) -> dict:
        nv = self._nvml
        memory = self._metric(nv.nvmlDeviceGetMemoryInfo)
        rates = self._metric(nv.nvmlDeviceGetUtilizationRates)
        power = self._metric(nv.nvmlDeviceGetPowerUsage)
        return {
            "t": time.perf_counter(),
            "memory_used_bytes": None if memory is None else int(memory.used),
            "utilization_pct": None if rates is None else int(rates.gpu),
            "power_w": None if power is None else power / 1000.0,
            "sm_clock_mhz": self._metric(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
        }

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.samples.append(self._sample())
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down is best effort
                pass
        return False

    def summary(self) -> dict | None:
        """Max memory used, mean and max utilisation and power, mean SM clock."""
        if not self.samples:
            return None

        def values(key):
            return [s[key] for s in self.samples if s[key] is not None]

        def stat(key, fn):
            v = values(key)
            return fn(v) if v else None

        return {
            "samples": len(self.samples),
            "max_memory_used_bytes": stat("memory_used_bytes", max),
            "mean_utilization_pct": stat("utilization_pct", lambda v: sum(v) / len(v)),
            "max_utilization_pct": stat("utilization_pct", max),
            "mean_power_w": stat("power_w", lambda v: sum(v) / len(v)),
            "max_power_w": stat("power_w", max),
            "mean_sm_clock_mhz": stat("sm_clock_mhz", lambda v: sum(v) / len(v)),
            "peak_bandwidth_gbps": None
            if self.peak_bandwidth is None
            else self.peak_bandwidth / 1e9,
        }


# ----------------------------------------------------------------------------- bandwidth


def _numel(shape) -> int:
    return math.prod(shape) if shape else 0


def _floor_bytes(name: str, shapes: list, dtypes: list, concrete: list) -> int | None:
    """Bytes a fused op must move at least: its inputs read once, its outputs written once
    (design §3), from the shapes and dtypes the profiler recorded. None when unknown."""
    if not shapes or not shapes[0]:
        return None
    size = _DTYPE_BYTES.get(dtypes[0] if dtypes else "", 4)
    if name in SNAKE_OPS:
        return 2 * _numel(shapes[0]) * size
    if name == "flexicodec_fast::unmerge":
        batch, groups, dim = shapes[0]
        frames = concrete[3] if len(concrete) > 3 and isinstance(concrete[3], int) else groups
        streams = 2 if len(shapes) > 1 and shapes[1] else 1
        return (streams * groups + frames) * batch * dim * size + 8 * batch * groups
    if name == "flexicodec_fast::merge_segment":
        batch, frames, dim = shapes[0]
        return batch * frames * dim * size + batch * frames * (4 + 3 * 8)
    if name == "flexicodec_fast::merge_group_means":
        batch, frames, dim = shapes[0]
        groups = shapes[3][1] if len(shapes) > 3 and len(shapes[3]) == 2 else frames
        return (frames + groups) * batch * dim * size + 8 * batch * frames
    if name == "flexicodec_fast::interleave_queries":
        batch, frames, dim = shapes[0]
        groups = shapes[1][1]
        return 2 * (frames + groups) * batch * dim * size + 8 * batch * frames
    if name == "flexicodec_fast::retrieve_queries":
        batch, length, dim = shapes[0]
        groups = length - shapes[1][1]
        return 2 * groups * batch * dim * size + 8 * batch * shapes[1][1]
    if name == "flexicodec_fast::fsq":
        batch, groups, dim = shapes[0]
        return 2 * batch * groups * dim * size + 4 * batch * groups
    if name == "flexicodec_fast::fsq_decode":
        batch, groups = shapes[0]
        dim = shapes[1][0]
        out_size = _DTYPE_BYTES.get(dtypes[1] if len(dtypes) > 1 else "", 4)
        return batch * groups * (dim * out_size + size)
    return None


# ----------------------------------------------------------------------------- profile


@dataclass
class ProfileResult:
    """What `run_profile` measured. Times in milliseconds; `device_ms` only on CUDA."""

    device: str
    device_name: str
    audio_seconds: float
    precision: str
    parts: list[dict]
    ops: list[dict]
    bandwidth: list[dict]
    trace_path: str
    notices: list[str] = field(default_factory=list)
    nvml: dict | None = None
    table: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _resolve_device(device) -> tuple[torch.device, list[str]]:
    notices = []
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), notices
        notices.append("No NVIDIA GPU or driver found: profiling the CPU.")
        return torch.device("cpu"), notices
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device: 'cuda' was asked for, but no NVIDIA GPU or driver is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device, notices


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from platform import processor

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return processor() or "CPU"


def _event_times(event, on_cuda: bool) -> tuple[float, float]:
    """(self CPU us, self device us) of one event."""
    device_us = getattr(event, "self_device_time_total", 0.0) if on_cuda else 0.0
    return float(event.self_cpu_time_total), float(device_us)


def _analyse(events, index: PartIndex, on_cuda: bool, peak_bandwidth: float | None):
    """Per part and per (part, op) self times, and the memory-bound ops' bandwidth."""
    parts = {p: [0.0, 0.0] for p in (*PARTS, OTHER)}
    ops: dict[tuple[str, str], list] = {}
    moved: dict[str, list] = {}
    for event in events:
        if getattr(event, "device_type", None) is not None and event.device_type.name != "CPU":
            continue  # a device kernel: its time is on the op that launched it
        if event.name in ("encode", "decode"):
            continue  # the two top-level scopes: their self time is the profiler's own
        part = index.part_of(event)
        cpu_us, device_us = _event_times(event, on_cuda)
        parts[part][0] += cpu_us
        parts[part][1] += device_us
        name = PYTHON_OP if getattr(event, "is_python_function", False) else event.name
        row = ops.setdefault((part, name), [0, 0.0, 0.0])
        row[0] += 1
        row[1] += cpu_us
        row[2] += device_us
        if event.name in MEMORY_BOUND_OPS:
            nbytes = _floor_bytes(
                event.name,
                list(event.input_shapes or []),
                list(getattr(event, "input_dtypes", None) or []),
                list(getattr(event, "concrete_inputs", None) or []),
            )
            if nbytes is not None:
                us = event.device_time_total if on_cuda else event.cpu_time_total
                acc = moved.setdefault(event.name, [0, 0, 0.0])
                acc[0] += 1
                acc[1] += nbytes
                acc[2] += float(us)
    total_cpu = sum(v[0] for v in parts.values()) or 1.0
    total_dev = sum(v[1] for v in parts.values()) or 1.0
    part_rows = [
        {
            "part": p,
            "cpu_ms": v[0] / 1e3,
            "cpu_pct": 100.0 * v[0] / total_cpu,
            "device_ms": v[1] / 1e3 if on_cuda else None,
            "device_pct": 100.0 * v[1] / total_dev if on_cuda else None,
        }
        for p, v in parts.items()
    ]
    op_rows = [
        {
            "part": part,
            "op": name,
            "calls": v[0],
            "cpu_ms": v[1] / 1e3,
            "device_ms": v[2] / 1e3 if on_cuda else None,
        }
        for (part, name), v in ops.items()
    ]
    op_rows.sort(key=lambda r: -(r["device_ms"] if on_cuda else r["cpu_ms"]))
    bandwidth = []
    for name, (calls, nbytes, us) in sorted(moved.items()):
        gbps = nbytes / (us * 1e-6) / 1e9 if us > 0 else None
        peak = None if peak_bandwidth is None else peak_bandwidth / 1e9
        bandwidth.append(
            {
                "op": name,
                "calls": calls,
                "bytes": nbytes,
                "ms": us / 1e3,
                "gbps": gbps,
                "peak_gbps": peak,
                "pct_of_peak": None if gbps is None or peak is None else 100.0 * gbps / peak,
            }
        )
    return part_rows, op_rows, bandwidth


def format_profile(result: ProfileResult, top: int = 6) -> str:
    """The per-part table, each part's top ops, and the bandwidth table, as text."""
    on_cuda = result.device.startswith("cuda")
    key = "device_ms" if on_cuda else "cpu_ms"
    lines = [
        f"flexicodec-fast profile: {result.audio_seconds:.1f} s of audio, encode + decode, "
        f"{result.precision}, on {result.device} ({result.device_name})",
        *result.notices,
        "",
    ]
    head = f"{'part':<14}{'self CPU ms':>13}{'%':>7}"
    if on_cuda:
        head += f"{'self CUDA ms':>14}{'%':>7}"
    lines += [head, "-" * len(head)]
    for row in sorted(result.parts, key=lambda r: -r[key]):
        line = f"{row['part']:<14}{row['cpu_ms']:>13.1f}{row['cpu_pct']:>7.1f}"
        if on_cuda:
            line += f"{row['device_ms']:>14.2f}{row['device_pct']:>7.1f}"
        lines.append(line)
    lines += ["", f"top {top} ops of each part by self {'CUDA' if on_cuda else 'CPU'} time:"]
    for part in (*PARTS, OTHER):
        rows = [r for r in result.ops if r["part"] == part][:top]
        if not rows:
            continue
        lines.append(f"  {part}")
        for r in rows:
            line = f"    {r['op'][:56]:<58}{r['calls']:>7}x{r['cpu_ms']:>11.2f} ms CPU"
            if on_cuda:
                line += f"{r['device_ms']:>11.3f} ms CUDA"
            lines.append(line)
    if result.bandwidth:
        basis = "CUDA" if on_cuda else "CPU"
        lines += [
            "",
            f"memory-bound fused ops: floor bytes / {basis} time "
            "(peak: memory clock x bus width, from NVML)",
            f"  {'op':<38}{'calls':>6}{'MB':>10}{'ms':>10}{'GB/s':>9}{'% peak':>8}",
        ]
        for r in result.bandwidth:
            gbps = "n/a" if r["gbps"] is None else f"{r['gbps']:.1f}"
            pct = "n/a" if r["pct_of_peak"] is None else f"{r['pct_of_peak']:.0f}"
            lines.append(
                f"  {r['op']:<38}{r['calls']:>6}{r['bytes'] / 1e6:>10.1f}"
                f"{r['ms']:>10.3f}{gbps:>9}{pct:>8}"
            )
    if result.nvml:
        n = result.nvml

        def fmt(v, spec):
            return "n/a" if v is None else format(v, spec)

        mem = n["max_memory_used_bytes"]
        lines += [
            "",
            f"NVML ({n['samples']} samples): max memory used "
            f"{fmt(None if mem is None else mem / 2**30, '.2f')} GiB, utilisation mean "
            f"{fmt(n['mean_utilization_pct'], '.0f')} % (max {fmt(n['max_utilization_pct'], '.0f')}"
            f" %), power mean {fmt(n['mean_power_w'], '.0f')} W (max {fmt(n['max_power_w'], '.0f')}"
            f" W), SM clock mean {fmt(n['mean_sm_clock_mhz'], '.0f')} MHz",
        ]
    lines += ["", f"Chrome trace: {result.trace_path} (open in chrome://tracing or Perfetto)"]
    return "\n".join(lines)


def run_profile(
    model=None,
    audio: torch.Tensor | None = None,
    *,
    seconds: float = 30.0,
    out_dir: str | Path = "profile",
    device: str | torch.device = "auto",
    precision: str = "fp32",
    num_quantizers: int | None = None,
    threshold: float = 0.91,
    top: int = 6,
) -> ProfileResult:
    """Profile one `fast_encode` + `fast_decode` of `audio` (`[N]` or `[1, N]`, 16 kHz; None:
    `seconds` of `synthetic_speech`) with `model` (None: a randomly initialised tiny model).

    A first, unprofiled run warms up (the fast plan is built once per model). `model` is
    moved to `device` ("auto": the current CUDA device if there is one, else the CPU).
    Writes the Chrome trace to `out_dir/trace.json`; returns a `ProfileResult` whose `table`
    is the formatted report. `num_quantizers` None: 8, or the model's maximum if smaller.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from .fast import fast_decode, fast_encode

    device, notices = _resolve_device(device)
    if model is None:
        from .tiny import random_tiny_model

        model = random_tiny_model(seed=0)
        notices.append(
            "Model: a RANDOMLY INITIALISED tiny model (pass a checkpoint for real numbers)."
        )
    model = model.to(device).eval()
    if audio is None:
        audio = synthetic_speech(seconds)
    if not isinstance(audio, torch.Tensor) or audio.dim() not in (1, 2):
        raise InputError(f"audio: expected a float tensor [N] or [1, N], got {audio!r}")
    audio = audio.reshape(1, -1).to(device)
    nq = min(8, model.max_num_quantizers) if num_quantizers is None else num_quantizers
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    on_cuda = device.type == "cuda"

    def run(scope):
        with scope("encode"):
            enc = fast_encode(
                audio, model, num_quantizers=nq, merging_threshold=threshold, precision=precision
            )
        with scope("decode"):
            fast_decode(
                model,
                enc["semantic_codes"],
                enc["acoustic_codes"],
                enc["token_lengths"],
                precision=precision,
            )
        if on_cuda:
            torch.cuda.synchronize(device)

    run(lambda _name: contextlib.nullcontext())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    # The profiler imports modules of its own the first time it runs. With `with_stack` its
    # Python tracer keeps raw pointers to the code objects it sees and reads their names only
    # when the events are parsed; a module body run inside the profiled region is freed by
    # then, and its name may read back as bytes that are not text (torch then raises
    # UnicodeDecodeError, now and then). An empty profile first does those imports.
    with profile(activities=activities, with_stack=True), record_function("warm-up"):
        pass
    sampler = NvmlSampler(device.index or 0) if on_cuda else None
    with sampler or contextlib.nullcontext():
        with profile(activities=activities, record_shapes=True, with_stack=True) as prof:
            run(record_function)
    if sampler is not None and sampler.notice:
        notices.append(sampler.notice)
    peak = None if sampler is None else sampler.peak_bandwidth
    parts, ops, bandwidth = _analyse(prof.events(), PartIndex(), on_cuda, peak)
    trace_path = out_dir / "trace.json"
    prof.export_chrome_trace(str(trace_path))
    result = ProfileResult(
        device=str(device),
        device_name=_device_name(device),
        audio_seconds=audio.shape[1] / SAMPLE_RATE,
        precision=precision,
        parts=parts,
        ops=ops,
        bandwidth=bandwidth,
        trace_path=str(trace_path),
        notices=notices,
        nvml=None if sampler is None else sampler.summary(),
    )
    result.table = format_profile(result, top)
    return result


# ----------------------------------------------------------------------------- CLI


def _load_model(args):
    """The model named by --checkpoint/--config, else the built-in one, else None (a random
    tiny model: `run_profile` says so)."""
    from .loading import prepare_model
    from .reference.errors import CheckpointError

    if args.checkpoint or args.config:
        return prepare_model(args.checkpoint, args.config, args.sensevoice, args.device)
    try:
        return prepare_model(device=args.device)
    except CheckpointError:
        return None


def cmd_profile(args) -> int:
    if args.static:
        return _cmd_static(args)
    audio = None
    if args.audio is not None:
        from .jobs import read_audio

        audio = read_audio(args.audio, mix_down=True)
    result = run_profile(
        _load_model(args),
        audio,
        seconds=args.seconds,
        out_dir=args.out,
        device=args.device,
        precision=args.precision,
        num_quantizers=args.num_quantizers,
        threshold=args.threshold,
        top=args.top,
    )
    print(json.dumps(result.to_json(), indent=2) if args.json else result.table)
    return 0


def _cmd_static(args) -> int:
    from .kernels._triton import HAS_TRITON

    if not HAS_TRITON:
        print(
            "error: profile --static compiles the Triton kernels: install triton "
            "(pip install 'flexicodec-fast[kernels]')",
            file=sys.stderr,
        )
        return 2
    from .static_profile import format_table, static_report

    rows = static_report()
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def add_profile_parser(subparsers) -> None:
    """Register `flexicodec-fast profile` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "profile",
        help="per-part time of encode + decode (torch.profiler), or --static kernel report",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--static",
        action="store_true",
        help="ahead-of-time report of the Triton kernels (registers, spills, roofline); no GPU",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--seconds", type=float, default=30.0, help="length of the generated clip (default 30)"
    )
    p.add_argument("--audio", type=Path, help="profile this file instead of a generated clip")
    p.add_argument(
        "--out", type=Path, default=Path("profile"), help="folder for trace.json (default profile)"
    )
    p.add_argument("--threshold", type=float, default=0.91)
    p.add_argument("--num-quantizers", type=int, default=None)
    p.add_argument("--top", type=int, default=6, help="ops listed per part (default 6)")
    p.add_argument("--checkpoint", type=Path, help="FlexiCodec weights (.safetensors)")
    p.add_argument("--config", type=Path, help="official config YAML")
    p.add_argument("--sensevoice", type=Path, help="SenseVoiceSmall folder (model.pt, am.mvn)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.set_defaults(func=cmd_profile)
