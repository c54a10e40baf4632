"""The engine's GPU check (issue #21): correctness, a throughput sweep and a profile, written
to `OUT/gpu-engine.md` and `OUT/gpu-engine.json`. Run through `bench/gpu_check.sh`.

    python bench/gpu_check.py --out DIR              # CUDA: the full-size architecture
    python bench/gpu_check.py --out DIR --dry-run    # CPU, the tiny model, tiny sizes

Model: the released architecture with seeded random weights (`conftest.build_model`), the
merging threshold picked for ~8 Hz on 10 s clips (`conftest.pick_threshold`); clips are
`profiling.synthetic_speech`, passed as host tensors (as read from files) to every provider.

1. Correctness (fp32, TF32 off everywhere): on a mixed-length set (one clip longer than the
   largest bucket), the graphed engine's codes `torch.equal` per-clip eager `fast_encode`'s
   and the reference's; the engine's decoded audio within `AUDIO_TOLERANCE` relative L2 of
   per-clip `fast_decode` and of the reference decoder.
2. Sweep: providers reference, eager `fast_encode` (batched for B x 10 s, a per-clip loop on
   the corpus) and the engine in fp32 / tf32 / bf16, on B in {1, 16, 64} x 10 s and a
   20-minute corpus of 2-30 s clips: x real time, peak memory, capture time and shapes,
   padding, per-frame code agreement with the fp32 engine. Each entry: one untimed call
   (captures included), then up to `ROUNDS` timed calls while under `ENTRY_SECONDS`; an
   entry starting past the sweep's deadline is recorded as skipped.
3. Profile: one full engine bucket (B x 10 s, B the bucket's batch) under `torch.profiler`,
   graphed and eager: device activities per bucket, busy fraction, top kernels; NVML power,
   clocks and utilisation over repeated replays (`profiling.NvmlSampler`; a line says why
   when NVML is missing).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import build_model, environment, pick_threshold  # noqa: E402

from flexicodec_fast import Engine, fast_decode, fast_encode  # noqa: E402
from flexicodec_fast.profiling import NvmlSampler, synthetic_speech  # noqa: E402
from flexicodec_fast.reference.merging import group_ids_from_lengths  # noqa: E402

# Relative L2 error of decoded audio against fp32 decoding (tests/tolerances.py, "audio").
AUDIO_TOLERANCE = 1e-5
CODE_KEYS = ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames")
PRECISIONS = ("fp32", "tf32", "bf16")
ROUNDS = 3
TOP_KERNELS = 12


def sizes(dry_run: bool) -> SimpleNamespace:
    """Workload sizes of the real check and of the dry run."""
    if dry_run:
        return SimpleNamespace(
            size="tiny",
            batches=(1, 2),
            clip_seconds=0.5,
            corpus_seconds=2.0,
            corpus_range=(0.3, 1.0),
            correctness=(0.3, 0.55, 1.0, 1.37),
            bucket_seconds=(0.5, 1.0),
            max_batch=2,
            entry_seconds=0.0,  # the untimed call only: the dry run checks the plumbing
            sweep_seconds=math.inf,
            nvml_seconds=0.0,
        )
    return SimpleNamespace(
        size="full",
        batches=(1, 16, 64),
        clip_seconds=10.0,
        corpus_seconds=1200.0,
        corpus_range=(2.0, 30.0),
        correctness=(2.0, 3.37, 5.0, 7.91, 10.0, 14.2, 21.5, 29.9, 31.3),
        bucket_seconds=None,  # the engine's default grid (1 s ... 30 s)
        max_batch=64,
        entry_seconds=15.0,
        sweep_seconds=170.0,
        nvml_seconds=5.0,
    )


def corpus_lengths(total: float, low: float, high: float, seed: int = 0) -> list[float]:
    """Clip lengths in seconds (10 ms steps), uniform in [low, high], until `total`."""
    gen = torch.Generator().manual_seed(seed)
    lengths: list[float] = []
    while sum(lengths) < total:
        lengths.append(round(low + (high - low) * float(torch.rand((), generator=gen)), 2))
    return lengths


def clips_of(lengths, first_seed: int) -> list[torch.Tensor]:
    return [synthetic_speech(s, seed=first_seed + i) for i, s in enumerate(lengths)]


class Timer:
    """Wall time of device work: synchronises before reading the clock on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn):
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out


