"""The ``fused`` option on a machine without a GPU.

The kernels' own tests (``tests/optim/fused``) run here under Triton's CPU interpreter, in a
pytest process of their own: ``TRITON_INTERPRET`` must be set before Triton is imported, and
this process may have imported it already (``torch.compile`` does). On a CUDA machine those
tests run directly on the GPU instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import apollo_optim as optim
from apollo_optim._fused import triton_missing

ROOT = Path(__file__).resolve().parents[2]
OPTIMIZERS = [optim.Apollo, optim.AdaBelief, optim.AdaHessian]


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests/optim/fused runs on the GPU")
@pytest.mark.skipif(triton_missing() is not None, reason=f"{triton_missing()}")
def test_fused_kernels_under_the_triton_interpreter():  # ~40 s on 2 cores
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/optim/fused"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA fused=True runs")
@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_fused_true_on_the_cpu_is_a_clear_error(cls):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match=rf"{cls.__name__}\(fused=True\) cannot run: .*CPU"):
        cls([p], lr=0.1, fused=True)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_fused_must_be_none_true_or_false(cls):
    with pytest.raises(ValueError, match="fused="):
        cls([torch.nn.Parameter(torch.zeros(3))], lr=0.1, fused="yes")


def test_fused_excludes_the_other_paths():
    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="fused"):
        optim.Apollo(p, lr=0.1, fused=True, compiled=True)
    with pytest.raises(ValueError, match="fused"):
        optim.AdaBelief(p, lr=0.1, fused=True, foreach=True)


def test_optim_works_without_triton():
    code = (
        "import sys\n"
        "sys.modules['triton'] = None  # import triton raises ImportError\n"
        "import torch\nimport apollo_optim as optim\n"
        "for name in ('apollo', 'adabelief', 'adahessian'):\n"
        "    p = torch.nn.Parameter(torch.ones(3))\n"
        "    opt = optim.create(name, [p], lr=0.1)\n"
        "    (p ** 2).sum().backward(create_graph=optim.get(name).needs_create_graph)\n"
        "    opt.step()\n"
        "    assert opt.state[p]['step'].device.type == 'cpu'\n"
        "print(optim._fused.triton_missing())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("Triton is not importable")
