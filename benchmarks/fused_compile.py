"""Compile every fused optimizer kernel for a GPU without one (a check, not a benchmark).

    python -m benchmarks.fused_compile [--arch 90] [--ptx-only]

Runs each fused plan (Apollo, AdaBelief, AdaHessian) over the option grid on small CPU
tensors with the launches intercepted, and compiles every kernel variant they would launch
for ``sm_<arch>`` with the installed Triton (``ptxas`` ships in its wheel), so a kernel that
the CPU interpreter accepts but the GPU compiler rejects shows up here. Exit status 1 if any
variant fails. Not run with ``TRITON_INTERPRET=1`` (the interpreter compiles nothing).
"""

from __future__ import annotations

import itertools
import sys
import time

import torch

from engine import cli

TYPES = {torch.float32: "fp32", torch.int64: "i64", torch.int32: "i32"}


def _signature(kernel, args: tuple, meta: dict) -> tuple[dict, dict]:
    sig, constexprs = {}, {}
    names = kernel.arg_names
    values = dict(zip(names, args, strict=False)) | meta
    for name in names:
        v = values[name]
        if name in meta or v is None:
            sig[name], constexprs[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + TYPES[v.dtype]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        else:
            sig[name] = "fp32"
    return sig, constexprs


def _variants() -> dict[str, tuple]:
    """(kernel, signature, constexprs) of every launch of the fused plans over the grid."""
    from apollo_optim._kernels import triton_adabelief as adabelief
    from apollo_optim._kernels import triton_adahessian as adahessian
    from apollo_optim._kernels import triton_apollo as apollo
    from apollo_optim._kernels import triton_common as common

    found: dict[str, tuple] = {}

    def record(kernel, grid, *args, **meta):
        # both alignments: small CPU tensors are always aligned, parameters may not be
        for aligned in {meta.get("ALIGNED"), not meta.get("ALIGNED", True)} - {None}:
            sig, const = _signature(kernel, args, meta | {"ALIGNED": aligned})
            module = kernel.fn.__module__.rsplit(".", 1)[-1].removeprefix("triton_")
            name = f"{module}.{kernel.fn.__name__}"
            key = f"{name}{sorted((k, str(v)) for k, v in const.items())}"
            found.setdefault(key, (kernel, sig, const))

    for module in (apollo, adabelief, adahessian):
        module.launch = record
    common.launch = record
    shapes = [(3,), (4, 5)]
    for dtype in (torch.float32, torch.bfloat16):
        ps = [torch.zeros(s, dtype=dtype) for s in shapes]

        def z(ps=ps):
            return [torch.zeros_like(p) for p in ps]

        steps = [torch.zeros((), dtype=torch.float32) for _ in ps]
        for belief, wdt, maximize, lr in itertools.product(
            (False, True), ("L2", "decoupled", "stable"), (False, True), (0.1, torch.tensor(0.1))
        ):
            group = dict(
                weight_decay=0.1,
                weight_decay_type=wdt,
                maximize=maximize,
                lr=lr,
                rebound="belief" if belief else "constant",
                sigma=0.01,
                eps=1e-4,
                warmup=5,
                init_lr=1e-4,
                beta=0.9,
                betas=(0.9, 0.999),
            )
            apollo.Plan(ps, z(), z(), z(), steps).step(z(), group)
            if not belief and not maximize:
                adabelief.Plan(ps, z(), z(), steps).step(z(), group)
        for power in (1.0, 0.5):
            group = dict(betas=(0.9, 0.999), hessian_power=power, weight_decay=0.1, eps=1e-4)
            adahessian.Plan(ps, z(), z()).step(z(), z(), 3, 0.1, group)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="python -m benchmarks.fused_compile", description=__doc__)
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90: H100/H200)")
    ap.add_argument("--ptx-only", action="store_true", help="stop at PTX (skip ptxas)")
    args = ap.parse_args(argv)
    from apollo_optim._kernels.fused import interpreting

    if interpreting():
        sys.exit("benchmarks.fused_compile: unset TRITON_INTERPRET (it compiles nothing)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    variants = _variants()
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(variants)} kernel variants")
    for key, (kernel, sig, const) in variants.items():
        t0 = time.perf_counter()
        try:
            src = ASTSource(kernel, sig, const)
            compiled = triton.compile(src, target=target, options={"num_warps": 8})
            stage = "ptx" if args.ptx_only else "cubin"
            assert compiled.asm.get(stage), f"no {stage}"
            print(f"ok   {time.perf_counter() - t0:5.1f} s  {key}")
        except Exception as exc:  # report every failing variant, then fail
            failures += 1
            print(f"FAIL {key}: {type(exc).__name__}: {str(exc)[:2000]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
