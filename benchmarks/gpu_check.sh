#!/usr/bin/env bash
# The GPU check of `mer` (benchmarks/gpu_check.py): one table and one JSON in OUT_DIR.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR] [more gpu_check.py options]
#
# OUT_DIR defaults to $OUT (the device tool's folder), else a new temporary folder. On the GPU
# machine (CUDA PyTorch, transformers and h5py installed, nothing downloadable) the packages
# mer needs beyond those come from the wheels in benchmarks/gpu_wheels/ (benchmarks/gpu_wheels.txt
# says which, and how to download them), unless they are importable already. The run stops
# itself within its budget (420 s); `timeout` is only the safety net that keeps it under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=()
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=(--dry-run); shift; fi
out_dir="${OUT:-}"
if [[ $# -gt 0 && "$1" != --* ]]; then out_dir="$1"; shift; fi
out_dir="${out_dir:-$(mktemp -d -t mer-gpu-check-XXXXXX)}"
mkdir -p "$out_dir"

python="${PYTHON:-python3}"
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then python=.venv/bin/python; fi

needed="import av, soundfile, soxr"
if ! "$python" -c "$needed" 2>/dev/null; then
  wheels=(benchmarks/gpu_wheels/*.whl)
  if [[ ! -e "${wheels[0]}" ]]; then
    echo "gpu_check: $needed fails and benchmarks/gpu_wheels/ holds no wheels; download them with the" \
         "command in benchmarks/gpu_wheels.txt and carry that folder" >&2
    exit 2
  fi
  site=/tmp/mer-gpu-check-site
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
status=0
timeout --signal=TERM --kill-after=10 470 \
  "$python" benchmarks/gpu_check.py "${dry_run[@]}" --out "$out_dir" "$@" 2>&1 | tee "$out_dir/gpu_check.log" \
  || status=${PIPESTATUS[0]}
exit "$status"
