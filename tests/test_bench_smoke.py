"""The benchmark suite in CI time: `pytest bench --benchmark-only --bench-size=tiny` runs in a
subprocess (as a user runs it; no timed assertions), its JSON carries the documented
extra_info, the report command turns it into a table and a plot, and the official-algorithm
baselines of bench/baselines.py compute what the reference computes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flexicodec_fast import bench_report
from flexicodec_fast.kernels import interleave as kinterleave
from flexicodec_fast.kernels import unmerge as kunmerge
from flexicodec_fast.reference import merging
from flexicodec_fast.reference.rvq import ResidualVectorQuantize
from flexicodec_fast.reference.snake import snake

REPO = Path(__file__).resolve().parents[1]
COMMON_KEYS = {
    "op",
    "provider",
    "dtype",
    "device",
    "device_name",
    "threads",
    "torch",
    "triton",
    "flexicodec_fast",
    "audio_seconds",
    "B",
    "T",
    "G",
    "D",
    "median_s",
    "throughput_audio_s_per_s",
}
KERNEL_OPS = {
    "merge",
    "interleave",
    "unmerge",
    "snake",
    "fsq",
    "rvq_encode",
    "rvq_decode",
    "attention",
}
WITH_OFFICIAL = {"merge", "interleave", "unmerge", "snake", "rvq_encode", "rvq_decode"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


baselines = _load("bench_baselines", REPO / "bench" / "baselines.py")


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # The benchmarks pick their device themselves; the tests' Triton interpreter must not leak.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "--benchmark-only",
            "--bench-size=tiny",
            f"--benchmark-json={out}",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return out


def test_tiny_suite_records_workload_and_ratios(bench_json):
    data = json.loads(bench_json.read_text())
    benchmarks = data["benchmarks"]
    assert benchmarks
    for b in benchmarks:
        info = b["extra_info"]
        assert COMMON_KEYS <= info.keys(), (b["name"], COMMON_KEYS - info.keys())
        if info["provider"] != "reference" and info["op"] not in ("fsq", "attention"):
            assert "speedup_vs_reference" in info, b["name"]
    ops = {b["extra_info"]["op"] for b in benchmarks}
    assert KERNEL_OPS | {"encode", "decode", "roundtrip"} <= ops
    engine_providers = {
        b["extra_info"]["provider"] for b in benchmarks if b["name"].startswith("test_engine")
    }
    assert engine_providers == {"reference", "loop", "engine"}, engine_providers
    providers = {(b["extra_info"]["op"], b["extra_info"]["provider"]) for b in benchmarks}
    for op in WITH_OFFICIAL:
        assert {(op, "reference"), (op, "official"), (op, "torch")} <= providers
    for b in benchmarks:
        info = b["extra_info"]
        if info["op"] in ("encode", "decode", "roundtrip"):
            assert "peak_rss_bytes" in info and "frame_rate_hz" in info
        if info["op"] == "encode" and info["provider"] in ("torch", "loop", "engine"):
            # The per-file loop and the engine (bench/test_bench_engine.py) too.
            assert info["codes_identical_to_reference"] is True, b["name"]
        if info["op"] == "decode" and info["provider"] == "torch-bf16":
            assert {"bf16_audio_vs_fp32_rel_l2", "bf16_audio_vs_fp32_snr_db"} <= info.keys()
        if info["op"] == "encode" and info["provider"] == "torch-bf16":
            assert "bf16_semantic_frame_agreement" in info
        if info["op"] in ("merge", "unmerge", "snake"):
            assert info["gbps"] > 0
        if info["op"] in ("rvq_encode", "attention"):
            assert info["gflops"] > 0
    assert "flexicodec_bench" in data["machine_info"]


def test_report_writes_table_and_plot(bench_json, tmp_path, capsys):
    assert bench_report.main([str(bench_json), "--out", str(tmp_path), "--note", "shared"]) == 0
    table = (tmp_path / "bench.md").read_text()
    assert "## End to end" in table and "## Kernels" in table
    assert "> shared" in table
    for word in ("reference", "official", "torch-bf16", "codes = reference", "x official"):
        assert word in table
    printed = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot skipped" in printed
    else:
        assert (tmp_path / "bench.png").stat().st_size > 10_000
        assert "bench.png" in table


def test_report_without_matplotlib(bench_json, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert bench_report.main([str(bench_json), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.md").exists()
    assert not (tmp_path / "bench.png").exists()
    assert "plot skipped: matplotlib is not installed" in capsys.readouterr().out


def test_report_rejects_other_json(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    assert bench_report.main([str(path)]) == 2
    assert "not pytest-benchmark --benchmark-json output" in capsys.readouterr().err


def test_released_config_matches_manifest(fixture_dir):
    manifest = fixture_dir.parent / "official_full_state_dict_manifest.json"
    if not manifest.exists():
        pytest.skip(f"{manifest} not found")
    conftest = _load("bench_conftest", REPO / "bench" / "conftest.py")
    assert conftest.RELEASED_CONFIG == json.loads(manifest.read_text())["config"]


# ----------------------------------------------------------------------------- baselines


def _planted(batch=3, frames=40, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    boundary = torch.rand(batch, frames - 1, generator=gen) < 0.4
    run = torch.cat([torch.zeros(batch, 1, dtype=torch.long), boundary.long().cumsum(1)], 1)
    h = torch.randn(batch, frames, dim, generator=gen).gather(
        1, run.unsqueeze(-1).expand(-1, -1, dim)
    )
    h += 0.05 * torch.randn(batch, frames, dim, generator=gen)
    return h.transpose(1, 2).contiguous(), torch.randn(batch, dim, frames, generator=gen)


def test_official_merge_matches_reference():
    sem, ac = _planted()
    lengths, num_segments, sem_means, ac_means = baselines.official_merge(sem, ac, 0.5, 4)
    seg = merging.segment(sem.transpose(1, 2), 0.5, 4)
    assert torch.equal(lengths, seg.token_lengths)
    assert torch.equal(num_segments, seg.num_groups)
    for means, x in ((sem_means, sem), (ac_means, ac)):
        expected = merging.group_means(x.transpose(1, 2), seg.group_ids, seg.max_groups)
        torch.testing.assert_close(means.transpose(1, 2), expected)


def test_official_interleave_and_retrieve_match_the_kernels():
    sem, ac = _planted()
    seg = merging.segment(sem.transpose(1, 2), 0.5, 4)
    groups = seg.max_groups
    queries = torch.randn(ac.shape[0], groups, ac.shape[1])
    sequence, order = baselines.official_interleave(
        ac, queries.transpose(1, 2), seg.token_lengths, seg.num_groups
    )
    expected = kinterleave.interleave_torch(
        ac.transpose(1, 2), queries, None, seg.group_ids, seg.num_groups
    )
    # Past an item's frames and queries the official sequence holds the padded queries in
    # an unspecified order (spec §5 step 3), the fast one zeros: compare the valid part.
    for b, n in enumerate((ac.shape[2] + seg.num_groups).tolist()):
        assert torch.equal(sequence[b, :, :n].T, expected[b, :n])
    tokens = baselines.official_retrieve(sequence, order, ac.shape[2], seg.num_groups)
    _, expected_tokens = kinterleave.deinterleave_torch(
        expected, seg.group_ids, seg.num_groups, with_frames=False
    )
    assert torch.equal(tokens.transpose(1, 2), expected_tokens)


def test_official_unmerge_matches_the_kernel():
    sem, _ = _planted()
    seg = merging.segment(sem.transpose(1, 2), 0.5, 4)
    gen = torch.Generator().manual_seed(1)
    tokens = [torch.randn(3, seg.max_groups, 16, generator=gen) for _ in range(2)]
    out = baselines.official_unmerge(
        tokens[0].transpose(1, 2), tokens[1].transpose(1, 2), seg.token_lengths
    )
    expected = kunmerge.unmerge(tokens[0], tokens[1], seg.token_lengths, sem.shape[2])
    assert torch.equal(out.transpose(1, 2), expected)


def test_official_snake_is_the_reference_expression():
    x, alpha = torch.randn(2, 8, 50), 0.5 + torch.rand(1, 8, 1)
    assert torch.equal(baselines.official_snake(x, alpha), snake(x, alpha))


def test_official_rvq_matches_reference():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantize(16, 3, 32, 4).eval()
    x = torch.randn(2, 16, 10)
    stages = baselines.rvq_stage_tensors(rvq)
    with torch.inference_mode():
        z_q, codes, *_ = rvq(x, 3)
        official_z_q, official_codes, commitment, codebook = baselines.official_rvq_encode(
            x, stages, 3
        )
        assert torch.equal(official_codes, codes)
        torch.testing.assert_close(official_z_q, z_q)
        assert commitment.shape == codebook.shape == (2,)
        torch.testing.assert_close(
            baselines.official_rvq_decode(codes, stages), rvq.from_codes(codes)
        )
