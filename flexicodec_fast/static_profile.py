"""Static profile of the Triton kernels: what each would ask of an sm_80 / sm_90 GPU.

Every kernel's production configurations (`flexicodec_fast.kernels.aot_specs`, contract in
`flexicodec_fast.kernels.aot`) are compiled ahead of time for each architecture, with no GPU;
`cuobjdump` and `ptxas -v` report registers, shared memory and spills, the SASS tells
whether loads are 128-bit and whether tensor-core MMA is used. `predicted_us` is a roofline
bound on an H100 SXM:

    predicted_us = max(bytes / 3.0e12, flops / peak) * 1e6

with `peak` the spec's own: 67e12 (fp32, CUDA cores), 494e12 (tf32 tensor cores) or 989e12
(fp16/bf16 dense tensor cores), named in the `peak` column. It is a floor from the bytes and
operations at the stated shape, not a measurement.
"""

from __future__ import annotations

from .kernels.aot import (
    HBM_BYTES_PER_S,
    PEAKS,
    compile_many,
    load_specs,
    spec_request,
)

COLUMNS = (
    "kernel",
    "arch",
    "registers",
    "shared_bytes",
    "spill_bytes",
    "ldg128",
    "mma",
    "bytes",
    "flops",
    "peak",
    "predicted_us",
    "shape",
)


def static_report(archs=(80, 90), modules=None) -> list[dict]:
    """One row per (kernel spec, arch) of the kernel modules named (all when None): the
    `COLUMNS` keys plus `module`, `function`, `local_bytes` and `stack_bytes`."""
    specs, _skipped = load_specs(modules)
    requests = [(module, spec, arch) for module, spec in specs for arch in archs]
    infos = compile_many([spec_request(spec, arch) for _, spec, arch in requests])
    rows = []
    for (module, spec, arch), info in zip(requests, infos, strict=True):
        rows.append(
            {
                "kernel": spec.name,
                "module": module,
                "function": info.kernel,
                "arch": arch,
                "registers": info.registers,
                "shared_bytes": info.shared_bytes,
                "spill_bytes": info.spill_bytes,
                "local_bytes": info.local_bytes,
                "stack_bytes": info.stack_bytes,
                "ldg128": info.ldg128,
                "mma": info.mma or "",
                "bytes": spec.bytes,
                "flops": spec.flops,
                "peak": spec.peak,
                "predicted_us": spec.predicted_us,
                "shape": spec.shape,
            }
        )
    return rows


def _cell(key: str, value) -> str:
    if key == "predicted_us":
        return f"{value:.1f}"
    if key in ("bytes", "flops"):
        return f"{value:.3g}"
    if key == "arch":
        return f"sm_{value}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of `static_report` rows, with the roofline assumptions."""
    cells = [[_cell(k, row[k]) for k in COLUMNS] for row in rows]
    widths = [max([len(k)] + [len(r[i]) for r in cells]) for i, k in enumerate(COLUMNS)]
    numeric = {"registers", "shared_bytes", "spill_bytes", "bytes", "flops", "predicted_us"}

    def line(values):
        return "  ".join(
            v.rjust(w) if k in numeric else v.ljust(w)
            for k, v, w in zip(COLUMNS, values, widths, strict=True)
        ).rstrip()

    peaks = ", ".join(f"{name} {value:.3g}" for name, value in PEAKS.items())
    return "\n".join(
        [
            line(COLUMNS),
            line(["-" * w for w in widths]),
            *(line(r) for r in cells),
            "",
            f"predicted_us = max(bytes / {HBM_BYTES_PER_S:.3g} B/s, flops / peak) * 1e6 on an "
            f"H100 SXM; peaks (op/s): {peaks}",
        ]
    )
