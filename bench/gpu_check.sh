#!/usr/bin/env bash
# The first command a session with a lent GPU runs (issue #21): the engine's correctness,
# throughput and profile on CUDA, in under 6 minutes, into $OUT (at most 5 files):
#   gpu-engine.md, gpu-engine.json   the report (bench/gpu_check.py; saved after every entry)
#   gpu-check.log                    everything printed
#   gpu-pytest.txt                   `pytest -m cuda` of the test files holding cuda tests
#                                    (the dry run collects them only)
#
#   bench/gpu_check.sh              CUDA; results in $OUT (or a new temp dir)
#   bench/gpu_check.sh --dry-run    CPU, tiny model and sizes (20-60 s): the same files, so
#                                   the script cannot rot (tests/test_gpu_check.py runs it)
#   bench/gpu_check.sh [--dry-run] DIR    results in DIR
#
# Budget of the real run (H100; each part stopped by `timeout`, worst case 5.75 min):
#   imports      <= 45 s   (pip install -e, offline, ~10 s; or a symlinked package tree)
#   pytest cuda  <= 60 s   (the tiny model; Triton compiles its kernels first)
#   check        <= 240 s  (bench/gpu_check.py: model ~15 s, correctness ~30 s, sweep
#                           entries started within 150 s of its start, each <= 15 s of
#                           timed rounds after one untimed call; profile ~15 s)
# The device machine has torch, triton, pytest, pytest-benchmark and nvidia-ml-py but not
# soundfile (a dependency of the package, not needed by anything run here: --no-deps), and
# no network (--no-index).
set -uo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
out="${1:-${OUT:-$(mktemp -d)}}"
mkdir -p "$out"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
log="$out/gpu-check.log"
: >"$log"
say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$log"; }

source "$repo/scripts/device_import.sh"

# tests/conftest.py turns the Triton interpreter on unless told otherwise.
[[ $dry_run == 0 ]] && export TRITON_INTERPRET=0
mapfile -t cuda_files < <(grep -l "mark.cuda" tests/test_*.py)
pytest_args=(-q -m cuda -p no:cacheprovider)
# The dry run only collects them: they skip without CUDA.
[[ $dry_run == 1 ]] && pytest_args+=(--collect-only)
say "pytest ${pytest_args[*]} ${cuda_files[*]}"
timeout 60 "$python" -m pytest "${pytest_args[@]}" "${cuda_files[@]}" >"$out/gpu-pytest.txt" 2>&1
rc=$?
summary="exit $rc: $(tail -n 1 "$out/gpu-pytest.txt")"
[[ $rc == 124 ]] && summary="stopped at its 60 s limit: $(tail -n 1 "$out/gpu-pytest.txt")"
say "pytest: $summary"

args=(--out "$out")
[[ $dry_run == 1 ]] && args+=(--dry-run)
args+=(--pytest-summary "$summary")
say "bench/gpu_check.py ${args[*]}"
PYTHONUNBUFFERED=1 timeout 240 "$python" bench/gpu_check.py "${args[@]}" 2>&1 | tee -a "$log"
rc=$?
say "done (exit $rc); files in $out:"
ls -l "$out" | tee -a "$log"
exit $rc
