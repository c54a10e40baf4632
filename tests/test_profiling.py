"""`flexicodec-fast profile` on the CPU: the per-part table, the Chrome trace, the bandwidth
table, the NVML sampler without NVML (and with a stand-in NVML), and the CLI wiring."""

from __future__ import annotations

import argparse
import json
import sys
import types
from enum import Enum

import pytest
import torch

from flexicodec_fast import profiling
from flexicodec_fast.conv_stack import FastEncoder
from flexicodec_fast.fast import FastCodec
from flexicodec_fast.tiny import random_tiny_model


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    return profiling.run_profile(random_tiny_model(seed=0), seconds=2.0, out_dir=out, device="cpu")


def test_every_model_part_has_time_and_a_row(cpu_profile):
    parts = {row["part"]: row for row in cpu_profile.parts}
    assert set(profiling.PARTS) | {profiling.OTHER} == set(parts)
    for part in profiling.PARTS:
        assert parts[part]["cpu_ms"] > 0, part
        assert part in cpu_profile.table
    assert sum(row["cpu_pct"] for row in cpu_profile.parts) == pytest.approx(100.0)
    assert {row["part"] for row in cpu_profile.ops} >= set(profiling.PARTS)


def test_fused_ops_land_in_their_parts(cpu_profile):
    where = {row["op"]: row["part"] for row in cpu_profile.ops if "::" in row["op"]}
    assert where["flexicodec_fast::merge_segment"] == "merge"
    assert where["flexicodec_fast::rvq_encode"] == "RVQ"
    assert where["flexicodec_fast::fsq"] == "FSQ"
    assert where["flexicodec_fast::unmerge"] == "unmerge"
    assert where["flexicodec_fast::interleave_queries"] == "aggregators"


def test_trace_and_bandwidth(cpu_profile):
    trace = json.loads(open(cpu_profile.trace_path).read())
    assert trace["traceEvents"]
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"encode", "decode"} <= names
    ops = {row["op"]: row for row in cpu_profile.bandwidth}
    # The DAC stacks run Snake in place and into reused buffers.
    assert {"flexicodec_fast::snake_", "flexicodec_fast::snake_into"} <= set(ops)
    assert "flexicodec_fast::unmerge" in ops
    assert all(row["gbps"] > 0 and row["peak_gbps"] is None for row in ops.values())
    assert cpu_profile.nvml is None


def test_part_index_resolves_live_code():
    index = profiling.PartIndex()
    code = FastEncoder.__call__.__code__
    assert index.part_of_frame(
        f"flexicodec_fast/conv_stack.py({code.co_firstlineno}): __call__"
    ) == ("DAC encoder")
    line = FastCodec.aggregate.__code__.co_firstlineno
    assert index.part_of_frame(f"flexicodec_fast/fast.py({line}): aggregate") == "aggregators"
    assert index.part_of_frame(f"elsewhere/fast.py({line}): aggregate") is None
    assert index.part_of_frame("aten::mm") is None


def test_nvml_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with profiling.NvmlSampler() as sampler:
        pass
    assert "nvidia-ml-py is not installed" in sampler.notice
    assert "\n" not in sampler.notice
    assert sampler.summary() is None


class _NVMLError(Exception):
    pass


def _fake_pynvml(init_error: str | None = None):
    nv = types.SimpleNamespace(NVML_CLOCK_MEM=1, NVML_CLOCK_SM=0)

    def init():
        if init_error:
            raise _NVMLError(init_error)

    def no_power(handle):
        raise _NVMLError("Not Supported")

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetHandleByPciBusId = lambda bus: "gpu"
    nv.nvmlDeviceGetHandleByIndex = lambda i: "gpu"
    nv.nvmlDeviceGetMaxClockInfo = lambda h, kind: 2619
    nv.nvmlDeviceGetMemoryBusWidth = lambda h: 5120
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 * 2**30)
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87)
    nv.nvmlDeviceGetPowerUsage = no_power
    nv.nvmlDeviceGetClockInfo = lambda h, kind: 1980
    return nv


def test_nvml_without_driver_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml("Driver Not Loaded"))
    with profiling.NvmlSampler() as sampler:
        pass
    assert sampler.notice == "NVML telemetry unavailable: Driver Not Loaded"
    assert sampler.summary() is None


