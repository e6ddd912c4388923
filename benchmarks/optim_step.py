"""Time ``optimizer.step()`` on three real parameter sets, against torch.optim.Adam.

    python -m benchmarks.optim_step [--sets resnet110,lstm,transformer] [--steps N]
                                    [--compiled] [--threads T] [--cpu-time]
    python -m benchmarks.optim_step --device cuda [--rounds R] [--steps N]

Every optimizer is measured in the same process on the same parameters and random
gradients, with its ratio to ``torch.optim.Adam(foreach=True)`` and ``Adam(fused=True)``.
The rows are each optimizer's implementations (the default for the device first).
CPU: after one untimed step each (state allocation, compilation), the rows take turns
one step at a time; the median of ``--steps`` steps per row. ``--cpu-time`` times each step
by the CPU time of the one thread doing it (it sets ``--threads 1``): on a machine shared
with other processes, time spent waiting for a core then does not count. CUDA: after two
untimed steps each (state, tables, Triton compilation), per round each row runs ``--steps``
steps between two CUDA events, rows taking turns; the median over ``--rounds`` rounds;
also each row's peak memory allocated during a step beyond what was allocated before it
(bytes per parameter), and its ratio to the memory-traffic bound: its tensor-sized
transfers (Adam 7, Apollo 13) times 4 bytes times the parameter count, over the
bandwidth of a device-to-device copy measured in the same run. Figures and how to read
them: docs/performance.md.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from engine import cli

try:
    from apollo_optim import AdaBelief, Apollo
except ImportError as exc:  # pragma: no cover
    sys.exit(f"benchmarks.optim_step: cannot import apollo_optim ({exc})")

Shapes = list[tuple[int, ...]]


def resnet110_shapes() -> Shapes:
    """CIFAR ResNet-110 (3 stages x 18 basic blocks, 16/32/64 channels, 1x1-conv + BN
    shortcuts where the width changes, 10 classes): 335 tensors, 1,730,714 parameters."""
    shapes: Shapes = [(16, 3, 3, 3), (16,), (16,)]
    cin = 16
    for planes in (16, 32, 64):
        for _ in range(18):
            shapes += [(planes, cin, 3, 3), (planes,), (planes,)]
            shapes += [(planes, planes, 3, 3), (planes,), (planes,)]
            if cin != planes:
                shapes += [(planes, cin, 1, 1), (planes,), (planes,)]
            cin = planes
    shapes += [(10, 64), (10,)]
    assert len(shapes) == 335 and sum(map(math.prod, shapes)) == 1_730_714
    return shapes


def lstm_shapes() -> Shapes:
    """The paper's 1B-Words LSTM LM at a tenth of its vocabulary: embedding 300, 2-layer
    LSTM with 2048 cells projected to 300 (``nn.LSTM(proj_size=300)``), adaptive softmax
    with div_value 4 over 79,347 words (793,471 / 10) with cutoffs [6000, 10000, 64000]
    (the paper's / 10): 18 tensors, 38,059,456 parameters. (Without the projection the
    two LSTM layers alone hold 52.8M parameters, more than the ~38M this set stands for.)"""
    vocab, emb, hidden, cutoffs = 79_347, 300, 2048, (6000, 10000, 64000)
    shapes: Shapes = [(vocab, emb)]
    for _ in range(2):
        shapes += [(4 * hidden, emb), (4 * hidden, emb), (4 * hidden,), (4 * hidden,)]
        shapes += [(emb, hidden)]
    shapes += [(cutoffs[0] + len(cutoffs), emb)]  # head: shortlist + one logit per cluster
    bounds = (*cutoffs, vocab)
    for i in range(len(cutoffs)):
        dim = emb // 4 ** (i + 1)
        shapes += [(dim, emb), (bounds[i + 1] - bounds[i], dim)]
    assert len(shapes) == 18 and sum(map(math.prod, shapes)) == 38_059_456
    return shapes


def transformer_shapes() -> Shapes:
    """Transformer-base: 6 encoder + 6 decoder layers, d 512, FFN 2048, 8 heads, pre-norm
    final LayerNorms, one 32,000-token embedding tied across encoder, decoder and output."""
    d, ff = 512, 2048
    attn = [(3 * d, d), (3 * d,), (d, d), (d,)]
    ffn = [(ff, d), (ff,), (d, ff), (d,)]
    norm = [(d,), (d,)]
    shapes: Shapes = [(32_000, d)]
    shapes += 6 * (attn + ffn + 2 * norm)
    shapes += 6 * (attn + attn + ffn + 3 * norm)
    shapes += 2 * norm
    return shapes


SETS: dict[str, Callable[[], Shapes]] = {
    "resnet110": resnet110_shapes,
    "lstm": lstm_shapes,
    "transformer": transformer_shapes,
}


class NaiveApollo(torch.optim.Optimizer):
    """Apollo written the way the authors' loop is (per tensor, ``norm(p=4)``, fresh
    temporaries), from the spec, for reference timings only (constant rebound, no decay)."""

    def __init__(self, params, lr: float, beta: float = 0.9, eps: float = 1e-4, sigma=0.01):
        super().__init__(params, dict(lr=lr, beta=beta, eps=eps, sigma=sigma))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            beta, sigma = group["beta"], group["sigma"]
            eps = group["eps"] / sigma
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg_grad"] = torch.zeros_like(p)
                    state["approx_hessian"] = torch.zeros_like(p)
                    state["update"] = torch.zeros_like(p)
                state["step"] += 1
                alpha = (1 - beta) / (1 - beta ** state["step"])
                m, b, d = state["exp_avg_grad"], state["approx_hessian"], state["update"]
                delta_grad = p.grad - m
                m.add_(delta_grad, alpha=alpha)
                denom = d.norm(p=4).add(eps)
                d.div_(denom)
                v_sq = d.mul(d)
                delta = delta_grad.div_(denom).mul_(d).sum().mul(-alpha) - b.mul(v_sq).sum()
                b.addcmul_(v_sq, delta)
                d.copy_(m.div(b.abs().clamp_(min=sigma)))
                p.add_(d, alpha=-group["lr"])


def _sgd(params, grads):
    """SGD(foreach, nesterov) writes into p.grad: it gets private parameters and gradients,
    restored (untimed) before every step so that repeated steps stay finite."""
    own = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = torch.optim.SGD(own, lr=1e-6, momentum=0.9, nesterov=True, foreach=True)

    def before_step() -> None:
        for p, g in zip(own, grads, strict=True):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)

    return opt, before_step


Factory = Callable[[list, list], tuple]


def rows(device: str, compiled: bool) -> dict[str, Factory]:
    """Row name -> factory(params, grads) returning (optimizer, untimed before_step or None).

    Apollo's and AdaBelief's implementations: the device's default (fused on CUDA; on CPU the
    blocked step and the batched one), ``foreach=False`` (Apollo: the tensor-scalar form run
    eagerly; AdaBelief: the multi-tensor update one tensor at a time), on CUDA the unfused
    multi-tensor AdaBelief, and with ``--compiled`` ``Apollo(compiled=True)``; the authors'-
    style loop is the reference."""
    lr = 1e-6  # tiny: parameters stay in range over many steps (denormals would skew timings)
    r: dict[str, Factory] = {
        "Adam (foreach)": lambda ps, gs: (torch.optim.Adam(ps, lr=lr, foreach=True), None),
        "Adam (fused)": lambda ps, gs: (torch.optim.Adam(ps, lr=lr, fused=True), None),
    }
    default = "fused" if device == "cuda" else "blocked"
    r[f"Apollo ({default})"] = lambda ps, gs: (Apollo(ps, lr=lr, warmup=0), None)
    r["Apollo (foreach=False)"] = lambda ps, gs: (
        Apollo(ps, lr=lr, warmup=0, foreach=False),
        None,
    )
    if compiled:
        r["Apollo (compiled)"] = lambda ps, gs: (
            Apollo(ps, lr=lr, warmup=0, compiled=True),
            None,
        )
    r["naive per-tensor (authors' style)"] = lambda ps, gs: (NaiveApollo(ps, lr=lr), None)
    default = "fused" if device == "cuda" else "batched"
    r[f"AdaBelief ({default})"] = lambda ps, gs: (AdaBelief(ps, lr=lr), None)
    if device == "cuda":
        r["AdaBelief (foreach)"] = lambda ps, gs: (AdaBelief(ps, lr=lr, foreach=True), None)
    r["AdaBelief (foreach=False)"] = lambda ps, gs: (AdaBelief(ps, lr=lr, foreach=False), None)
    r["SGD (foreach, nesterov)"] = _sgd
    return r


# Tensor-sized memory transfers of one step per element (reads + writes), for the bound.
TRANSFERS = {"Adam": 7, "Apollo": 13, "AdaBelief": 7, "SGD": 5}


CLOCK = time.perf_counter  # time.thread_time with --cpu-time


def _timed_step(opt, before: Callable | None) -> float:
    if before is not None:
        before()
    t0 = CLOCK()
    opt.step()
    return CLOCK() - t0


def _parameters(name: str, device: str) -> tuple[list, list, int]:
    shapes = SETS[name]()
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.1).to(device)) for s in shapes]
    grads = [(torch.randn(s, generator=gen) * 0.01).to(device) for s in shapes]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    n = sum(p.numel() for p in params)
    print(f"\n== {name}: {len(params)} tensors, {n:,} parameters (float32, {device}) ==")
    return params, grads, n


def bench_set(name: str, steps: int, compiled: bool) -> None:
    """CPU: each step timed with the wall clock, rows taking turns step by step."""
    params, grads, _ = _parameters(name, "cpu")
    opts: dict[str, tuple] = {}
    first: dict[str, float] = {}
    for row, factory in rows("cpu", compiled).items():
        opts[row] = factory(params, grads)
        first[row] = _timed_step(*opts[row])  # state allocation (and compilation)
    # Round robin, one step per row per round, the order rotating every round: a burst
    # of load from other processes then hits every row alike instead of one row's run.
    samples: dict[str, list[float]] = {row: [] for row in opts}
    names = list(opts)
    for k in range(steps):
        for row in names[k % len(names) :] + names[: k % len(names)]:
            samples[row].append(_timed_step(*opts[row]))
    adam = statistics.median(samples["Adam (foreach)"])
    fused = statistics.median(samples["Adam (fused)"])
    print(f"{'optimizer':36s} {'ms/step':>9s} {'x Adam(foreach)':>16s} {'x Adam(fused)':>14s}")
    for row, ts in samples.items():
        med = statistics.median(ts)
        extra = f"   (first step, incl. compile: {first[row]:.1f} s)" if "compiled" in row else ""
        print(f"{row:36s} {med * 1e3:9.2f} {med / adam:16.2f} {med / fused:14.2f}{extra}")


def copy_bandwidth(numel: int = 1 << 28) -> float:
    """Bytes per second of a device-to-device copy (read + write), median of 9."""
    src = torch.randn(numel, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 4 * numel / statistics.median(times[1:])


def _peak_extra(opt, before: Callable | None, n: int) -> float:
    """Bytes per parameter allocated during one step beyond what was allocated before it."""
    if before is not None:
        before()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    opt.step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / n


def bench_set_cuda(name: str, rounds: int, steps: int, compiled: bool, bandwidth: float) -> None:
    """CUDA: per round, each row runs ``steps`` steps between two CUDA events (the GPU time
    of the stream, host overhead included when the GPU waits for it); rows take turns,
    the order rotating every round; the median over rounds of ms per step."""
    params, grads, n = _parameters(name, "cuda")
    opts: dict[str, tuple] = {}
    first: dict[str, float] = {}
    for row, factory in rows("cuda", compiled).items():
        opts[row] = factory(params, grads)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(2):  # state allocation, table building, Triton/Inductor compilation
            _timed_step(*opts[row])
        torch.cuda.synchronize()
        first[row] = time.perf_counter() - t0
    extra = {row: _peak_extra(*opt, n) for row, opt in opts.items()}
    samples: dict[str, list[float]] = {row: [] for row in opts}
    names = list(opts)
    for k in range(rounds):
        events = {}
        for row in names[k % len(names) :] + names[: k % len(names)]:
            opt, before = opts[row]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if before is not None:  # SGD's restore of its gradients, before its events
                before()
            start.record()
            for _ in range(steps):
                opt.step()
            end.record()
            events[row] = (start, end)
        torch.cuda.synchronize()
        for row, (start, end) in events.items():
            samples[row].append(start.elapsed_time(end) / 1e3 / steps)
    med = {row: statistics.median(ts) for row, ts in samples.items()}
    adam, fused = med["Adam (foreach)"], med["Adam (fused)"]
    print(
        f"copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write); bound = transfers x 4 B x "
        f"{n:,} / bandwidth: Adam/AdaBelief {7 * 4 * n / bandwidth * 1e3:.3f} ms, "
        f"Apollo {13 * 4 * n / bandwidth * 1e3:.3f} ms"
    )
    print(
        f"{'optimizer':36s} {'ms/step':>9s} {'x Adam(foreach)':>16s} {'x Adam(fused)':>14s} "
        f"{'x bound':>8s} {'peak extra B/param':>19s} {'first 2 steps s':>16s}"
    )
    for row, t in med.items():
        family = next((f for f in TRANSFERS if row.startswith(f)), "Apollo")
        bound = TRANSFERS[family] * 4 * n / bandwidth
        print(
            f"{row:36s} {t * 1e3:9.3f} {t / adam:16.2f} {t / fused:14.2f} {t / bound:8.1f} "
            f"{extra[row]:19.2f} {first[row]:16.1f}"
        )
    for row in list(opts):  # free this set's state before the next set
        del opts[row]
    torch.cuda.empty_cache()


def machine(device: str = "cpu") -> str:
    if device == "cuda":
        import triton

        p = torch.cuda.get_device_properties(0)
        return (
            f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB), "
            f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
            f"Python {platform.python_version()}"
        )
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = cli.ArgumentParser(prog="python -m benchmarks.optim_step", description=__doc__)
    ap.add_argument(
        "--sets", default="resnet110,lstm,transformer", help="parameter sets, comma-separated"
    )
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: cpu")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="CPU: timed steps per row (median; default 9). CUDA: steps per row per round "
        "(default 10)",
    )
    ap.add_argument("--rounds", type=int, default=7, help="CUDA: rounds (median; default 7)")
    ap.add_argument("--compiled", action="store_true", help="add torch.compile'd Apollo")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU: time each step by its thread's CPU time (sets --threads 1)",
    )
    args = ap.parse_args(argv)
    if args.cpu_time:
        if args.device == "cuda" or args.threads not in (0, 1):
            ap.error("--cpu-time measures one CPU thread: no --device cuda, --threads 1")
        global CLOCK
        CLOCK, args.threads = time.thread_time, 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    steps = args.steps if args.steps is not None else (10 if cuda else 9)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in sets if s not in SETS]
    if bad or steps < 1 or args.rounds < 1:
        ap.error(f"unknown set(s) {bad}; choose from {sorted(SETS)}" if bad else "need >= 1")
    if cuda and not torch.cuda.is_available():
        sys.exit("benchmarks.optim_step: --device cuda, but torch sees no CUDA device")
    print("machine:", machine(args.device))
    if cuda:
        print(
            f"median of {args.rounds} rounds x {steps} steps per row, CUDA events, rows "
            "interleaved round by round"
        )
    if args.compiled:  # report a cold compile, not one served from the on-disk cache
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True
    else:
        clock = "thread CPU time" if args.cpu_time else "wall time"
        print(f"median of {steps} timed steps per row ({clock}), rows interleaved step by step")
    bandwidth = copy_bandwidth() if cuda else 0.0
    t0 = time.perf_counter()
    for s in sets:
        if cuda:
            bench_set_cuda(s, args.rounds, steps, args.compiled, bandwidth)
        else:
            bench_set(s, steps, args.compiled)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
