#!/usr/bin/env bash
# GPU check in one go: tests on the GPU backends, then the GPU benchmark rows plus a seed CPU row.
#
#   bash bench/gpu_check.sh OUT_DIR
#
# Expects a CUDA machine that already has CuPy, PyTorch, JAX, NumPy and pytest; array-api-compat and
# tqdm come from the wheels committed in bench/wheels/ (pure-Python, so any CPython 3 works). The package need not be
# installed: the repo root goes on PYTHONPATH. Without a GPU it says so, skips the GPU parts and
# runs the CPU rows quickly (--quick at batch 64) instead, exiting 0. Everything (logs, JSON,
# Markdown, PNG, the per-call probe) lands in OUT_DIR. Budget: under 8 minutes in all.
# The device tool brings back at most 8 files from OUT_DIR, and on a GPU this writes exactly 8:
# gpu_check.log environment.txt pytest-gpu.log bench.log gpu.json gpu.md gpu.png gpu-probe.json.
set -euo pipefail

OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # before the cd below: a relative OUT_DIR is the caller's, not the repo's
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}  # the whole script, under 8 minutes
# seconds left for a step: at most $1, and never past the budget less $2 held back for later steps
cap() { local left=$(( BUDGET - ($(date +%s) - START) - ${2:-0} )); (( left < $1 )) && echo $(( left > 10 ? left : 10 )) || echo "$1"; }
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so JAX's peak memory is its own use, not 75% of the GPU
status=0

log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

# 1. dependencies from the wheel folder
if compgen -G "bench/wheels/*.whl" > /dev/null; then
  timeout "$(cap 60)" "$PY" -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site bench/wheels/*.whl \
    >> "$OUT/gpu_check.log" 2>&1 || log "warning: installing bench/wheels/*.whl failed (see above)"
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  log "no bench/wheels/: using the array-api-compat/tqdm already installed"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

{
  echo "python: $("$PY" --version 2>&1) ($PY)"
  timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  timeout 45 "$PY" - <<'EOF' 2>&1 || true
import importlib
for m in ("numpy", "array_api_compat", "tqdm", "cupy", "torch", "jax", "jaxlib", "pytest", "matplotlib", "threadpoolctl"):
    try:
        print(f"{m} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as exc:
        print(f"{m} missing ({type(exc).__name__}: {exc})")
EOF
} > "$OUT/environment.txt"

# Is there a GPU any of the libraries can use?
gpus=$(timeout "$(cap 90)" "$PY" - <<'EOF' 2>/dev/null || true
found = []
try:
    import torch
    if torch.cuda.is_available():
        found.append("torch")
except Exception:
    pass
try:
    import cupy
    if cupy.cuda.runtime.getDeviceCount() > 0:
        cupy.zeros(1).sum().item()
        found.append("cupy")
except Exception:
    pass
try:
    import jax
    if any(d.platform == "gpu" for d in jax.devices()):
        found.append("jax")
except Exception:
    pass
print(",".join(found))
EOF
)
gpus=$(echo "$gpus" | tail -n 1)

if [[ -z "$gpus" ]]; then
  log "no GPU: no CUDA device usable from torch, cupy or jax; skipping the GPU tests and GPU rows"
  log "running the CPU rows quickly instead (--quick, batch 64)"
  timeout "$(cap 240)" "$PY" -m bench --quick --batch-sizes 64 --out "$OUT" --tag cpu-check > "$OUT/bench.log" 2>&1 \
    || { status=$?; log "CPU benchmark failed (exit $status), see $OUT/bench.log"; }
  log "done (exit $status); results in $OUT"
  exit $status
fi
log "GPU usable from: $gpus"

# 2. the backend-parametrised tests on the GPU backends (-k keeps only those ids; the CPU-only
#    tests already run in CI)
log "pytest on cupy, torch-cuda, jax"
XPMLP_TEST_BACKENDS=cupy,torch-cuda,jax timeout "$(cap 180 200)" "$PY" -m pytest tests -v -rs -p no:cacheprovider \
  -k "cupy or torch-cuda or jax" \
  > "$OUT/pytest-gpu.log" 2>&1 || { rc=$?; status=1; log "pytest failed (exit $rc), see $OUT/pytest-gpu.log"; }
# the GPU target "no host synchronisation inside an epoch", test by test
grep -E "never_reads_the_device|no_read_guards_can_fail" "$OUT/pytest-gpu.log" | grep -E "PASSED|FAILED|SKIPPED|ERROR" \
  | tee -a "$OUT/gpu_check.log" || true
tail -n 3 "$OUT/pytest-gpu.log" | tee -a "$OUT/gpu_check.log"

# 3. the GPU benchmark rows + the seed on the CPU at batch 64
log "benchmark: GPU rows at batch 8,32,64 (full MNIST), seed CPU baseline at 64"
# the bench writes its JSON and Markdown after every timed round, so a timeout still leaves results
timeout "$(cap 330 30)" "$PY" -m bench --gpu --batch-sizes 8,32,64 --seed-batch-sizes 64 --out "$OUT" --tag gpu \
  > "$OUT/bench.log" 2>&1 || { rc=$?; status=1; log "benchmark failed (exit $rc), see $OUT/bench.log"; }
[[ -f "$OUT/gpu.md" ]] && grep -A 30 '^| impl' "$OUT/gpu.md" | tee -a "$OUT/gpu_check.log" || true

# 4. last, so it never squeezes the above: per-call costs of CuPy and PyTorch, and whether CuPy can
#    capture the step's kernels in a CUDA graph (what to try if xpmlp-cupy loses at batch 64)
log "probe: per-call cost in cupy and torch, cupy graph capture"
timeout "$(cap 40)" "$PY" -m bench.gpu_probe "$OUT" 2>&1 | tee -a "$OUT/gpu_check.log" \
  || log "probe failed or timed out (not counted against the check)"
log "done (exit $status); results in $OUT"
exit $status
