#!/usr/bin/env bash
# The GPU checks of training throughput in one go, about 4 minutes on one H200:
#
#   bash benchmarks/gpu_train_check.sh            # figures and logs also in $OUT (or /tmp/...)
#
# 1. tests that need CUDA: no device sync per update in the training loop (the quickstart's
#    loader pipeline; CIFAR held on the GPU with bf16 and Apollo), and the GPU augmentation's
#    statistics against torchvision's;
# 2. ResNet-110, batch 128, bf16: the bare step against the real training loop, SGD and Apollo,
#    eager and with --compile reduce-overhead (CUDA graphs; compiling takes 1-2 minutes), and
#    the compiled model's logits and gradients against eager;
# 3. four copies side by side on the GPU (what --jobs-per-gpu 4 does): aggregate throughput.
#
# Each step gets what is left of BUDGET_S (default 240 s); a step that would not fit is skipped
# with a line saying so. pytest must be importable: if the machine lacks it, install it here
# with `pip install --target .gpu_deps pytest` and carry .gpu_deps (it is put on PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu_train_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[[ -d .gpu_deps ]] && export PYTHONPATH="$PWD/.gpu_deps:$PYTHONPATH"
PY="${PYTHON:-python}"
budget="${BUDGET_S:-240}"
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
step() { echo; echo "== [$((SECONDS - start)) s] $*"; }
# run NEED_S LOG CMD...: CMD with what is left of the budget, unless less than NEED_S is left
run() {
  local need="$1" log="$2"; shift 2
  if (($(left) < need)); then echo "skipped: $(left) s left, needs ~$need s"; return 0; fi
  timeout "$(left)" "$@" > "$out/$log" 2>&1
  local code=$?
  grep -v -e "^W[0-9]" -e "warnings.warn" -e "^  *warn" "$out/$log" | tail -n 25
  ((code == 124)) && echo "(cut at the budget: $out/$log)"
  grep -i "skipping cudagraphs" "$out/$log" | sort | uniq -c | head -n 3
  return 0
}

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))
for name in ("torchvision", "yaml", "triton", "pytest", "tensorboard"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: MISSING ({exc})")
EOF

step "1. tests on CUDA: device syncs per update; GPU augmentation statistics vs torchvision"
run 30 tests.log "$PY" -m pytest -q -p no:cacheprovider -rs \
  "tests/classification/test_run_dir.py::test_no_device_sync_per_update_on_cuda" \
  tests/classification/test_train_fast_paths.py tests/classification/test_device_data.py \
  -k "cuda"

common=(--config configs/cifar10.yaml --device cuda --amp bf16 --batch-size 128 --threads 4)
step "2. ResNet-110, batch 128, bf16: bare step vs training loop, eager and CUDA graphs"
run 60 single.log "$PY" -m benchmarks.train_step "${common[@]}" --row SGD,Apollo \
  --compile none,reduce-overhead --steps 30 --warmup 10 --rounds 2 --json "$out/single.json"

step "3. four copies side by side (--jobs-per-gpu 4), SGD, CUDA graphs (compile cache warm)"
run 60 procs4.log "$PY" -m benchmarks.train_step "${common[@]}" --row SGD \
  --compile reduce-overhead --procs 4 --steps 50 --warmup 10 --rounds 1 --json "$out/procs4.json"

step "done in $((SECONDS - start)) s; logs and JSON in $out"
