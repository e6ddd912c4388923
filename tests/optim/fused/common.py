"""Shared by the fused kernels' tests: where they run, the device and the tolerances.

Tolerances, relative to max(|θ|, 1) of the float64 reference after the run:

* float32, ``FP32_RTOL`` = 1e-5. The fused kernels compute in float32 and sum each tensor
  block by block (a different order than torch's reductions, and with fused multiply-adds),
  so they differ from the rule in the last bits of every step; Apollo's feedback
  (1/‖d‖₄⁴, max(|B|, σ)) amplifies that over a run. Measured over the whole option grid
  (6 steps): at most 1.4e-6 for the fused kernels and 5e-7 for the plain rule in float32;
  a wrong term or scalar gives 1e-3 or more.
* bfloat16: no worse than the plain rule evaluated in bfloat16 (every op rounded), with
  room for chance: ``err <= 2 * err(plain bf16) + 2**-8`` (one bfloat16 ulp at 1). The
  kernels compute in float32 and round once per stored value; measured at most 1.3x the
  plain rule's error, often less.
"""

from __future__ import annotations

import pytest
import torch

from apollo_optim._kernels.fused import interpreting, triton_unusable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Where the kernels run: on CUDA, or on CPU tensors under Triton's interpreter, which
# tests/optim/test_fused.py starts in a process of its own (TRITON_INTERPRET must be set
# before Triton is imported).
needs_fused = pytest.mark.skipif(
    triton_unusable() is not None or not (torch.cuda.is_available() or interpreting()),
    reason=triton_unusable()
    or "runs on CUDA, or under TRITON_INTERPRET=1 (tests/optim/test_fused.py starts it so)",
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
FP32_RTOL = 1e-5
BF16_ULP = 2.0**-8
SHAPES = [(), (3,), (3, 4), (2, 3, 4), (2, 3, 2, 2), (2, 1, 2, 2, 2)]  # 0-D to 5-D


def rel_err(params, refs) -> float:
    """max over tensors of max|p - r| / max(|r|, 1), in float64 on the CPU."""
    worst = 0.0
    for p, r in zip(params, refs, strict=True):
        p, r = p.detach().double().cpu(), r.detach().double().cpu()
        if r.numel() == 0:
            continue
        assert torch.isfinite(p).all(), "the fused step produced inf or nan"
        worst = max(worst, ((p - r).abs().max() / r.abs().max().clamp_min(1.0)).item())
    return worst


def assert_fp32_close(params, refs) -> None:
    err = rel_err(params, refs)
    assert err <= FP32_RTOL, f"fused float32 differs from the float64 rule by {err:.2e}"


def assert_bf16_close(params, plain, refs) -> None:
    err, err_plain = rel_err(params, refs), rel_err(plain, refs)
    assert err <= 2 * err_plain + BF16_ULP, (
        f"fused bfloat16 off the float64 rule by {err:.2e}; the rule in bfloat16: {err_plain:.2e}"
    )
