#!/usr/bin/env bash
# The GPU check of the fused optimizer steps, in one run (expected 2-3 minutes on an H200,
# Triton's compilation included):
#   1. tests/optim/fused on CUDA: float32 and bfloat16 parity of the fused Apollo, AdaBelief
#      and AdaHessian kernels with the float64 rules (the CPU's interpreter grid, plus a
#      4.4M-element tensor), no host-device synchronisation inside step() (the first step
#      too), CUDA-graph capture and replay, the training loops' default (fused on CUDA);
#   2. python -m benchmarks.optim_step --device cuda (CUDA events, 7 rounds x 10 steps).
# Usage: bash benchmarks/gpu_optim_check.sh [LOG_DIR]   (default: $OUT if set, else gpu-check)
# Needs only torch, triton and pytest (no lmdb). Exit status: non-zero if either part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-gpu-check}}
mkdir -p "$logs"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=$(command -v python3 || command -v python)

"$py" - <<'PY' 2>&1 | tee "$logs/versions.txt"
import platform, torch, triton
print(f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
      f"Python {platform.python_version()}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'}")
PY

start=$SECONDS
timeout 240 "$py" -m pytest -q -p no:cacheprovider -o addopts="-ra" --durations=10 \
    tests/optim/fused 2>&1 | tee "$logs/tests.txt"
tests=${PIPESTATUS[0]}
echo "tests: exit $tests after $((SECONDS - start)) s"

start=$SECONDS
timeout 200 "$py" -m benchmarks.optim_step --device cuda --rounds 7 --steps 10 2>&1 \
    | tee "$logs/benchmark.txt"
bench=${PIPESTATUS[0]}
echo "benchmark: exit $bench after $((SECONDS - start)) s"
exit $((tests != 0 || bench != 0))