def test_nvml_sampler_summarises_and_knows_the_peak(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    with profiling.NvmlSampler(interval=0.001) as sampler:
        pass
    assert sampler.notice is None
    summary = sampler.summary()
    assert summary["samples"] >= 1
    assert summary["max_memory_used_bytes"] == 3 * 2**30
    assert summary["mean_utilization_pct"] == 87
    assert summary["mean_power_w"] is None  # a metric the device does not report
    assert summary["mean_sm_clock_mhz"] == 1980
    assert summary["peak_bandwidth_gbps"] == pytest.approx(2619e6 * 2 * 5120 / 8 / 1e9)


class _Device(Enum):
    CPU = 0
    CUDA = 1


class _Event:
    """The FunctionEvent attributes `_analyse` reads."""

    def __init__(self, name, parent=None, cpu_us=0.0, device_us=0.0, shapes=(), **kw):
        self.name = name
        self.cpu_parent = parent
        self.self_cpu_time_total = cpu_us
        self.cpu_time_total = cpu_us
        self.self_device_time_total = device_us
        self.device_time_total = device_us
        self.input_shapes = list(shapes)
        self.input_dtypes = kw.get("dtypes", ["float"] * len(shapes))
        self.concrete_inputs = kw.get("concrete", [])
        self.device_type = kw.get("device_type", _Device.CPU)
        self.is_python_function = kw.get("python", False)


def test_device_bandwidth_against_peak():
    line = profiling.part_functions()["DAC decoder"][0].__code__.co_firstlineno
    name = profiling.part_functions()["DAC decoder"][0].__code__.co_name
    frame = _Event(f"flexicodec_fast/conv_stack.py({line}): {name}", python=True, cpu_us=5.0)
    snake = _Event(
        "flexicodec_fast::snake_",
        frame,
        cpu_us=20.0,
        device_us=100.0,
        shapes=[[4, 96, 1000], [1, 96, 1]],
    )
    kernel = _Event("snake_kernel", snake, device_us=100.0, device_type=_Device.CUDA)
    index = profiling.PartIndex()
    parts, ops, bandwidth = profiling._analyse([frame, snake, kernel], index, True, 3.35e12)
    decoder = next(p for p in parts if p["part"] == "DAC decoder")
    assert decoder["device_ms"] == pytest.approx(0.1) and decoder["device_pct"] == 100.0
    (row,) = bandwidth
    assert row["bytes"] == 2 * 4 * 96 * 1000 * 4
    assert row["gbps"] == pytest.approx(row["bytes"] / 100e-6 / 1e9)
    assert row["pct_of_peak"] == pytest.approx(100 * row["gbps"] / 3350)


def test_floor_bytes_of_unmerge_counts_both_streams_and_output():
    n = profiling._floor_bytes(
        "flexicodec_fast::unmerge",
        [[2, 5, 16], [2, 5, 16], [2, 5], [], []],
        ["float"],
        [None, None, None, 10, None],
    )
    assert n == (2 * 5 + 10) * 2 * 16 * 4 + 8 * 2 * 5


def _cli(argv):
    parser = argparse.ArgumentParser()
    profiling.add_profile_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_profile_prints_json(tmp_path, capsys, monkeypatch):
    import flexicodec_fast.loading as loading

    monkeypatch.setattr(loading, "BUILTIN_DIR", tmp_path / "no-builtin")
    assert _cli(["profile", "--seconds", "1.5", "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {p["part"] for p in report["parts"]} >= set(profiling.PARTS)
    assert (tmp_path / "trace.json").exists()
    assert any("RANDOMLY INITIALISED" in n for n in report["notices"])
    if not torch.cuda.is_available():
        assert report["device"] == "cpu"
        assert "No NVIDIA GPU or driver found: profiling the CPU." in report["notices"]


def test_cli_profile_static_uses_the_static_report(monkeypatch, capsys):
    from flexicodec_fast import static_profile

    rows = [{"kernel": "k", "arch": 90}]
    monkeypatch.setattr(static_profile, "static_report", lambda: rows)
    monkeypatch.setattr(static_profile, "format_table", lambda r: f"TABLE {len(r)}")
    assert _cli(["profile", "--static"]) == 0
    assert capsys.readouterr().out.strip() == "TABLE 1"
    assert _cli(["profile", "--static", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows


_IMPORTS_WHILE_PROFILING = """
import sys
import torch.profiler
from flexicodec_fast import profiling
from flexicodec_fast.tiny import random_tiny_model

imported = []

class Watched(torch.profiler.profile):
    def __enter__(self):
        self.modules = set(sys.modules)
        return super().__enter__()

    def __exit__(self, *exc):
        if self.record_shapes:
            imported.extend(sorted(set(sys.modules) - self.modules))
        return super().__exit__(*exc)

torch.profiler.profile = Watched
profiling.run_profile(random_tiny_model(seed=0), seconds=1.0, out_dir=sys.argv[1], device="cpu")
print(imported)
"""


def test_nothing_is_imported_inside_the_profiled_region(tmp_path):
    """A module imported while the stack-recording profiler runs leaves a dangling code
    object behind, which made the profile fail now and then with UnicodeDecodeError. A fresh
    interpreter, because the profiler's own modules are imported only once per process."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS_WHILE_PROFILING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