class TF32Off:
    """TF32 off for matmuls and cuDNN (PyTorch lets cuDNN use it by default); restored."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
        return False


def codes_equal(got: dict, want: dict) -> bool:
    """Every discrete output identical (host copies compared)."""
    for key in CODE_KEYS:
        if (got[key] is None) != (want[key] is None):
            return False
        if got[key] is not None and not torch.equal(got[key].cpu(), want[key].cpu()):
            return False
    return True


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """`||got - want|| / ||want||` (as tests/tolerances.py)."""
    got, want = got.double().cpu(), want.double().cpu()
    scale = float(want.norm())
    return float((got - want).norm()) / (scale if scale > 0 else 1.0)


def frame_codes(result: dict) -> torch.Tensor:
    """Every stream's code at every 12.5 Hz frame of a one-clip result `[K, T]`: codes
    compared per frame stay comparable when another precision merges differently."""
    ids = group_ids_from_lengths(result["token_lengths"].cpu())[0]
    codes = [result["semantic_codes"].cpu().long()[0]]
    if result["acoustic_codes"] is not None:
        codes.append(result["acoustic_codes"].cpu()[0])
    codes = torch.cat(codes, dim=0)
    return codes[:, ids[ids >= 0]]


def agreement(results: list, base: list) -> dict:
    """Per-frame code agreement of one-clip results with the base's, and how many clips
    have the base's merging (token lengths) exactly."""
    same = total = sem_same = frames = 0
    merging = 0
    for r, b in zip(results, base, strict=True):
        c, cb = frame_codes(r), frame_codes(b)
        n = min(c.shape[1], cb.shape[1])
        eq = c[:, :n] == cb[:, :n]
        same += int(eq.sum())
        total += c.shape[0] * cb.shape[1]
        sem_same += int(eq[0].sum())
        frames += cb.shape[1]
        merging += torch.equal(r["token_lengths"].cpu(), b["token_lengths"].cpu())
    return {
        "frame_agreement": same / max(total, 1),
        "semantic_frame_agreement": sem_same / max(frames, 1),
        "clips_with_identical_merging": f"{merging}/{len(base)}",
    }


def split(batch_result: dict, count: int) -> list[dict]:
    """Item b of a batched `fast_encode` / reference result, trimmed to its own tokens."""
    out = []
    for b in range(count):
        groups = int(batch_result["total_frames"][b])
        item = {
            "semantic_codes": batch_result["semantic_codes"][b : b + 1, :, :groups],
            "acoustic_codes": None
            if batch_result["acoustic_codes"] is None
            else batch_result["acoustic_codes"][b : b + 1, :, :groups],
            "token_lengths": batch_result["token_lengths"][b : b + 1, :groups],
            "total_frames": batch_result["total_frames"][b : b + 1],
        }
        out.append(item)
    return out


