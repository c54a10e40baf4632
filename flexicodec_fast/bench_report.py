"""Turn `pytest bench --benchmark-only --benchmark-json BENCH.json` output into a markdown
table and a plot.

    python -m flexicodec_fast.bench_report BENCH.json [--out DIR] [--note TEXT]

Writes `DIR/<name>.md` (end-to-end and kernel tables, with the machine that produced them)
and `DIR/<name>.png` (throughput against audio length, one line per provider, one panel per
operation); DIR defaults to the JSON's folder. The plot needs matplotlib (in the `bench`
extra); without it the table is still written and the command says the plot was skipped.

Throughput is audio seconds processed per wall second (higher is better). "x reference" and
"x official" are the reference's (official baseline's) median time over the provider's, from
the same session (bench/conftest.py records them; they are recomputed here from the medians
when missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

E2E_OPS = ("encode", "decode", "roundtrip")
PROVIDER_ORDER = (
    "reference",
    "official",
    "torch",
    "torch-bf16",
    "triton",
    "triton-bf16",
    "triton+graph",
)


class ReportError(Exception):
    """The input is not a pytest-benchmark JSON file of this suite."""


def load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: cannot read a benchmark JSON file: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(
            f"{path}: no 'benchmarks' list: not pytest-benchmark --benchmark-json output"
        )
    return data


def entries(data: dict) -> list[dict]:
    """One flat record per benchmark of this suite (those with an `op` and a `provider`)."""
    out = []
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        median = (b.get("stats") or {}).get("median")
        if "op" not in info or "provider" not in info or not median:
            continue
        out.append(
            {
                **info,
                "group": b.get("group") or "",
                "name": b.get("name"),
                "median": median,
                "min": b["stats"].get("min", median),
            }
        )
    by_group: dict[str, dict[str, dict]] = {}
    for e in out:
        by_group.setdefault(e["group"], {})[e["provider"]] = e
    for e in out:
        for base in ("reference", "official"):
            ref = by_group[e["group"]].get(base)
            if ref is not None:
                e.setdefault(f"speedup_vs_{base}", ref["median"] / e["median"])
                e.setdefault(f"speedup_vs_{base}_min", ref["min"] / e["min"])
    return out


def _order(provider: str) -> int:
    return PROVIDER_ORDER.index(provider) if provider in PROVIDER_ORDER else len(PROVIDER_ORDER)


def _num(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _ratio(e: dict, base: str) -> str:
    """`median ratio (min ratio)` against `base`."""
    median = e.get(f"speedup_vs_{base}")
    if median is None:
        return ""
    low = e.get(f"speedup_vs_{base}_min")
    return f"{median:.2f}x" + ("" if low is None else f" ({low:.2f}x)")


def _memory(e: dict) -> str:
    if "cuda_max_memory_allocated_bytes" in e:
        return f"{e['cuda_max_memory_allocated_bytes'] / 2**30:.2f} (CUDA)"
    if "peak_rss_bytes" in e:
        increase = e.get("peak_rss_increase_bytes")
        extra = "" if increase is None else f" (+{increase / 2**30:.2f})"
        return f"{e['peak_rss_bytes'] / 2**30:.2f}{extra}"
    return ""


def _checks(e: dict) -> str:
    """What the benchmark verified about its output."""
    notes = []
    if "codes_identical_to_reference" in e:
        notes.append("codes = reference" if e["codes_identical_to_reference"] else "CODES DIFFER")
    if "audio_max_abs_diff_vs_reference" in e:
        notes.append(f"audio max diff {_num(e['audio_max_abs_diff_vs_reference'], 2)}")
    if "bf16_semantic_frame_agreement" in e:
        agree = f"codes agree {100 * e['bf16_semantic_frame_agreement']:.1f}% sem"
        if "bf16_acoustic_frame_agreement" in e:
            agree += f" / {100 * e['bf16_acoustic_frame_agreement']:.1f}% ac"
        notes.append(agree)
    if "bf16_audio_vs_fp32_snr_db" in e:
        notes.append(f"audio SNR {e['bf16_audio_vs_fp32_snr_db']:.1f} dB vs fp32")
    return "; ".join(notes)


def _machine(data: dict, items: list[dict]) -> str:
    machine = data.get("machine_info") or {}
    bench = machine.get("flexicodec_bench") or (items[0] if items else {})
    cpu = (machine.get("cpu") or {}).get("brand_raw") or machine.get("processor") or "?"
    cores = (machine.get("cpu") or {}).get("count")
    device = bench.get("device_name") or cpu
    parts = [
        f"{device} ({bench.get('device', '?')})",
        f"host CPU {cpu}" + (f", {cores} logical CPUs" if cores else ""),
        f"{bench.get('threads', '?')} torch threads",
        f"torch {bench.get('torch', '?')}",
        f"triton {bench.get('triton') or 'not installed'}",
        f"flexicodec_fast {bench.get('flexicodec_fast', '?')}",
        f"size {bench.get('bench_size', '?')}",
    ]
    return ", ".join(parts)


def markdown(data: dict, source: str, note: str | None = None) -> str:
    items = entries(data)
    if not items:
        raise ReportError(
            f"{source}: no benchmarks of the flexicodec suite (none has extra_info op)"
        )
    lines = [
        f"# Benchmarks ({Path(source).name})",
        "",
        f"Machine: {_machine(data, items)}. Run {data.get('datetime', '?')}.",
        "",
        "Throughput = audio seconds processed per wall second (higher is better), from the "
        "median time. `x reference` / `x official` = that provider's median time / this "
        "row's, same session; in brackets the same ratio of minimum times (the least "
        "disturbed rounds, steadier on a shared machine).",
    ]
    if note:
        lines += ["", f"> {note}"]
    e2e = sorted(
        (e for e in items if e["op"] in E2E_OPS),
        key=lambda e: (
            E2E_OPS.index(e["op"]),
            e.get("audio_seconds", 0),
            e.get("B", 0),
            _order(e["provider"]),
        ),
    )
    if e2e:
        lines += [
            "",
            "## End to end",
            "",
            "| op | workload | provider | dtype | median (s) | audio s/s | x reference "
            "| peak RSS GiB (+increase) | frame rate (Hz) | checks |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for e in e2e:
            workload = f"B={e.get('B')} x {_num(e.get('clip_seconds'))} s"
            lines.append(
                f"| {e['op']} | {workload} | {e['provider']} | {e.get('dtype', '')} "
                f"| {_num(e['median'])} | {_num(e.get('throughput_audio_s_per_s'))} "
                f"| {_ratio(e, 'reference')} | {_memory(e)} "
                f"| {_num(e.get('frame_rate_hz'))} | {_checks(e)} |"
            )
    kernels = sorted(
        (e for e in items if e["op"] not in E2E_OPS),
        key=lambda e: (e["op"], e.get("T", 0), _order(e["provider"])),
    )
    if kernels:
        lines += [
            "",
            "## Kernels",
            "",
            "| op | B | T | G | D | provider | median (ms) | audio s/s | GB/s | GFLOP/s "
            "| x reference | x official |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for e in kernels:
            lines.append(
                f"| {e['op']} | {e.get('B', '')} | {e.get('T', '')} | {e.get('G', '')} "
                f"| {e.get('D', '')} | {e['provider']} | {_num(e['median'] * 1e3)} "
                f"| {_num(e.get('throughput_audio_s_per_s'))} | {_num(e.get('gbps'))} "
                f"| {_num(e.get('gflops'))} | {_ratio(e, 'reference')} "
                f"| {_ratio(e, 'official')} |"
            )
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> str | None:
    """Throughput vs the workload's audio seconds (B x clip length; B x T / 12.5 for kernels),
    a line per provider, a panel per op. Returns why it was skipped, or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'flexicodec-fast[bench]')"
    items = entries(data)
    ops = [op for op in E2E_OPS if any(e["op"] == op for e in items)]
    ops += sorted({e["op"] for e in items} - set(E2E_OPS))
    if not ops:
        return "no benchmarks to plot"
    columns = min(3, len(ops))
    rows = -(-len(ops) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, op in zip(axes.flat, ops, strict=False):
        series: dict[str, list[tuple[float, float]]] = {}
        for e in items:
            if e["op"] == op and e.get("throughput_audio_s_per_s"):
                series.setdefault(e["provider"], []).append(
                    (e.get("audio_seconds", 0.0), e["throughput_audio_s_per_s"])
                )
        for provider in sorted(series, key=_order):
            points = sorted(series[provider])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=provider)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op)
        ax.set_xlabel("audio seconds in the workload")
        ax.set_ylabel("audio s / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(ops) :]:
        ax.set_visible(False)
    fig.suptitle("FlexiCodec throughput per provider (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flexicodec_fast.bench_report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--out", type=Path, help="output folder (default: the JSON's folder)")
    parser.add_argument("--note", help="a caveat printed under the machine line")
    args = parser.parse_args(argv)
    try:
        data = load(args.json)
        table = markdown(data, str(args.json), args.note)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    md_path = out / f"{args.json.stem}.md"
    png_path = out / f"{args.json.stem}.png"
    skipped = plot(data, png_path)
    if skipped is None:
        table += f"\n![throughput per provider]({png_path.name})\n"
    md_path.write_text(table)
    print(table)
    print(f"table: {md_path}")
    print(f"plot: {png_path}" if skipped is None else f"plot skipped: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
