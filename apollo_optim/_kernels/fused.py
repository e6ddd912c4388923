"""Fused multi-tensor optimizer steps written in Triton (CUDA; CPU under ``TRITON_INTERPRET=1``).

One step of a parameter group is a constant number of kernel launches, whatever the number
of tensors: the kernels read every tensor's address from a table built once per parameter
set (:mod:`.triton_tables`), and per-tensor reductions go through the two-stage pattern of fused
LAMB (one launch reduces every tensor's blocks into a device buffer, the next reads the
per-tensor scalars from it). Step counters and learning rates are read on the device, so
``step()`` never waits for the GPU and can be captured in a CUDA graph.

This module decides when the kernels (``triton_*.py`` beside it) run, and never imports
Triton unless asked: ``import apollo_optim`` does not need it. The optimizers call
:func:`resolve` to choose their path and :func:`check_requested` to validate ``fused=True``
at construction; without a usable Triton (missing, or older than ``MIN_TRITON``) the default
``fused=None`` takes the unfused path and ``fused=True`` is one clear error.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

import torch

from .._sharding import is_dtensor
from .triton_tables import interpreting, like, upload

# Compute happens in float32; float64 parameters stay on the multi-tensor paths (their
# scalars would need float64 transcendental functions that Triton does not promise).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# The oldest Triton the kernels are tested with (tests/optim/fused under the interpreter, and
# every variant compiled for sm_90 by benchmarks/fused_compile). Older ones reject them: 3.0
# and 3.1 (what torch 2.4 and 2.5 install) in the interpreter ("arange's arguments must be
# of type tl.constexpr"), 3.2 in the GPU compiler (starred arguments in a kernel's calls).
# With those the optimizers take their unfused paths.
MIN_TRITON = (3, 3)


@functools.cache
def triton_unusable() -> str | None:
    """Why Triton cannot run the fused kernels here, or None when it can."""
    try:
        import triton
        import triton.language
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"Triton is not importable ({type(exc).__name__}: {exc})"
    version = getattr(triton, "__version__", "0")
    if _release(version) < MIN_TRITON:
        oldest = ".".join(map(str, MIN_TRITON))
        return f"Triton {version} is older than {oldest}, the oldest the fused kernels support"
    return None


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as '3.2.0' or '3.6.0+git1234'."""
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2])


def unsupported(params: Iterable[torch.Tensor], dtypes=DTYPES) -> str | None:
    """Why the fused kernels cannot update ``params``, or None when they can."""
    for p in params:
        if is_dtensor(p):
            return "DTensor (sharded) parameters take the multi-tensor path"
        if p.device.type == "cpu":
            if not interpreting():
                return "parameters are on the CPU (the fused kernels need CUDA)"
        elif p.device.type != "cuda":
            return f"parameters on {p.device.type} (the fused kernels need CUDA)"
        if p.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            return f"{str(p.dtype).replace('torch.', '')} parameters (fused supports {names})"
        if p.is_sparse or not _dense(p):
            return "a parameter that is not dense in memory (a strided view)"
    return triton_unusable()


def _dense(t: torch.Tensor) -> bool:
    if t.is_contiguous():
        return True
    # dense with a permuted layout (channels_last): every element once, no gaps
    strides = sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n != 1)
    expected = 1
    for stride, size in strides:
        if stride != expected:
            return False
        expected *= size
    return True


def check_requested(name: str, params: Iterable[torch.Tensor], dtypes=DTYPES) -> None:
    """``fused=True`` at construction: a clear error when the fused path cannot run."""
    why = unsupported(params, dtypes)
    if why is not None:
        raise RuntimeError(f"{name}(fused=True) cannot run: {why}; use fused=None or False")


class Cache:
    """A few plans keyed by the identity and addresses of a group's tensors (LRU)."""

    def __init__(self, size: int = 8) -> None:
        self._plans: OrderedDict[Hashable, object] = OrderedDict()
        self._size = size

    def get(self, key: Callable[[], Hashable], build: Callable[[], object]) -> object:
        k = key()
        if k in self._plans:
            self._plans.move_to_end(k)
            return self._plans[k]
        plan = build()  # may replace state tensors (device, layout): key them afterwards
        self._plans[key()] = plan
        while len(self._plans) > self._size:
            self._plans.popitem(last=False)
        return plan

    def clear(self) -> None:
        self._plans.clear()


def considered(group: dict, params: list[torch.Tensor]) -> bool:
    """A cheap first test, every step: whether :func:`plan` may choose the fused path.
    ``fused=None`` leaves CPU tensors, and groups that asked for ``foreach`` or
    ``compiled`` explicitly, to those paths."""
    flag = group.get("fused")
    if flag is False or not params or torch.compiler.is_compiling() or is_dtensor(params[0]):
        return False  # (DTensor parameters: the sharded multi-tensor path)
    if flag is None:
        explicit = group.get("foreach") is not None or group.get("compiled", False)
        return params[0].device.type == "cuda" and not explicit
    return True


def plan(cache, name: str, group: dict, params: list, states: list[dict], keys, make):
    """The cached fused plan of one group's step, or None when it takes another path.

    ``states`` are the parameters' state dicts, ``keys`` the names of their tensors; the
    plan is keyed by the identity of every tensor and the parameters' addresses, so a new
    parameter set, a loaded state dict or a moved parameter builds a new one. Building
    moves step counters to the device (float32) and lays state out like its parameter."""

    def key():
        ids = [tuple(id(s[k]) for s in states) for k in (*keys, "step")]
        return (tuple(map(id, params)), tuple(p.data_ptr() for p in params), *ids)

    def build():
        if not resolve(name, group.get("fused"), params):
            return None
        for p, s in zip(params, states, strict=True):
            for k in keys:
                s[k] = like(s[k], p)
        on_host = []  # counters from the CPU (new state, old checkpoints): one upload
        for i, (p, s) in enumerate(zip(params, states, strict=True)):
            step = s["step"]
            if step.device.type == "cpu" and p.device.type != "cpu":
                on_host.append(i)
            elif step.device != p.device or step.dtype != torch.float32:
                s["step"] = step.to(device=p.device, dtype=torch.float32)
        if on_host:
            host = torch.stack([states[i]["step"].float() for i in on_host])
            steps = upload(host, params[on_host[0]].device).unbind()
            for i, step in zip(on_host, steps, strict=True):
                states[i]["step"] = step
        return make(params, *([s[k] for s in states] for k in (*keys, "step")))

    return cache.get(key, build)


def resolve(name: str, flag: bool | None, params: list[torch.Tensor], dtypes=DTYPES) -> bool:
    """Whether one group's step takes the fused path: ``fused=True`` demands it (an error
    naming the reason when it cannot run), ``None`` takes it for CUDA tensors when Triton is
    importable, ``False`` never."""
    if flag is False or not params:
        return False
    if flag is None and params[0].device.type != "cuda":
        return False  # the default never uses the interpreter: it is for tests
    if torch.compiler.is_compiling():
        return False  # a user's torch.compile traces the plain tensor ops instead
    why = unsupported(params, dtypes)
    if why is None:
        return True
    if flag:
        raise RuntimeError(f"{name}(fused=True) cannot run: {why}; use fused=None or False")
    return False
