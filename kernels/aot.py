"""Ahead-of-time compilation of Triton kernels for NVIDIA targets, on a machine with no GPU.

`triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch,
32))` builds PTX and a cubin with Triton's own compiler and the `ptxas` in the Triton wheel;
the wheel's `cuobjdump` then reports what the hardware would be asked for: registers, shared
memory, local memory and stack per thread, and from the SASS whether global loads are 128-bit
(`LDG.E.128`) and whether tensor-core MMA instructions (`HMMA` on sm_80+, `HGMMA` on sm_90)
were emitted (design §5.2). Register spills go to the stack frame, not to `LOCAL`, so they
are read from `ptxas -v` (the wheel's `ptxas`, run on the PTX with Triton's own flags).

Compilation needs a real `JITFunction`. Under the interpreter (`TRITON_INTERPRET=1`, as in
the tests) `@triton.jit` returns an interpreted function instead, so the compilation is then
done in child Python processes with that variable removed, which imports the kernel's module
afresh; results are identical either way.

Contract: `kernels/aot_specs.py` holds `SPECS`, which maps each kernel module's name
(`kernels/<op>.py`) to a list of `AotSpec` (or of plain dicts with the same keys), one per
production configuration worth reporting:

    SPECS["snake"] = [
        AotSpec(
            name="snake_fwd fp32",               # row label in the static report
            kernel=snake._snake_fwd_kernel,      # the @triton.jit function
            signature={"x_ptr": "*fp32", "stride_xb": "i64", "n": "i32", ...},
            #   every runtime argument and its Triton type: "*fp32" "*fp16" "*bf16" "*i64"
            #   "*i32" pointers, "i32" "i64" "fp32" scalars
            constexprs={"BLOCK_N": 1024},        # every tl.constexpr parameter, plus runtime
            #   arguments whose production value is 1 (the JIT turns those into constants)
            aligned=("x_ptr", "stride_xb"),      # arguments the JIT would mark divisible by 16
            #   at the production shape (16-byte aligned pointers, integers % 16 == 0)
            num_warps=4, num_stages=3,           # launch options the launcher uses
            options={"enable_fp_fusion": False}, # other compile options the launcher passes
            shape="B=8, C=96, N=240000 fp32",    # the production shape, in words
            bytes=..., flops=...,                # per call at that shape: one read of the
            #   inputs plus one write of the outputs; arithmetic operations
            peak="fp32",                         # "fp32" (CUDA cores), "tf32" or "tensor16"
            #   (fp16/bf16 dense tensor cores): which H100 peak bounds the predicted time
            expect_ldg128=True, expect_mma=False,  # what tests/test_aot.py asserts
        ),
    ]
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEAKS = {"fp32": 67e12, "tf32": 494e12, "tensor16": 989e12}
"""H100 SXM dense peaks, operations per second: fp32 on CUDA cores (non-tensor), tf32 and
fp16/bf16 on tensor cores."""

HBM_BYTES_PER_S = 3.0e12
"""H100 SXM HBM3 bandwidth used for predictions (3.35 TB/s nominal, ~3.0 reachable)."""


@dataclass(frozen=True)
class AotSpec:
    """One production configuration of a kernel (see the module docstring)."""

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    shape: str
    bytes: int
    flops: int
    peak: str = "fp32"
    aligned: tuple[str, ...] = ()
    num_warps: int = 4
    num_stages: int = 3
    options: dict[str, Any] = field(default_factory=dict)
    expect_ldg128: bool = False
    expect_mma: bool = False

    def __post_init__(self):
        if self.peak not in PEAKS:
            raise ValueError(
                f"AotSpec {self.name!r}: peak must be one of {sorted(PEAKS)}, got {self.peak!r}"
            )

    @property
    def predicted_us(self) -> float:
        """Roofline time on an H100: the larger of the memory and the arithmetic bound."""
        return max(self.bytes / HBM_BYTES_PER_S, self.flops / PEAKS[self.peak]) * 1e6


@dataclass(frozen=True)
class CompiledInfo:
    """Resources of one compiled kernel: per thread, except `shared_bytes` (per program).

    registers, local_bytes, stack_bytes: `cuobjdump --dump-resource-usage` (REG, LOCAL,
    STACK); shared_bytes: its static SHARED plus Triton's dynamic shared memory;
    spill_bytes: register spill stores reported by `ptxas -v` (spills live in the stack
    frame, which is why LOCAL alone does not show them); ldg128, mma: from the SASS.
    """

    kernel: str
    arch: int
    registers: int
    shared_bytes: int
    spill_bytes: int
    local_bytes: int
    stack_bytes: int
    ldg128: bool
    mma: str | None
    """`"HGMMA"` or `"HMMA"` (the first found, in that order), or None."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def as_spec(spec: AotSpec | dict) -> AotSpec:
    """Accept a spec written as a plain dict with `AotSpec`'s field names."""
    return spec if isinstance(spec, AotSpec) else AotSpec(**spec)


