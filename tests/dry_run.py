"""Running a lent-GPU script's `--dry-run` (CPU) in a test: what the device would run, so the
script cannot rot without a GPU."""

import os
import subprocess
from pathlib import Path


def dry_run(script: Path, out: Path, cwd: Path, timeout: int) -> None:
    """`bash SCRIPT --dry-run OUT` in `cwd` (without the device's `$OUT`); fails the test with
    the end of its output unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(
        ["bash", str(script), "--dry-run", str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
