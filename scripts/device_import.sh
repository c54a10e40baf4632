# Sourced by the scripts a lent GPU machine runs (bench/gpu_check.sh,
# scripts/builtin/gpu_finetune.sh): make flexicodec_fast importable there. Needs $repo,
# $python and a `say` function. The package maps flexicodec_fast.reference and .kernels to
# top-level folders (pyproject's package-dir), so the working tree alone is not importable;
# the machine has no network (--no-index) and may lack soundfile (--no-deps).
importable() { (cd /tmp && "$python" -c "import flexicodec_fast.reference, flexicodec_fast.kernels") 2>/dev/null; }
if importable; then
    say "flexicodec_fast already importable"
elif timeout 45 "$python" -m pip install -q --no-deps --no-build-isolation --no-index -e "$repo" >>"$log" 2>&1 && importable; then
    say "installed flexicodec_fast editable (offline, --no-deps)"
else
    tree="$(mktemp -d)/site"
    mkdir -p "$tree/flexicodec_fast"
    for entry in "$repo"/flexicodec_fast/*; do ln -s "$entry" "$tree/flexicodec_fast/"; done
    ln -s "$repo/reference" "$tree/flexicodec_fast/reference"
    ln -s "$repo/kernels" "$tree/flexicodec_fast/kernels"
    export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}"
    importable || { say "FAILED: flexicodec_fast is not importable"; exit 1; }
    say "pip install failed; importing through a symlinked package tree ($tree)"
fi