def _tool(name: str) -> Path:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found at {path}: it ships in the triton wheel")
    return path


def _ptxas_report(ptx: str, arch: int, enable_fp_fusion: bool) -> str:
    """`ptxas -v` log of `ptx`, with the flags Triton 3.9 itself uses to build the cubin:
    the spill counts are only in this log (`cuobjdump` shows them as stack frame)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        fmad = [] if enable_fp_fusion else ["--fmad=false"]
        done = subprocess.run(
            [
                get_ptxas(arch).path,
                "-lineinfo",
                *fmad,
                "-v",
                "--regAllocOptLevel=2",
                f"--gpu-name={sm_arch_from_capability(arch)}",
                str(path),
                "-o",
                str(Path(tmp) / "kernel.cubin"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    return done.stdout + done.stderr


def _inspect(compiled, kernel: str, arch: int) -> CompiledInfo:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kernel}.sm_{arch}.cubin"
        path.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run(
            [str(_tool("cuobjdump")), "--dump-resource-usage", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        sass = subprocess.run(
            [str(_tool("cuobjdump")), "--dump-sass", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    ptxas_log = _ptxas_report(compiled.asm["ptx"], arch, compiled.metadata.enable_fp_fusion)

    def number(pattern: str, text: str, what: str) -> int:
        found = re.search(pattern, text)
        if found is None:
            raise RuntimeError(f"no {what} reported for {kernel} on sm_{arch}:\n{text}")
        return int(found.group(1))

    mma = next((op for op in ("HGMMA", "HMMA") if re.search(rf"\b{op}\.", sass)), None)
    return CompiledInfo(
        kernel=kernel,
        arch=arch,
        registers=number(r"\bREG:(\d+)", usage, "REG"),
        # cuobjdump counts static shared memory; Triton's tiles use dynamic shared memory,
        # which the launch requests (`metadata.shared`).
        shared_bytes=number(r"\bSHARED:(\d+)", usage, "SHARED") + compiled.metadata.shared,
        spill_bytes=number(r"(\d+) bytes spill stores", ptxas_log, "spill stores"),
        local_bytes=number(r"\bLOCAL:(\d+)", usage, "LOCAL"),
        stack_bytes=number(r"\bSTACK:(\d+)", usage, "STACK"),
        ldg128=re.search(r"\bLDG\.E\.128\b", sass) is not None,
        mma=mma,
    )


def _compile_in_process(
    fn, signature: dict, constexprs: dict, arch: int, aligned=(), options: dict | None = None
) -> CompiledInfo:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    full_signature = {n: ("constexpr" if n in constexprs else signature[n]) for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    source = ASTSource(fn=fn, signature=full_signature, constexprs=dict(constexprs), attrs=attrs)
    with warnings.catch_warnings():
        # Triton 3.9 warns once that its fp-fusion default will change; specs state theirs.
        warnings.simplefilter("ignore", UserWarning)
        compiled = triton.compile(
            source, target=GPUTarget("cuda", arch, 32), options=dict(options or {})
        )
    return _inspect(compiled, fn.__name__, arch)


def _check_arguments(fn, signature: dict, constexprs: dict, aligned) -> None:
    names = list(fn.arg_names)
    missing = [n for n in names if n not in signature and n not in constexprs]
    unknown = [n for n in [*signature, *constexprs, *aligned] if n not in names]
    both = [n for n in signature if n in constexprs]
    if missing or unknown or both:
        raise ValueError(
            f"{fn.__name__}: signature and constexprs must name every argument "
            f"exactly once; missing {missing}, unknown {unknown}, in both {both}"
        )


def _is_jit_function(fn) -> bool:
    from triton.runtime.jit import JITFunction

    return isinstance(fn, JITFunction)


def _function_address(fn) -> tuple[str, str]:
    """Module and name under which a child process finds the same kernel."""
    inner = getattr(fn, "fn", fn)
    return inner.__module__, inner.__name__


def _compile_in_children(requests: list[dict]) -> list[CompiledInfo]:
    """Compile in child processes without the interpreter, one per CPU core (at most 4)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = max(1, min(4, os.cpu_count() or 1, len(requests)))
    shares = [requests[i::jobs] for i in range(jobs)]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in shares
    ]
    results = []
    for child, share in zip(children, shares, strict=True):
        out, err = child.communicate(json.dumps(share))
        if child.returncode != 0:
            raise RuntimeError(
                f"ahead-of-time compilation failed in a child process:\n{err[-4000:]}"
            )
        # The last line is ours; anything a kernel module printed on import comes before it.
        results.append([CompiledInfo(**row) for row in json.loads(out.strip().splitlines()[-1])])
    # Undo the round-robin split so results line up with the requests.
    return [results[i % jobs][i // jobs] for i in range(len(requests))]


def _request(fn, signature, constexprs, arch, aligned=(), options=None) -> dict:
    module, name = _function_address(fn)
    return {
        "module": module,
        "name": name,
        "signature": dict(signature),
        "constexprs": dict(constexprs),
        "arch": int(arch),
        "aligned": list(aligned),
        "options": dict(options or {}),
    }


def _serve(requests: list[dict]) -> list[CompiledInfo]:
    out = []
    for r in requests:
        fn = getattr(importlib.import_module(r["module"]), r["name"])
        out.append(
            _compile_in_process(
                fn, r["signature"], r["constexprs"], r["arch"], r["aligned"], r["options"]
            )
        )
    return out


def compile_many(requests: list[dict]) -> list[CompiledInfo]:
    """Compile several `compile_kernel` requests (dicts of its arguments); in child
    processes when any kernel is an interpreted function (see the module docstring)."""
    if not requests:
        return []
    for r in requests:
        _check_arguments(r["fn"], r["signature"], r["constexprs"], r.get("aligned", ()))
    if all(_is_jit_function(r["fn"]) for r in requests):
        return [_compile_in_process(**r) for r in requests]
    return _compile_in_children(
        [
            _request(
                r["fn"],
                r["signature"],
                r["constexprs"],
                r["arch"],
                r.get("aligned", ()),
                r.get("options"),
            )
            for r in requests
        ]
    )


def compile_kernel(
    fn, signature: dict, constexprs: dict, arch: int, aligned=(), options: dict | None = None
) -> CompiledInfo:
    """Compile `fn` for `sm_{arch}` and read its resource usage and SASS features.

    signature: every runtime argument's Triton type (`"*fp16"`, `"i32"`, ...); constexprs:
    the values of every `tl.constexpr` parameter (and of arguments specialised as constants);
    aligned: argument names to mark `tt.divisibility = 16`; options: compile options
    (`num_warps`, `num_stages`, `enable_fp_fusion`, ...).
    """
    return compile_many(
        [
            dict(
                fn=fn,
                signature=signature,
                constexprs=constexprs,
                arch=arch,
                aligned=aligned,
                options=options,
            )
        ]
    )[0]


def spec_request(spec: AotSpec | dict, arch: int) -> dict:
    """The `compile_many` request that compiles `spec` for `sm_{arch}`."""
    spec = as_spec(spec)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, **spec.options}
    return dict(
        fn=spec.kernel,
        signature=spec.signature,
        constexprs=spec.constexprs,
        arch=arch,
        aligned=spec.aligned,
        options=options,
    )


def compile_spec(spec: AotSpec | dict, arch: int) -> CompiledInfo:
    """Compile one `AotSpec` for `sm_{arch}`."""
    return compile_many([spec_request(spec, arch)])[0]


def load_specs(modules=None) -> tuple[list[tuple[str, AotSpec]], list[str]]:
    """`(module, spec)` for every spec of the kernel modules named (all of `aot_specs.SPECS`
    when None), and the names skipped for having no specs."""
    # Imported here, not above: aot_specs imports this module for `AotSpec`.
    from .aot_specs import SPECS

    specs, skipped = [], []
    for module_name in SPECS if modules is None else modules:
        module_specs = SPECS.get(module_name)
        if not module_specs:
            skipped.append(module_name)
            continue
        specs.extend((module_name, as_spec(s)) for s in module_specs)
    return specs, skipped


if __name__ == "__main__":
    # Child-process entry used under the interpreter: JSON requests on stdin, results out.
    print(json.dumps([info.as_dict() for info in _serve(json.loads(sys.stdin.read()))]))
