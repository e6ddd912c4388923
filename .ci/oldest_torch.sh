#!/usr/bin/env bash
# CI, second step: the optimizer library's tests (tests/optim) with the oldest torch that
# setup.py declares, in a venv of its own outside the checkout.
#
# torch's Linux wheels on PyPI are CUDA builds: `import torch` loads the CUDA libraries
# even on a CPU, so they must be installed, but only those it loads at import (not nvrtc
# and cusolver, which it opens on demand), without pip's resolver pulling the rest:
# 2.5 GB of wheels instead of 2.8. Triton 3.0.0 is what torch 2.4.1 installs: it is too old
# for the fused kernels, which is tested here too (fused=None falls back, fused=True is one
# clear error). numpy < 2: the setup this was proven with. The library runs from the checkout
# (pytest's pythonpath), as in the main step.
#   bash .ci/oldest_torch.sh            # from the repository root or anywhere
set -euo pipefail
cd "$(dirname "$0")/.."

oldest_torch=(
  torch==2.4.1
  nvidia-cuda-runtime-cu12==12.1.105
  nvidia-cuda-cupti-cu12==12.1.105
  nvidia-cudnn-cu12==9.1.0.70
  nvidia-cublas-cu12==12.1.3.1
  nvidia-cufft-cu12==11.0.2.54
  nvidia-curand-cu12==10.3.2.106
  nvidia-cusparse-cu12==12.1.0.106
  nvidia-nvjitlink-cu12==12.9.86
  nvidia-nccl-cu12==2.20.5
  nvidia-nvtx-cu12==12.1.105
  triton==3.0.0
)
grep -q 'install_requires=\["torch>=2.4"\]' setup.py || {
  echo "error: setup.py no longer declares torch>=2.4; update ${oldest_torch[0]} in $0" >&2
  exit 1
}

venv="$(mktemp -d)/oldest-torch"
trap 'rm -rf "$(dirname "$venv")"' EXIT
start=$SECONDS
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --no-cache-dir --no-compile \
  filelock "typing-extensions>=4.8" sympy networkx jinja2 fsspec "numpy<2" pytest
# last, so that pip's check of the environment (skipped with --no-deps) does not report the
# CUDA libraries left out on purpose
"$venv/bin/pip" install --quiet --no-cache-dir --no-compile --no-deps "${oldest_torch[@]}"
echo "oldest torch: installed in $((SECONDS - start)) s"
"$venv/bin/python" -c "import torch, apollo_optim; print('torch', torch.__version__, apollo_optim.names())"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/optim
