"""`flexicodec-fast eval DIR`: the codec's quality on a folder of audio, at one or more
merging settings side by side.

Every file is read, mixed down to mono and resampled to 16 kHz (`flexicodec_fast.resampling`),
encoded and decoded one file at a time with `fast_encode` / `fast_decode`, and the decoded
audio is compared with that 16 kHz input over their common length (the decoder returns
`1280 T - 16` samples for `T` 12.5 Hz frames, so it may be up to 1296 samples shorter).
Metrics, all offline:

* STOI and extended STOI (`pystoi`; Taal et al. 2011, Jensen & Taal 2016): 0-1, higher is
  more intelligible;
* wide-band PESQ (`pesq` package, mode "wb", ITU-T P.862.2): about 1.0-4.64, higher is better;
  `None` where PESQ finds no utterance (silence);
* SI-SDR (Le Roux et al. 2019) in dB: with zero-mean reference `s` and estimate `e`,
  `a = <e, s> / ||s||^2`, `SI-SDR = 10 log10(||a s||^2 / ||a s - e||^2)`; higher is better
  (+inf for a perfect copy, written as `null` in JSON);
* log-mel distance: the multi-scale mel L1 of training (`reference.losses.MultiScaleMelLoss`
  with mel filters for the true 16 kHz rate): 7 STFT scales with periodic Hann windows of
  32, 64, ..., 2048 samples, hop a quarter window, 5, 10, ..., 320 Slaney mel bands over
  0-8 kHz, L1 between `log10(max(mel magnitude, 1e-5))` of the two, weight 2 per scale,
  summed; 0 for identical audio, lower is better (the number docs/builtin_eval.md reports);
* average frame rate: tokens per 12.5 Hz frame x 12.5 (Hz), as the demo prints it;
* tokens per second: tokens x number of quantizers (every codebook's codes) per second of
  input audio.

Totals: quality metrics are means over files; the frame rate and tokens per second are
computed from the summed tokens, frames and seconds. Output: markdown (also printed), JSON and
a PNG of each file's quality against its frame rate, one colour per setting. Needs the `eval`
extra (pystoi, pesq, matplotlib).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .reference.errors import FlexiCodecError, InputError

METRICS = {  # key: (label, higher is better)
    "stoi": ("STOI", True),
    "estoi": ("ESTOI", True),
    "pesq_wb": ("PESQ-WB", True),
    "si_sdr_db": ("SI-SDR (dB)", True),
    "log_mel": ("log-mel dist.", False),
}
SAMPLE_RATE = 16000


class MetricsUnavailable(FlexiCodecError, ImportError):
    """A package the quality metrics need is not installed."""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise MetricsUnavailable(
            f"eval: the quality metrics need the {module} package: "
            "pip install 'flexicodec-fast[eval]'"
        ) from e


@dataclass(frozen=True)
class Setting:
    """One merging setting: a fixed threshold or a target frame rate (Hz)."""

    threshold: float | None = None
    target_frame_rate: float | None = None

    @property
    def label(self) -> str:
        if self.target_frame_rate is not None:
            return f"target {self.target_frame_rate:g} Hz"
        return f"threshold {self.threshold:g}"


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB of `estimate [N]` against `reference [N]` (float64)."""
    s = reference.astype(np.float64) - reference.mean()
    e = estimate.astype(np.float64) - estimate.mean()
    target = (np.dot(e, s) / np.dot(s, s)) * s
    noise = np.dot(target - e, target - e)
    if noise == 0:
        return math.inf
    return float(10 * np.log10(np.dot(target, target) / noise))


