"""Peak memory and time of `fast_encode` + `fast_decode` on long single clips (issue #4).

    python scripts/measure_long_audio.py --minutes 1 2 4 8 [--threads 2] [--out FILE.md]
    python scripts/measure_long_audio.py --minutes 60 --attention-window 30
    python scripts/measure_long_audio.py --minutes 2 --attention-window 10 --compare

Each length runs in a fresh process (so each peak is its own): the full-size released
architecture with seeded random weights (time and memory do not depend on weight values;
`--builtin`: the trained built-in model instead),
a `profiling.synthetic_speech` clip, `target_frame_rate=8`, fp32, torch backend. The clip is
made by this process and handed over as a raw float32 file: making it takes float64 maths
several times its size, which is no part of the pipeline's peak. Reported:
peak RSS after building the model, peak RSS of the whole run, encode and decode wall times,
and how much the peak grew between the two longest clips. Exact attention over an hour
costs hours of CPU time here (the full-size SenseVoice and bottleneck transformer attend over
the whole clip; their memory is linear, their time quadratic).

`--attention-window S` runs the approximate long-audio mode (linear time), so an hour can be
measured directly; `--compare` first runs the exact mode on the same clip, then the
approximate one at the threshold the exact run chose (so peak RSS includes both runs), and
reports how much the approximate one differs: the share of 12.5 Hz frames whose semantic /
acoustic codes are identical, and the SNR of the decoded audio against the exact decode.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_gib() -> float:
    """This process image's peak RSS: VmHWM, which starts afresh at exec. (`ru_maxrss`
    does not: Linux carries it over from the parent across fork and exec, so a parent that
    once held the clip's float64 maths would set the child's number.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _frame_codes(enc: dict):
    """Per-12.5 Hz-frame codes of item 0: each token's codes repeated by its length."""
    import torch

    lengths = enc["token_lengths"][0]
    codes = [enc["semantic_codes"][0].long(), enc["acoustic_codes"][0]]
    return [torch.repeat_interleave(c, lengths, dim=-1) for c in codes]


def _run(model, audio, window, threshold=None):
    """Encode (at about 8 Hz, or at `threshold`) and decode; returns codes, audio, times."""
    import torch

    from flexicodec_fast import fast_decode, fast_encode

    with torch.inference_mode():
        start = time.perf_counter()
        enc = fast_encode(
            audio,
            model,
            num_quantizers=model.max_num_quantizers,
            merging_threshold=0.91 if threshold is None else threshold,
            target_frame_rate=8.0 if threshold is None else None,
            attention_window=window,
        )
        encoded = time.perf_counter()
        codes = (enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
        wav = fast_decode(model, *codes, attention_window=window)
    return enc, wav, encoded - start, time.perf_counter() - encoded


def _model(builtin: bool):
    import torch

    from flexicodec_fast import prepare_model
    from flexicodec_fast.reference.model import FlexiCodec
    from flexicodec_fast.train.config import load_train_config

    if builtin:
        return prepare_model(device="cpu")
    cfg = load_train_config("released")
    torch.manual_seed(0)
    return FlexiCodec(cfg.model, cfg.sensevoice).eval()


def child(clip: Path, threads: int, window, compare: bool, builtin: bool) -> dict:
    import torch

    from flexicodec_fast.profiling import SAMPLE_RATE

    torch.set_num_threads(threads)
    model = _model(builtin)
    model_peak = _peak_gib()
    samples = clip.stat().st_size // 4
    audio = torch.from_file(str(clip), size=samples, dtype=torch.float32)[None]
    seconds = samples / SAMPLE_RATE
    threshold = None
    if compare:
        # The approximate run merges at the exact run's threshold, so the comparison shows
        # what the window changes, not a re-chosen threshold.
        exact, exact_wav, _, _ = _run(model, audio, None)
        threshold = float(exact["thresholds"][0])
    enc, wav, encode_s, decode_s = _run(model, audio, window, threshold)
    frames = int(enc["token_lengths"].sum())
    row = {
        "model": "built-in" if builtin else "full-size, random weights",
        "minutes": seconds / 60,
        "attention_window_s": window,
        "frames": frames,
        "frame_rate_hz": 12.5 * int(enc["total_frames"][0]) / frames,
        "model_peak_gib": model_peak,
        "peak_gib": _peak_gib(),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }
    if compare:
        (sem, ac), (sem_x, ac_x) = _frame_codes(enc), _frame_codes(exact)
        noise = (wav - exact_wav).double().pow(2).sum()
        row.update(
            semantic_frames_equal=float((sem == sem_x).all(0).double().mean()),
            acoustic_frames_equal=float((ac == ac_x).all(0).double().mean()),
            token_lengths_equal=bool(torch.equal(enc["token_lengths"], exact["token_lengths"])),
            audio_snr_db=float(10 * torch.log10(exact_wav.double().pow(2).sum() / noise)),
        )
    return row


def _write_clip(path: Path, seconds: float) -> None:
    from flexicodec_fast.profiling import synthetic_speech

    synthetic_speech(seconds).numpy().tofile(path)


def _measure(clip: Path, args) -> dict:
    """One length in a fresh process; its result row."""
    command = [sys.executable, __file__, "--child", str(clip), "--threads", str(args.threads)]
    if args.attention_window is not None:
        command += ["--attention-window", str(args.attention_window)]
    command += ["--compare"] if args.compare else []
    command += ["--builtin"] if args.builtin else []
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attention-window", type=float, help="seconds (approximate mode)")
    parser.add_argument("--compare", action="store_true", help="also run exact; report diffs")
    parser.add_argument("--builtin", action="store_true", help="the built-in model instead")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        row = child(args.child, args.threads, args.attention_window, args.compare, args.builtin)
        print(json.dumps(row))
        return 0
    rows = []
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory() as folder:
            clip = Path(folder) / "clip.f32"
            _write_clip(clip, minutes * 60)
            rows.append(_measure(clip, args))
        print(rows[-1], flush=True)
    compare = "audio_snr_db" in rows[0]
    lines = [
        "| clip (min) | attention | frames | frame rate (Hz) | RSS after model (GiB) "
        "| peak RSS (GiB) | encode (s) | decode (s) |"
        + (
            " frames with equal sem / ac codes | token lengths equal | SNR vs exact (dB) |"
            if compare
            else ""
        ),
        "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|---|---:|" if compare else ""),
    ]
    for r in rows:
        window = r["attention_window_s"]
        line = (
            f"| {r['minutes']:g} | {'exact' if window is None else f'window {window:g} s'} | "
            f"{r['frames']} | {r['frame_rate_hz']:.2f} | {r['model_peak_gib']:.2f} | "
            f"{r['peak_gib']:.2f} | {r['encode_s']:.1f} | {r['decode_s']:.1f} |"
        )
        if compare:
            line += (
                f" {r['semantic_frames_equal']:.1%} / {r['acoustic_frames_equal']:.1%} | "
                f"{'yes' if r['token_lengths_equal'] else 'no'} | {r['audio_snr_db']:.1f} |"
            )
        lines.append(line)
    if len(rows) > 1:
        longest, before = sorted(rows, key=lambda r: r["minutes"])[-1:-3:-1]
        lines += [
            "",
            f"Peak RSS grew by {longest['peak_gib'] - before['peak_gib']:+.2f} GiB from the "
            f"{before['minutes']:g}-minute to the {longest['minutes']:g}-minute clip.",
        ]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
