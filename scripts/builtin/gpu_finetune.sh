#!/usr/bin/env bash
# One call on a lent GPU (issue #19): the built-in codec fine-tuned with a new frozen
# recogniser on packed training audio (scripts/builtin/finetune_human.py), into $OUT:
#   codec.safetensors   the fine-tuned bundle without its semantic_model.* tensors (a file
#                       must stay under 16 MiB to come back; the recogniser supplies them:
#                       `finetune_human.py --recognizer R --assemble codec.safetensors
#                       config.yaml --out DIR` makes the bundle of both in DIR/bundle)
#   config.yaml         the bundle's config
#   train_log.csv       every logged step
#   finetune.log        everything printed
#
# Prepare here, once (docs/builtin_model.md, "On a lent GPU"):
#   echo /gpu_data/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
#   python scripts/builtin/pack_corpus.py --data SYNTH/train HUMAN/train --out gpu_data/audio --max-mb 40
#   cp -r RECOGNIZER_DIR gpu_data/recognizer
#   the soundfile, cffi and pycparser wheels into .whl (the device README's `pip download`)
# Then one device call: carry ["gpu_data", ".whl"], timeout_s 600, command
#   bash scripts/builtin/gpu_finetune.sh [STEPS]          (default 2500: about 5 min on an H100
#                                                          at 0.12 s a step, batch 32)
#   bash scripts/builtin/gpu_finetune.sh --dry-run DIR    CPU, 2 steps at batch 2: the same files
# CONFIG=scripts/builtin/phase3g_human.yaml (say) trains that recipe instead of phase 3's; the
# run starts from the bundle (finetune_human.py's --init default) either way.
set -uo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
if [[ $dry_run == 1 ]]; then
    out="${1:?--dry-run needs an output folder}"
    steps=2 batch=2 workers=0 device=cpu
else
    out="${OUT:?set OUT (the device machine does)}"
    steps="${1:-2500}" batch=32 workers=8 device=cuda
fi
mkdir -p "$out"
python="${PYTHON:-python3}"
log="$out/finetune.log"
: >"$log"
say() { echo "[gpu_finetune $(date -u +%H:%M:%S)] $*" | tee -a "$log"; }

if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >>"$log" 2>&1 || { say "FAILED: installing .whl"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    say "installed the carried wheels"
fi
source "$repo/scripts/device_import.sh"
for need in gpu_data/audio gpu_data/recognizer; do
    [[ -e $need ]] || { say "FAILED: no $need (prepare it here, see the header)"; exit 1; }
done

work="$(mktemp -d)"
say "finetune_human.py: ${CONFIG:-scripts/builtin/phase3_human.yaml}, $steps steps, batch $batch, $device"
PYTHONUNBUFFERED=1 "$python" scripts/builtin/finetune_human.py --recognizer gpu_data/recognizer \
    --data gpu_data/audio --out "$work" --device "$device" --max-steps "$steps" \
    --config "${CONFIG:-scripts/builtin/phase3_human.yaml}" \
    --batch-size "$batch" --workers "$workers" --quiet 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
[[ $rc == 0 ]] || { say "FAILED: finetune_human.py exit $rc"; exit "$rc"; }
"$python" - "$work/bundle" "$out" <<'PY' 2>&1 | tee -a "$log"
import shutil, sys
from safetensors.torch import load_file, save_file
bundle, out = sys.argv[1:]
state = load_file(f"{bundle}/model.safetensors")
save_file({k: v for k, v in state.items() if not k.startswith("semantic_model.")}, f"{out}/codec.safetensors")
shutil.copy(f"{bundle}/config.yaml", out)
PY
cp "$work/run/train_log.csv" "$out/"
say "done; files in $out:"
ls -l "$out" | tee -a "$log"