def log_mel_distance(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Multi-scale log-mel L1 of `estimate [N]` against `reference [N]` (module docstring)."""
    from .reference.losses import MelLossSettings, MultiScaleMelLoss

    loss = MultiScaleMelLoss(MelLossSettings(filter_sample_rate=None))
    with torch.no_grad():
        return float(loss(estimate[None].float(), reference[None].float()))


def quality(reference: torch.Tensor, decoded: torch.Tensor) -> dict:
    """Every quality metric of `decoded [M]` against `reference [N]` (16 kHz), over their
    common length."""
    pystoi, pesq = _require("pystoi"), _require("pesq")
    n = min(reference.numel(), decoded.numel())
    ref, dec = reference[:n].cpu(), decoded[:n].cpu()
    ref64, dec64 = ref.double().numpy(), dec.double().numpy()
    try:
        pesq_wb = float(pesq.pesq(SAMPLE_RATE, ref64, dec64, "wb"))
    except pesq.NoUtterancesError:
        pesq_wb = None
    return {
        "stoi": float(pystoi.stoi(ref64, dec64, SAMPLE_RATE, extended=False)),
        "estoi": float(pystoi.stoi(ref64, dec64, SAMPLE_RATE, extended=True)),
        "pesq_wb": pesq_wb,
        "si_sdr_db": si_sdr(ref64, dec64),
        "log_mel": log_mel_distance(ref, dec),
    }


def read_16k(path: Path) -> torch.Tensor:
    """A file as 16 kHz mono float32 `[N]` (channels averaged)."""
    from .resampling import resample

    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1)))
    return resample(audio, sr, SAMPLE_RATE)


def evaluate(
    model,
    files: list[Path],
    settings: list[Setting],
    num_quantizers: int | None = None,
    precision: str = "fp32",
    attention_window: float | None = None,
    names: list[str] | None = None,
) -> dict:
    """Encode and decode every file at every setting and measure it. Returns the report:
    `{"num_quantizers", "settings": [...], "results": [{"setting", "label", "files": [row],
    "total": row}]}`, a row holding the metrics of `quality`, `seconds`, `frames`, `tokens`,
    `frame_rate_hz`, `tokens_per_second` (and `threshold` chosen for a target rate)."""
    from .fast import fast_decode, fast_encode
    from .model_input import resolve_model

    model = resolve_model(model)
    for module in ("pystoi", "pesq"):
        _require(module)
    if not files:
        raise InputError("eval: expected at least one audio file, got none")
    if not settings:
        raise InputError("eval: expected at least one setting, got none")
    nq = model.max_num_quantizers if num_quantizers is None else num_quantizers
    nq = min(nq, model.max_num_quantizers)
    frame_hz = SAMPLE_RATE / model.config.hop_length
    names = names or [str(p) for p in files]
    results = [{"setting": asdict(s), "label": s.label, "files": [], "total": {}} for s in settings]
    for path, name in zip(files, names, strict=True):
        audio = read_16k(path)
        for setting, result in zip(settings, results, strict=True):
            enc = fast_encode(
                audio[None],
                model,
                num_quantizers=nq,
                merging_threshold=0.91 if setting.threshold is None else setting.threshold,
                target_frame_rate=setting.target_frame_rate,
                precision=precision,
                attention_window=attention_window,
            )
            codes = (enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
            decoded = fast_decode(
                model, *codes, precision=precision, attention_window=attention_window
            )
            frames, tokens = int(enc["token_lengths"].sum()), int(enc["total_frames"][0])
            seconds = audio.numel() / SAMPLE_RATE
            row = {
                "file": name,
                "seconds": seconds,
                "frames": frames,
                "tokens": tokens,
                "frame_rate_hz": tokens / frames * frame_hz,
                "tokens_per_second": tokens * nq / seconds,
                **quality(audio, decoded[0, 0]),
            }
            if "thresholds" in enc:
                row["threshold"] = float(enc["thresholds"][0])
            result["files"].append(row)
    for result in results:
        result["total"] = _total(result["files"], nq, frame_hz)
    return {"num_quantizers": nq, "settings": [asdict(s) for s in settings], "results": results}


def _total(rows: list[dict], nq: int, frame_hz: float) -> dict:
    seconds = sum(r["seconds"] for r in rows)
    frames, tokens = sum(r["frames"] for r in rows), sum(r["tokens"] for r in rows)
    total = {
        "file": f"all ({len(rows)} files)",
        "seconds": seconds,
        "frames": frames,
        "tokens": tokens,
        "frame_rate_hz": tokens / frames * frame_hz,
        "tokens_per_second": tokens * nq / seconds,
    }
    for key in METRICS:
        values = [r[key] for r in rows if r[key] is not None]
        total[key] = sum(values) / len(values) if values else None
    return total


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def to_markdown(report: dict) -> str:
    """A summary table (metrics x settings, side by side) and a per-file table."""
    results = report["results"]
    count = len(results[0]["files"])
    lines = [
        f"Quality of decoded audio against the 16 kHz input, {report['num_quantizers']} "
        f"quantizers; totals are means over {count} file{'s' if count != 1 else ''}.",
        "",
        "| metric | " + " | ".join(r["label"] for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    rows = {"frame_rate_hz": "avg frame rate (Hz)", "tokens_per_second": "tokens/s"}
    rows.update({k: f"{label} {'↑' if up else '↓'}" for k, (label, up) in METRICS.items()})
    for key, label in rows.items():
        digits = 2 if key in ("frame_rate_hz", "tokens_per_second", "si_sdr_db") else 3
        cells = [_cell(r["total"][key], digits) for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| file | setting | s | frame rate (Hz) | tokens/s | "
        + " | ".join(label for label, _ in METRICS.values())
        + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(METRICS),
    ]
    for index in range(len(results[0]["files"])):
        for r in results:
            row = r["files"][index]
            cells = [
                row["file"],
                r["label"],
                _cell(row["seconds"], 2),
                _cell(row["frame_rate_hz"], 2),
                _cell(row["tokens_per_second"], 1),
                *(_cell(row[k], 2 if k == "si_sdr_db" else 3) for k in METRICS),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json(report: dict) -> str:
    """The report as strict JSON (non-finite numbers, a perfect copy's SI-SDR, are null)."""
    return json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"


def plot(report: dict, path: Path) -> None:
    """PNG: each file's quality against its average frame rate, one colour per setting."""
    _require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for ax, (key, (label, up)) in zip(axes.flat, METRICS.items(), strict=False):
        for result in report["results"]:
            points = [
                (r["frame_rate_hz"], r[key])
                for r in result["files"]
                if r[key] is not None and math.isfinite(r[key])
            ]
            if points:
                x, y = zip(*points, strict=True)
                ax.scatter(x, y, label=result["label"], s=18)
        ax.set_xlabel("average frame rate (Hz)")
        ax.set_ylabel(f"{label} ({'higher' if up else 'lower'} is better)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    axes.flat[-1].axis("off")
    fig.suptitle(f"Per-file quality vs frame rate ({report['num_quantizers']} quantizers)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict, out: Path) -> dict[str, Path]:
    """`eval.md`, `eval.json` and `eval.png` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "eval.md", "json": out / "eval.json", "png": out / "eval.png"}
    paths["markdown"].write_text(to_markdown(report))
    paths["json"].write_text(to_json(report))
    plot(report, paths["png"])
    return paths


def cmd_eval(args) -> int:
    from .cli import load_model
    from .jobs import AUDIO_SUFFIXES, collect

    found = collect(args.paths, AUDIO_SUFFIXES)
    if not found:
        raise InputError(
            f"eval: no audio files ({', '.join(AUDIO_SUFFIXES)}) under "
            f"{', '.join(map(str, args.paths))}"
        )
    settings = [Setting(threshold=t) for t in args.threshold or ()]
    settings += [Setting(target_frame_rate=r) for r in args.target_frame_rate or ()]
    model, _ = load_model(args)
    report = evaluate(
        model,
        [path for path, _ in found],
        settings or [Setting(threshold=0.91)],
        num_quantizers=args.num_quantizers,
        precision=args.precision,
        attention_window=args.attention_window,
        names=[str(rel) for _, rel in found],
    )
    paths = write_report(report, args.out)
    sys.stdout.write(to_markdown(report))
    print(f"written: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def add_eval_parser(sub) -> None:
    from .cli import add_model_options

    p = sub.add_parser(
        "eval",
        help="encode and decode a folder of audio and report STOI, PESQ, SI-SDR, log-mel "
        "distance and frame rates",
        description="Quality of the codec on audio files or folders (recursive), at one or "
        "more settings side by side: STOI, extended STOI, wide-band PESQ, SI-SDR and a "
        "log-mel distance against the input resampled to 16 kHz, the average frame rate and "
        "tokens per second; written as eval.md, eval.json and eval.png. Needs the 'eval' "
        "extra.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="audio files or folders")
    p.add_argument("-o", "--out", type=Path, default=Path("eval"), help="output folder")
    p.add_argument(
        "--threshold", type=float, nargs="+", metavar="T", help="merging thresholds (0.91)"
    )
    p.add_argument(
        "--target-frame-rate",
        type=float,
        nargs="+",
        metavar="HZ",
        help="target average frame rates (per file, the threshold giving the largest rate "
        "not above HZ)",
    )
    p.add_argument("--num-quantizers", type=int, help="1 semantic + N-1 acoustic (default: all)")
    add_model_options(p)
    p.set_defaults(func=cmd_eval)
