"""The ``fused`` option on a machine without a GPU.

The kernels' own tests (``tests/optim/fused``) run here under Triton's CPU interpreter, in a
pytest process of their own: ``TRITON_INTERPRET`` must be set before Triton is imported, and
this process may have imported it already (``torch.compile`` does). On a CUDA machine those
tests run directly on the GPU instead. ``fused=True`` where the kernels cannot run, and the
other arguments' checks, are conformance.py's.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apollo_optim._kernels.fused import triton_unusable

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    if "TRITON_INTERPRET" not in env:
        environ.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-W", "ignore", "-c", code]
    return subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests/optim/fused runs on the GPU")
@pytest.mark.skipif(triton_unusable() is not None, reason=f"{triton_unusable()}")
def test_fused_kernels_under_the_triton_interpreter():  # ~40 s on 2 cores
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*cmd, "tests/optim/fused"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
    skipped = re.findall(r"^SKIPPED \[\d+\] (\S+?):", proc.stdout, re.M)
    # only what needs a GPU (sync checks, CUDA graphs) may be skipped under the interpreter
    assert set(skipped) <= {"tests/optim/fused/test_fused_cuda.py"}, proc.stdout[-3000:]


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
        "print(optim._kernels.fused.triton_unusable())\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("Triton is not importable")


@pytest.mark.skipif(
    triton_unusable() is not None and "older" not in triton_unusable(),
    reason=f"{triton_unusable()}",
)
def test_an_old_triton_is_one_clear_error_with_fused_true_and_skipped_by_default():
    """Triton before 3.3 (torch 2.4 installs 3.0) rejects the kernels: fused=True says so in
    one line, the default takes the unfused path. With the interpreter on, so that CPU
    tensors would otherwise qualify; a recent Triton plays an old one (3.2.0)."""
    old = triton_unusable() is not None  # the real thing (the oldest-torch CI step)
    version = importlib.metadata.version("triton") if old else "3.2.0"
    code = (
        ("" if old else f"import triton\ntriton.__version__ = '{version}'\n")
        + "import torch\nimport apollo_optim as optim\n"
        "from apollo_optim._kernels import fused\n"
        "for name in ('apollo', 'adabelief', 'adahessian'):\n"
        "    p = torch.nn.Parameter(torch.ones(3))\n"
        "    assert not fused.resolve(name, None, [p])\n"
        "    try:\n"
        "        optim.create(name, [p], lr=0.1, fused=True)\n"
        "    except RuntimeError as e:\n"
        "        print(e)\n"
        "    opt = optim.create(name, [p], lr=0.1)\n"
        "    (p ** 2).sum().backward(create_graph=optim.get(name).needs_create_graph)\n"
        "    opt.step()\n"
    )
    proc = _python(code, TRITON_INTERPRET="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, proc.stdout
    expected = f"(fused=True) cannot run: Triton {version} is older than 3.3"
    for cls, line in zip(("Apollo", "AdaBelief", "AdaHessian"), lines, strict=True):
        assert line.startswith(cls + expected), line
