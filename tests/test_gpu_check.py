"""bench/gpu_check.sh cannot rot: its dry run (CPU, tiny model, tiny sizes) goes through every
part but the CUDA ones and writes the report a GPU session reads first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dry_run import dry_run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_a_complete_report(tmp_path):
    dry_run(REPO / "bench" / "gpu_check.sh", tmp_path, cwd=REPO, timeout=300)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gpu-check.log", "gpu-engine.json", "gpu-engine.md", "gpu-pytest.txt"]

    report = json.loads((tmp_path / "gpu-engine.json").read_text())
    assert report["complete"] is True
    env_info = report["environment"]
    assert env_info["dry_run"] is True
    for key in ("date", "device_name", "torch", "triton", "cuda"):
        assert key in env_info, key
    # The cuda tests are found (and, without CUDA, only collected).
    assert "1/" in report["pytest_cuda"] and "collected" in report["pytest_cuda"]

    corr = report["correctness"]
    assert corr["engine_equals_fast_encode"] is True
    assert corr["engine_equals_reference"] is True
    assert corr["fast_encode_equals_reference"] is True
    assert corr["decode_within_tolerance"] is True
    assert corr["oversize_clips"] >= 1
    assert all(c["engine_equals_reference"] for c in corr["per_clip"])

    entries = {(e["workload"], e["provider"], e["precision"]): e for e in report["sweep"]}
    workloads = {w for w, _, _ in entries}
    assert len(workloads) == 3  # B1, B2 and the mixed-length corpus
    for workload in workloads:
        for provider, precision in (
            ("reference", "fp32"),
            ("fast_encode", "fp32"),
            ("engine", "fp32"),
            ("engine", "tf32"),
            ("engine", "bf16"),
        ):
            e = entries[(workload, provider, precision)]
            assert "skipped" not in e
            assert e["x_real_time"] > 0
            if provider == "engine" and precision != "fp32":
                # On a CPU tf32 is fp32, so its codes are the fp32 engine's.
                agreement = e["codes_vs_engine_fp32"]
                assert 0 < agreement["frame_agreement"] <= 1
                if precision == "tf32":
                    assert agreement["frame_agreement"] == 1.0
    profile = report["profile"]
    assert profile["eager"]["activities_per_bucket"] > 0
    assert profile["eager"]["top"]
    assert profile["nvml"]["notice"] or profile["nvml"]["summary"]

    text = (tmp_path / "gpu-engine.md").read_text()
    assert "engine codes == reference: **True**" in text
    assert "Incomplete" not in text
