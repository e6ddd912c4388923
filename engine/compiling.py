"""``torch.compile`` for a training step's model (``--compile``), with its compile time counted.

``--compile {none,default,reduce-overhead}`` (config key ``compile``, off by default):

* ``default``: Inductor compiles the model's forward and backward (fused kernels);
* ``reduce-overhead``: the same, replayed as CUDA graphs (``torch.compile``'s cudagraph trees):
  ResNet-110 at batch 128 is bound by kernel launches from the host, and a graph launches a
  whole forward or backward at once. The optimizer's step runs outside the graphs: with a fused
  step (``torch.optim``'s ``fused=True``, this repository's Triton steps) it is a few launches.

The model is compiled with ``dynamic=False``: a CIFAR epoch has two batch shapes (full and the
last, partial, one), each compiled once, where dynamic shapes would cost every step guards and
rule out CUDA graphs. Evaluation runs the plain model (no recompilation for ``eval()``).

Second-order optimizers cannot use it: ``torch.compile`` has no double backward (AdaHessian's
``create_graph=True``); :func:`compile_mode` says so and the run falls back to eager.

Results equal eager ones within float rounding (Inductor fuses and reorders float operations:
not bit for bit). :meth:`Compiled.take_seconds` is the host time of the updates that
compiled.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from .config import COMPILE_MODES as MODES


def compile_mode(mode: str, create_graph: bool) -> tuple[str, str | None]:
    """The mode a run can use and, when it differs from ``mode``, a warning for the log."""
    if mode not in MODES:
        raise ValueError(f"compile must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "none" and create_graph:
        return "none", (
            f"compile={mode} ignored: torch.compile has no double backward (create_graph=True, "
            "a second-order optimizer); running eagerly"
        )
    return mode, None


def refuse(config: Mapping[str, Any], why: str) -> None:
    """For a task that runs eagerly: ``compile`` other than none is an error saying ``why``."""
    if config["compile"] != "none":
        raise ValueError(
            f"{config['config']}: compile={config['compile']} is for the image "
            f"models; {why} (use compile=none)"
        )


class Compiled:
    """``model`` compiled in ``mode`` (or itself for ``none``), callable like the model.

    Compilation happens in the first call with a new input shape (forward) and in the
    backward after it; :meth:`take_seconds` adds up the host time from each such call to the next
    call of the model (one update: compile, forward, backward, step), so an epoch's time
    with and without it can be told apart.
    """

    def __init__(self, model: torch.nn.Module, mode: str = "none") -> None:
        if mode not in MODES:
            raise ValueError(f"compile must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.module: Any = model
        if mode != "none":
            self.module = torch.compile(model, mode=mode, dynamic=False)
        self._seconds = 0.0
        self._seen: set[tuple] = set()
        self._tic: float | None = None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if self.mode == "none":
            return self.module(*inputs)
        now = time.perf_counter()
        if self._tic is not None:
            self._seconds += now - self._tic
            self._tic = None
        key = (self.module.training, *((tuple(x.shape), x.dtype, x.stride()) for x in inputs))
        if key not in self._seen:
            self._seen.add(key)
            self._tic = now
        if self.mode == "reduce-overhead":
            # a new iteration: the previous step's graph outputs may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        return self.module(*inputs)

    def take_seconds(self) -> float:
        """Host seconds spent in updates that compiled since the last call (an update still
        open counts until now): call it when an epoch's training ends."""
        if self._tic is not None:
            now = time.perf_counter()
            self._seconds += now - self._tic
            self._tic = None
        seconds, self._seconds = self._seconds, 0.0
        return seconds

    def train(self, mode: bool = True) -> Compiled:
        self.module.train(mode)
        return self

    def eval(self) -> Compiled:
        return self.train(False)