class Check:
    def __init__(self, args):
        self.dry_run = args.dry_run
        self.s = sizes(args.dry_run)
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        self.timer = Timer(self.device)
        cfg = SimpleNamespace(size=self.s.size, device=self.device)
        self.model = build_model(cfg)
        self.nq = min(8, self.model.max_num_quantizers)
        self.bench_env = environment(SimpleNamespace(device=self.device, size=self.s.size))
        pick = clips_of([self.s.clip_seconds] * 4, first_seed=1000)
        enc = fast_encode(torch.stack(pick), self.model, num_quantizers=1)
        self.threshold = pick_threshold(enc["similarity"].cpu(), 8.0)
        self.args = dict(num_quantizers=self.nq, merging_threshold=self.threshold)

    def engine(self, precision: str, cuda_graphs: bool = True) -> Engine:
        grid = {} if self.s.bucket_seconds is None else {"bucket_seconds": self.s.bucket_seconds}
        return Engine(
            self.model,
            precision=precision,
            cuda_graphs=cuda_graphs,
            max_batch=self.s.max_batch,
            **self.args,
            **grid,
        )

    def reference(self, audio: torch.Tensor):
        with torch.inference_mode(), TF32Off():
            return self.model.encode(audio.to(self.device), **self.args)

    def reference_decode(self, r: dict) -> torch.Tensor:
        codes = [r[k].to(self.device) if r[k] is not None else None for k in CODE_KEYS[:3]]
        with torch.inference_mode(), TF32Off():
            return self.model.decode(*codes)[0, 0]

    def memory_reset(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def memory_peak(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return None

    def release(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -------------------------------------------------------------------- correctness

    def correctness(self) -> dict:
        lengths = self.s.correctness
        clips = clips_of(lengths, first_seed=500)
        engine = self.engine("fp32")
        got = list(engine.encode_many(clips))
        per_clip = []
        for seconds, clip, g in zip(lengths, clips, got, strict=True):
            eager = fast_encode(clip[None], self.model, **self.args)
            ref = self.reference(clip[None])
            per_clip.append(
                {
                    "seconds": seconds,
                    "tokens": int(g["total_frames"][0]),
                    "frames": int(g["token_lengths"].sum()),
                    "engine_equals_fast_encode": codes_equal(g, eager),
                    "engine_equals_reference": codes_equal(g, ref),
                    "fast_encode_equals_reference": codes_equal(eager, ref),
                }
            )
        decoded = list(engine.decode_many(got))
        vs_fast, vs_ref = [], []
        for g, audio in zip(got, decoded, strict=True):
            codes = [g[k] for k in CODE_KEYS[:3]]
            vs_fast.append(relative_error(audio, fast_decode(self.model, *codes)[0, 0]))
            vs_ref.append(relative_error(audio, self.reference_decode(g)))
        stats = engine.stats
        out = {
            "clip_seconds": list(lengths),
            "oversize_clips": stats.oversize_clips,
            "captured_shapes": stats.captured_shapes,
            "graph_failures": {str(k): v for k, v in stats.graph_failures.items()},
            "per_clip": per_clip,
            "decode_rel_l2_vs_fast_decode_max": max(vs_fast),
            "decode_rel_l2_vs_reference_max": max(vs_ref),
            "audio_tolerance": AUDIO_TOLERANCE,
        }
        for key in (
            "engine_equals_fast_encode",
            "engine_equals_reference",
            "fast_encode_equals_reference",
        ):
            out[key] = all(c[key] for c in per_clip)
        out["decode_within_tolerance"] = max(vs_fast + vs_ref) < AUDIO_TOLERANCE
        # The sweep's fp32 engine: its shapes captured here are not captured twice.
        self.fp32_engine = engine
        return out

    # -------------------------------------------------------------------- sweep

    def workloads(self) -> list[tuple[str, list[torch.Tensor]]]:
        s = self.s
        out = []
        for batch in s.batches:
            out.append(
                (f"B{batch}x{s.clip_seconds:g}s", clips_of([s.clip_seconds] * batch, first_seed=0))
            )
        lengths = corpus_lengths(s.corpus_seconds, *s.corpus_range)
        out.append(
            (f"corpus {len(lengths)} clips {sum(lengths) / 60:.1f} min", clips_of(lengths, 100))
        )
        return out

    def provider_fn(self, provider: str, clips: list[torch.Tensor], same_length: bool, engine):
        """A call encoding all clips, returning one-clip results in order."""
        if provider == "reference":
            if same_length:
                return lambda: split(self.reference(torch.stack(clips)), len(clips))
            return lambda: [split(self.reference(c[None]), 1)[0] for c in clips]
        if provider == "fast_encode":
            if same_length:
                return lambda: split(
                    fast_encode(torch.stack(clips), self.model, **self.args), len(clips)
                )
            return lambda: [fast_encode(c[None], self.model, **self.args) for c in clips]
        return lambda: list(engine.encode_many(clips))

    def measure(self, provider, name, clips, engine, deadline) -> tuple[dict, list | None]:
        audio_seconds = sum(c.shape[0] for c in clips) / 16000
        entry = {"workload": name, "provider": provider, "audio_seconds": audio_seconds}
        if time.perf_counter() > deadline:
            entry["skipped"] = "the sweep's time budget was spent"
            return entry, None
        same_length = len({c.shape[0] for c in clips}) == 1
        fn = self.provider_fn(provider, clips, same_length, engine)
        before = None
        if engine is not None:
            st = engine.stats
            before = (st.capture_seconds, st.captured_shapes, st.padded_seconds, st.audio_seconds)
        self.memory_reset()
        first, out = self.timer(fn)
        times = []
        while len(times) < ROUNDS and sum(times) + first < self.s.entry_seconds:
            elapsed, out = self.timer(fn)
            times.append(elapsed)
        if not times:
            times = [first]
            entry["note"] = "one call only (the first, captures included): over the entry limit"
        times.sort()
        median = times[len(times) // 2]
        entry.update(
            rounds=len(times),
            first_call_s=first,
            median_s=median,
            min_s=times[0],
            x_real_time=audio_seconds / median,
            peak_memory_bytes=self.memory_peak(),
        )
        if engine is not None:
            st = engine.stats
            engine_audio = st.audio_seconds - before[3]
            entry.update(
                capture_seconds=st.capture_seconds - before[0],
                new_captured_shapes=st.captured_shapes - before[1],
                padded_fraction=(st.padded_seconds - before[2])
                / max(st.padded_seconds - before[2] + engine_audio, 1e-9),
                graph_failures=len(st.graph_failures),
            )
        return entry, out

    def sweep(self, workloads, report: dict, save) -> None:
        """Fills report["sweep"] (entry by entry) and report["profile"], saving after each."""
        deadline = time.perf_counter() + self.s.sweep_seconds
        entries = report["sweep"] = []
        fp32_results: dict = {}

        def add(entry):
            entries.append(entry)
            print(json.dumps(entry), flush=True)
            save()

        # Engines first, while the fp32 one still holds the shapes the correctness section
        # captured; the eager providers run once the engines' graph memory is released.
        for precision in PRECISIONS:
            engine = self.fp32_engine if precision == "fp32" else self.engine(precision)
            self.fp32_engine = None
            for name, clips in workloads:
                entry, out = self.guarded("engine", name, clips, engine, deadline)
                entry["precision"] = precision
                if out is not None and precision == "fp32":
                    fp32_results[name] = out
                elif out is not None and name in fp32_results:
                    entry["codes_vs_engine_fp32"] = agreement(out, fp32_results[name])
                add(entry)
            if precision == "fp32":
                try:
                    report["profile"] = self.profile(engine)
                except Exception as e:  # noqa: BLE001 - a failed profile must not end the run
                    report["profile"] = {"error": f"{type(e).__name__}: {e}"}
                save()
            del engine
            self.release()
        for provider in ("reference", "fast_encode"):
            for name, clips in workloads:
                entry, _ = self.guarded(provider, name, clips, None, deadline)
                entry["precision"] = "fp32"
                add(entry)
            self.release()

    def guarded(self, provider, name, clips, engine, deadline) -> tuple[dict, list | None]:
        """`measure`, recording an error (out of memory, say) as the entry's result so that
        the other entries still run."""
        try:
            return self.measure(provider, name, clips, engine, deadline)
        except Exception as e:  # noqa: BLE001 - reported in the entry, the sweep goes on
            self.release()
            return {
                "workload": name,
                "provider": provider,
                "skipped": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            }, None

    # -------------------------------------------------------------------- profile

    def profile(self, engine: Engine) -> dict:
        """One full bucket of clips of `clip_seconds`, graphed (this engine) and eager."""
        bucket = engine.bucket_for(round(self.s.clip_seconds * 16000))
        clips = clips_of([self.s.clip_seconds] * bucket.batch, first_seed=0)
        out = {"bucket_samples": bucket.samples, "bucket_batch": bucket.batch}
        eager = self.engine("fp32", cuda_graphs=False)
        for label, eng in (("graphed", engine), ("eager", eager)):
            if label == "graphed" and not engine.cuda_graphs:
                out[label] = {"skipped": "CUDA graphs need a CUDA device"}
                continue
            list(eng.encode_many(clips))  # warm-up (and capture)
            out[label] = self.profile_one(eng, clips)
        del eager
        with NvmlSampler(interval=0.05) as sampler:
            calls, start = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - start < self.s.nvml_seconds:
                self.timer(lambda: list(engine.encode_many(clips)))
                calls += 1
        out["nvml"] = {
            "calls": calls,
            "notice": sampler.notice,
            "summary": sampler.summary(),
            "x_real_time": calls
            * bucket.batch
            * self.s.clip_seconds
            / (time.perf_counter() - start),
        }
        return out

    def profile_one(self, engine: Engine, clips) -> dict:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        runs = engine.stats.runs
        with profile(activities=activities) as prof:
            wall, _ = self.timer(lambda: list(engine.encode_many(clips)))
        runs = engine.stats.runs - runs
        target = DeviceType.CUDA if self.device.type == "cuda" else DeviceType.CPU
        events = [e for e in prof.events() if e.device_type == target]
        if target == DeviceType.CPU:
            # CPU: the aten operators that do the work (no nested operator under them).
            events = [e for e in events if e.name.startswith("aten::") and not e.cpu_children]
        intervals = sorted((e.time_range.start, e.time_range.end) for e in events)
        busy, end = 0.0, -math.inf
        for a, b in intervals:
            if b > end:
                busy += b - max(a, end)
                end = b
        by_name: dict[str, list[float]] = {}
        for e in events:
            by_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
        total = sum(sum(v) for v in by_name.values())
        top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:TOP_KERNELS]
        return {
            "bucket_runs": runs,
            "wall_s_under_profiler": wall,
            "activities": "CUDA kernels, copies and memsets"
            if target == DeviceType.CUDA
            else "CPU aten leaf operators (the dry run has no GPU)",
            "activities_per_bucket": len(events) / max(runs, 1),
            "busy_fraction": busy / 1e6 / wall,
            "top": [
                {
                    "name": name[:90],
                    "count": len(v),
                    "total_ms": sum(v) / 1e3,
                    "share": sum(v) / total if total else 0.0,
                }
                for name, v in top
            ],
        }


# ------------------------------------------------------------------------ report


def environment_info(check: Check) -> dict:
    info = dict(check.bench_env)
    info.update(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=platform.node(),
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        load_average=os.getloadavg(),
        dry_run=check.dry_run,
        model=f"{check.s.size} architecture, random weights (seed 0)",
        num_quantizers=check.nq,
        merging_threshold=check.threshold,
    )
    return info


def fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(report: dict) -> str:
    env, corr = report["environment"], report["correctness"]
    lines = [
        f"# Engine GPU check ({'DRY RUN on CPU, tiny model' if env['dry_run'] else 'CUDA'})",
        *([] if report["complete"] else ["", "**Incomplete: the run stopped before the end.**"]),
        "",
        f"{env['date']}: {env['device_name']} ({env['device']}), torch {env['torch']}, "
        f"triton {env['triton']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"{env['threads']} threads, load {', '.join(f'{x:.2f}' for x in env['load_average'])}. "
        f"Model: {env['model']}, nq {env['num_quantizers']}, threshold "
        f"{env['merging_threshold']:.5f} (~8 Hz).",
        "",
        "## Correctness (fp32, TF32 off)",
        "",
        f"Clips (s): {', '.join(f'{s:g}' for s in corr['clip_seconds'])}; "
        f"{corr['oversize_clips']} longer than the largest bucket; "
        f"{corr['captured_shapes']} shapes captured, graph failures: "
        f"{corr['graph_failures'] or 'none'}.",
        "",
        f"- engine codes == per-clip fast_encode: **{corr['engine_equals_fast_encode']}**",
        f"- engine codes == reference: **{corr['engine_equals_reference']}**",
        f"- fast_encode codes == reference: **{corr['fast_encode_equals_reference']}**",
        f"- decoded audio, max relative L2 vs fast_decode "
        f"{corr['decode_rel_l2_vs_fast_decode_max']:.2e}, vs reference "
        f"{corr['decode_rel_l2_vs_reference_max']:.2e} (tolerance {corr['audio_tolerance']:g}): "
        f"**{'within' if corr['decode_within_tolerance'] else 'OUTSIDE'}**",
    ]
    differing = [c for c in corr["per_clip"] if not all(v for k, v in c.items() if "equals" in k)]
    for c in differing:
        lines.append(f"  - clip {c['seconds']} s differs: {c}")
    pytest_info = report.get("pytest_cuda")
    if pytest_info:
        lines.append(f"- `pytest -m cuda`: {pytest_info}")
    lines += [
        "",
        "## Throughput",
        "",
        "x RT = audio seconds / median wall second. Engine entries include padding (share of "
        "padded samples in its batches); capture = seconds spent capturing new CUDA graphs in "
        "the first call.",
        "",
        "| workload | provider | precision | rounds | median s | x RT | peak GiB | capture s "
        "(shapes) | padded | codes vs engine fp32 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in report.get("sweep", []):
        if "skipped" in e:
            lines.append(
                f"| {e['workload']} | {e['provider']} | {e['precision']} | skipped: "
                f"{e['skipped']} |||||||"
            )
            continue
        peak = e.get("peak_memory_bytes")
        capture = (
            f"{e['capture_seconds']:.2f} ({e['new_captured_shapes']})"
            if "capture_seconds" in e
            else ""
        )
        padded = f"{e['padded_fraction']:.0%}" if "padded_fraction" in e else ""
        agree = e.get("codes_vs_engine_fp32")
        agree_text = (
            f"{agree['frame_agreement']:.1%} frames, merging "
            f"{agree['clips_with_identical_merging']}"
            if agree
            else ""
        )
        lines.append(
            f"| {e['workload']} | {e['provider']} | {e['precision']} | {e['rounds']} | "
            f"{e['median_s']:.3g} | {fmt(e['x_real_time'])} | "
            f"{'-' if peak is None else f'{peak / 2**30:.2f}'} | {capture} | {padded} | "
            f"{agree_text} |"
        )
    prof = report.get("profile")
    if prof and "error" in prof:
        lines += ["", f"## Profile: failed ({prof['error']})"]
    elif prof:
        lines += [
            "",
            f"## Profile: one bucket of {prof['bucket_batch']} x "
            f"{prof['bucket_samples'] / 16000:g} s",
            "",
        ]
        for label in ("graphed", "eager"):
            p = prof[label]
            if "skipped" in p:
                lines.append(f"- {label}: skipped ({p['skipped']})")
                continue
            lines.append(
                f"- {label}: {p['activities_per_bucket']:.0f} {p['activities']} per bucket, "
                f"busy {p['busy_fraction']:.0%} of {p['wall_s_under_profiler']:.3f} s wall "
                "(under the profiler)"
            )
        for label in ("graphed", "eager"):
            p = prof[label]
            if "top" not in p:
                continue
            lines += [
                "",
                f"Top by time ({label}):",
                "",
                "| name | count | ms | share |",
                "|---|---:|---:|---:|",
            ]
            for t in p["top"]:
                lines.append(
                    f"| `{t['name']}` | {t['count']} | {t['total_ms']:.2f} | {t['share']:.0%} |"
                )
        nvml = prof["nvml"]
        lines += [
            "",
            f"NVML over {nvml['calls']} engine calls of this bucket "
            f"({fmt(nvml['x_real_time'])} x RT): "
            + (nvml["notice"] or json.dumps(nvml["summary"])),
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--pytest-summary", default=None, help="the cuda tests' summary line")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: use --dry-run")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        # Tiny tensors: one thread avoids OpenMP threads waiting on each other.
        torch.set_num_threads(1)
    torch.manual_seed(0)
    started = time.perf_counter()
    check = Check(args)
    report = {
        "environment": environment_info(check),
        "pytest_cuda": args.pytest_summary or "not run",
        "complete": False,
    }

    def save():
        # After every section and sweep entry: a run stopped by its time limit keeps what
        # it measured.
        report["seconds"] = time.perf_counter() - started
        (args.out / "gpu-engine.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (args.out / "gpu-engine.md").write_text(markdown(report))

    print(f"model ready in {time.perf_counter() - started:.1f} s", flush=True)
    report["correctness"] = check.correctness()
    print(json.dumps(report["correctness"]), flush=True)
    save()
    check.sweep(check.workloads(), report, save)
    report["complete"] = True
    save()
    print(f"wrote {args.out}/gpu-engine.md and .json in {report['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
