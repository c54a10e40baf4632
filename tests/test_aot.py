"""Ahead-of-time compilation of every Triton kernel for sm_80 and sm_90 (design §5.2).

Every kernel's production configurations (`kernels/aot_specs.py`: block sizes, signatures)
are compiled with Triton's own compiler, no GPU needed, and checked: no register spills and
no local memory; 128-bit global loads where the spec expects them (contiguous inner
dimensions: snake, unmerge, ...); tensor-core MMA where it expects it (attention in
fp16/bf16/tf32: `HMMA` on sm_80, `HMMA` or `HGMMA` on sm_90). Compilation runs in child
processes because the tests run under the interpreter.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from flexicodec_fast.kernels import aot  # noqa: E402
from flexicodec_fast.static_profile import COLUMNS, format_table, static_report  # noqa: E402

ARCHS = (80, 90)
SPECS, SKIPPED = aot.load_specs()


@pytest.fixture(scope="session")
def report() -> dict[tuple[str, int], dict]:
    rows = static_report(archs=ARCHS)
    return {(row["kernel"], row["arch"]): row for row in rows}


def test_every_kernel_has_specs():
    names = [spec.name for _, spec in SPECS]
    assert len(names) == len(set(names)), "spec names label report rows: keep them unique"
    assert SKIPPED == []
    # Every `@triton.jit` function named `*_kernel` in kernels/<op>.py, under SPECS["<op>"].
    written = set()
    for path in Path(aot.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            jit = any(ast.unparse(d) == "triton.jit" for d in getattr(node, "decorator_list", []))
            if jit and node.name.endswith("_kernel"):
                written.add((path.stem, node.name))
    specified = set()
    for module, spec in SPECS:
        fn = getattr(spec.kernel, "fn", spec.kernel)  # the interpreter wraps the function
        assert fn.__module__.rpartition(".")[2] == module, spec.name
        specified.add((module, fn.__name__))
    assert written == specified


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", [s for _, s in SPECS], ids=[s.name for _, s in SPECS])
def test_compiles_without_spills(report, spec, arch):
    row = report[(spec.name, arch)]
    assert row["spill_bytes"] == 0, row
    assert row["local_bytes"] == 0, row
    assert 0 < row["registers"] <= 255
    assert row["shared_bytes"] <= (163 if arch == 80 else 227) * 1024
    if spec.expect_ldg128:
        assert row["ldg128"], f"{spec.name}: no LDG.E.128 in the sm_{arch} SASS"
    if spec.expect_mma:
        allowed = {"HMMA"} if arch == 80 else {"HMMA", "HGMMA"}
        assert row["mma"] in allowed, f"{spec.name}: no tensor-core MMA on sm_{arch}: {row}"


def test_expectations_of_this_suite():
    by_module = {}
    for module, spec in SPECS:
        by_module.setdefault(module, []).append(spec)
    assert all(s.expect_ldg128 for s in by_module["snake"] + by_module["unmerge"])
    half = [s for s in by_module["attention"] if "fp16" in s.name or "bf16" in s.name]
    assert half and all(s.expect_mma for s in half)
    for spec in by_module["attention"]:  # fp32 uses tensor cores in tf32 mode only
        if spec not in half:
            assert spec.expect_mma == ("tf32" in spec.name), spec.name


def test_report_rows_and_table(report):
    rows = list(report.values())
    assert len(rows) == len(SPECS) * len(ARCHS)
    for row in rows:
        assert set(COLUMNS) <= set(row)
        expected = max(row["bytes"] / 3.0e12, row["flops"] / aot.PEAKS[row["peak"]]) * 1e6
        assert row["predicted_us"] == pytest.approx(expected)
    table = format_table(rows)
    assert "predicted_us" in table and "sm_90" in table
    assert len(table.splitlines()) == len(rows) + 4


def test_missing_kernel_module_is_skipped():
    specs, skipped = aot.load_specs(("snake", "not_written_yet"))
    assert skipped == ["not_written_yet"]
    assert {module for module, _ in specs} == {"snake"}


def test_compile_kernel_api():
    from flexicodec_fast.kernels.snake import _snake_fwd_kernel

    info = aot.compile_kernel(
        _snake_fwd_kernel,
        signature={
            "x_ptr": "*fp16",
            "alpha_ptr": "*fp16",
            "y_ptr": "*fp16",
            "stride_xb": "i32",
            "stride_xc": "i32",
            "stride_yb": "i32",
            "stride_yc": "i32",
            "C": "i32",
            "N": "i32",
            "num_blocks": "i32",
        },
        constexprs={"stride_ac": 1, "BLOCK_N": 256},
        arch=80,
        options={"num_warps": 1},
    )
    # Without alignment hints the compiler cannot prove 16-byte alignment: no 128-bit loads.
    assert info.kernel == "_snake_fwd_kernel" and info.arch == 80
    assert info.spill_bytes == 0 and not info.ldg128
    with pytest.raises(ValueError, match="must name every argument exactly once; missing"):
        aot.compile_kernel(_snake_fwd_kernel, {"x_ptr": "*fp32"}, {"BLOCK_N": 256}, 80)


def test_in_process_compilation_without_interpreter():
    """The CLI's path: no TRITON_INTERPRET, kernels are JITFunctions, compiled in-process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json; from flexicodec_fast.static_profile import static_report; "
        "print(json.dumps(static_report(archs=(90,), modules=('unmerge',))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [row["kernel"] for row in rows] == [s.name for m, s in SPECS if m == "unmerge"]
    assert all(row["ldg128"] and row["spill_bytes"] == 0 for row in rows)
