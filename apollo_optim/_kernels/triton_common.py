"""Triton helpers shared by the fused steps (imported only when a fused step runs)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_tables import CUDA_WARPS, interpreting

# partial sums read per iteration when totalling one tensor's blocks (small in the
# interpreter, so that the tests cross iterations)
REDUCE_BLOCK = 2 if interpreting() else 1024


def device_fn(fn):
    """``triton.jit`` for a function called from kernels. The interpreter re-patches all of
    ``triton.language`` on every call of a jitted helper (~1 ms each), so there helpers stay
    plain Python functions, which run inside the interpreted kernel just the same."""
    return fn if interpreting() else triton.jit(fn)


if interpreting():
    # tl.sum / tl.max are jitted wrappers (the same ~1 ms each in the interpreter); reduce
    # with the combine functions that the interpreter maps to numpy directly
    _SUM = getattr(tl.standard, "_sum_combine", None)
    _MAX = getattr(tl.standard, "_elementwise_max", None)

    def block_sum(x):
        return tl.sum(x, axis=0) if _SUM is None else tl.reduce(x, 0, _SUM)

    def block_max(x):
        return tl.max(x, axis=0) if _MAX is None else tl.reduce(x, 0, _MAX)

else:

    @triton.jit
    def block_sum(x):
        return tl.sum(x, axis=0)

    @triton.jit
    def block_max(x):
        return tl.max(x, axis=0)


if interpreting():

    def narrow(x, DTYPE):
        """``x`` (float32) in the parameters' dtype, rounded to nearest even. The interpreter's
        float32 -> bfloat16 cast truncates (its rounding mode is wrong when the mantissa
        carries), so bfloat16 rounds here by its bits, as the GPU's conversion does."""
        if DTYPE == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return x.to(DTYPE)

else:

    @triton.jit
    def narrow(x, DTYPE: tl.constexpr):
        return x.to(DTYPE)  # round to nearest even


TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@device_fn
def locate(block_tensor, block_start, numels, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """This program's block: (program id, tensor index, element offsets, whether the block is
    full). The table holds each block's first element, so no index is multiplied here (the
    interpreter checks every integer product for overflow, slowly)."""
    pid = tl.program_id(0)
    i = tl.load(block_tensor + pid)
    start = tl.load(block_start + pid)
    if ALIGNED:
        start = tl.multiple_of(start, BLOCK)
    return pid, i, start + tl.arange(0, BLOCK), start + BLOCK <= tl.load(numels + i)


@device_fn
def tail(offs, numels, i):
    """The mask of a block that is not full."""
    return offs < tl.load(numels + i)


@device_fn
def address(table, i, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Tensor ``i``'s address in an address table, as a typed pointer. ``ALIGNED``: every
    address of the launch is a multiple of 16 bytes (checked on the host), which with full
    blocks lets the compiler emit 16-byte loads and stores."""
    ptr = tl.load(table + i).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@device_fn
def load(table, i, offs, mask, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Tensor ``i`` of an address table at ``offs``, in float32; ``mask`` None for a full
    block, else 0 where masked."""
    ptr = address(table, i, DTYPE, ALIGNED)
    if mask is None:
        x = tl.load(ptr + offs)
    else:
        x = tl.load(ptr + offs, mask=mask, other=0.0)
    return x.to(tl.float32)


@device_fn
def store(table, i, offs, mask, value, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    ptr = address(table, i, DTYPE, ALIGNED)
    if mask is None:
        tl.store(ptr + offs, narrow(value, DTYPE))
    else:
        tl.store(ptr + offs, narrow(value, DTYPE), mask=mask)


@device_fn
def masked_sum(x, mask):
    """Σ x over the block's elements (masked lanes hold values that are not elements)."""
    if mask is None:
        total = block_sum(x)
    else:
        total = block_sum(tl.where(mask, x, 0.0))
    return total


@device_fn
def tensor_total(first_block, partials, i, MAX: tl.constexpr, RBLOCK: tl.constexpr):
    """Σ (or max, for non-negative values) of the per-block ``partials`` over tensor ``i``'s
    blocks, in a fixed order (deterministic)."""
    b0 = tl.load(first_block + i)
    b1 = tl.load(first_block + i + 1)
    acc = tl.zeros([RBLOCK], dtype=tl.float32)
    for b in range(b0, b1, RBLOCK):
        idx = b + tl.arange(0, RBLOCK)
        part = tl.load(partials + idx, mask=idx < b1, other=0.0)
        if MAX:
            acc = tl.maximum(acc, part)
        else:
            acc += part
    if MAX:
        return block_max(acc)
    return block_sum(acc)


def pow_parts(beta: float) -> float:
    """log2(β) for β^t = 2^(t·log2 β) on the device (β = 0: a large negative number, so
    that β^t is 0 for every t >= 1 without infinities in the arithmetic)."""
    return math.log2(beta) if beta > 0 else -1.0e4


def launch(kernel, grid: int, *args, **meta) -> None:
    if grid > 0:
        kernel[(grid,)](*args, num_warps=CUDA_WARPS, **meta)


def lr_args(lr, device: torch.device) -> tuple[object, float, bool]:
    """(pointer or dummy, float value, whether to read the pointer): a tensor lr is read on
    the device (an LR scheduler updating it in place needs no new launch arguments, and a
    captured CUDA graph sees its new value); a Python number is passed by value."""
    if isinstance(lr, torch.Tensor):
        if lr.device != device or lr.dtype != torch.float32:
            lr = lr.to(device=device, dtype=torch.float32, non_blocking=True)
        return lr, 0.0, True
    return None, float(lr), False
