"""The fused kernels' tests run on CUDA when there is one, else on CPU tensors under Triton's
interpreter: ``tests/optim/test_fused.py`` starts ``pytest tests/optim/fused`` with
``TRITON_INTERPRET=1`` (it must be set before Triton is imported, so in a process of its own).
Elsewhere (a plain CPU run, or no Triton) these files are not collected."""

from __future__ import annotations

import torch

from apollo_optim._fused import interpreting, triton_missing

if triton_missing() is not None or not (torch.cuda.is_available() or interpreting()):
    collect_ignore_glob = ["test_*.py"]
elif not torch.cuda.is_available():
    collect_ignore = ["test_fused_cuda.py"]
