"""Training throughput: the real training loop against the bare model step, in one process.

::

    python -m benchmarks.train_step --config configs/cifar10.yaml --row SGD,Apollo
        [--schedule S] [--device {cpu,cuda}] [--amp {none,fp16,bf16}]
        [--compile none,reduce-overhead] [--batch-size N] [--steps 50] [--warmup 20]
        [--rounds 3] [--procs N] [--vocab-size V] [--json PATH] [key=value ...]

For each row (and ``--compile`` mode, a comma-separated list) of a table, on synthetic data of
the task's real shapes (CIFAR 32x32 images; ImageNet at the config's crop, 224; the 1B-Words
LSTM at its real vocabulary of 793,471 words, Zipf-distributed tokens):

* **loop**: the task's own ``train_one_epoch`` (what ``train.py`` runs: its data pipeline, the
  metrics kept on the device, the schedule, the meter read at the epoch's end) over
  ``--steps`` updates. CIFAR goes through the pipeline ``train.py`` would pick (on CUDA: the
  images held and augmented on the GPU); ImageNet's loader is stood in for by one pinned
  batch copied every step (JPEG decoding excluded: docs/performance.md says how many workers
  keep up); the LM streams synthetic shards through its ``TokenStream``.
* **bare**: forward, loss, backward, ``optimizer.step()`` on one batch already on the device,
  nothing else (for fp16 through the GradScaler).

Both share the model and optimizer and run after ``--warmup`` untimed updates each (cuDNN
autotuning, compilation, CUDA-graph recording); ``--rounds`` alternate bare and loop and the
median round is reported, so a burst of load on a shared machine hits both. The report gives
samples/s (images or tokens), ms per update, the loop's overhead over the bare step, and the
GPU-hours the whole table (rows x schedules x seeds x epochs x training-set size) would take at
the loop's speed. ``--procs N`` runs N copies side by side on the device (as
``--jobs-per-gpu N`` runs N trainings), timed together, and reports their sum.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.optim_step import machine
from engine import cli, distributed, metrics
from engine import config as cfg
from engine import run as runs

from . import _train_tasks as tasks

#: Training-set sizes, the samples one epoch trains on (LM: predicted tokens, approximate).
TRAIN_SIZE = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "imagenet": 1_281_167,  # ILSVRC-2012 training images
    "digits": 1_437,  # the quickstart's split (classification/digits.py)
    # ~0.8 billion words (Chelba et al., 2013) plus <S> and </S> for each of 30,301,028
    # sentences, less each of the 99 shards' leading <S> (never predicted)
    "lm1b": 800_000_000 + 2 * 30_301_028 - 99,
}


def table_samples(table_path: str, sample_key: str, schema: cfg.Schema) -> tuple[int, int]:
    """(runs, samples) of a whole table: rows x schedules x seeds, each run epochs x set size."""
    table = cfg.load_table(table_path)
    runs_, samples = 0, 0
    seeds = max(len(table["seeds"]), 1)
    for row in cfg.row_names(table):
        for schedule in cfg.schedule_names(table):
            c = cfg.resolve(table, row, schedule, schema=schema, flags={"device": "cpu"})
            runs_ += seeds
            samples += seeds * (c["epochs"] or 0) * TRAIN_SIZE[sample_key]
    return runs_, samples


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    tic = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - tic


def measure(args: argparse.Namespace, barrier: Any = None) -> list[dict[str, Any]]:
    """Every (compile mode, row) of ``args``: bare and loop seconds per update, per round."""
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py: fixed shapes, autotuned kernels
    else:
        torch.set_flush_denormal(True)  # a diverging synthetic run must not time denormals
    ctx = distributed.setup(args.device)  # one process: pins the GPU, no process group
    out, shared = [], {}  # rows of one compile mode share its compiled model
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.compile:
            for row in args.row:
                config = resolve(args, row, mode, Path(tmp) / f"{mode}-{row}")
                task = tasks.build(config, ctx, args, shared)
                # the run directory holds only what runs.start writes; no TensorBoard needed
                with _no_tensorboard(), runs.start(config, ctx, metric=task.metric) as run:
                    task.attach(run)
                    result = _rounds(task, args, device, barrier)
                out.append({"row": row, "compile": mode, **task.describe(), **result})
    return out


def _rounds(
    task: tasks.Task, args: argparse.Namespace, device: torch.device, barrier: Any
) -> dict[str, Any]:
    first_step = _timed(lambda: task.bare(1), device)  # compile, autotune, allocate
    task.bare(args.warmup - 1)
    task.loop(args.warmup)
    check = task.compare_compiled()  # after warm-up: the graphs exist already
    bare, loop = [], []
    for _ in range(args.rounds):
        for phase, times in (("bare", bare), ("loop", loop)):
            if barrier is not None:
                barrier.wait(timeout=900)  # every copy times the same phase together
            fn = task.bare if phase == "bare" else task.loop
            times.append(_timed(lambda fn=fn: fn(args.steps), device) / args.steps)
    return {
        "bare_s": statistics.median(bare),
        "loop_s": statistics.median(loop),
        "bare_rounds": bare,
        "loop_rounds": loop,
        "first_step_s": first_step,
        **check,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
    }


class _no_tensorboard:
    """``engine.metrics.tensorboard`` returns a no-op writer meanwhile (the benchmark's run
    directory is thrown away; the tensorboard package need not be installed)."""

    def __enter__(self) -> None:
        self.real = metrics.tensorboard
        metrics.tensorboard = lambda out_dir, ctx: metrics.NullWriter()

    def __exit__(self, *exc: object) -> None:
        metrics.tensorboard = self.real


def resolve(args: argparse.Namespace, row: str, mode: str, out_dir: Path) -> dict[str, Any]:
    """The run config ``train.py`` would resolve for this row (plus the benchmark's flags)."""
    table = cfg.load_table(args.config)
    schema = tasks.schema(table["task"])
    argv = [
        "--config",
        args.config,
        "--row",
        row,
        "--device",
        args.device,
        "--compile",
        mode,
        "--out-dir",
        str(out_dir),
        "--epochs",
        "1000000",
    ]
    if args.schedule:
        argv += ["--schedule", args.schedule]
    elif len(cfg.schedule_names(table)) > 1:
        argv += ["--schedule", cfg.schedule_names(table)[0]]
    if args.amp:
        argv += ["--amp", args.amp]
    overrides = list(args.overrides)
    if args.batch_size:
        overrides.append(f"batch_size={args.batch_size}")
    config, _ = cli.parse_run_args(
        "python -m benchmarks.train_step", "", schema, [*argv, *overrides]
    )
    return config


def report(results: list[dict[str, Any]], args: argparse.Namespace, procs: int) -> str:
    """The table of figures and the GPU-hours estimate, as printed."""
    table = cfg.load_table(args.config)
    sample_key = results[0]["dataset"]
    n_runs, samples = table_samples(args.config, sample_key, tasks.schema(table["task"]))
    unit = results[0]["unit"]
    lines = [
        f"{'row':<11} {'compile':<15} {'bare ' + unit + '/s':>14} {'loop ' + unit + '/s':>14}"
        f" {'bare ms':>8} {'loop ms':>8} {'overhead':>8} {'table h':>11}"
    ]
    for r in results:
        per = r["samples_per_step"] * procs
        bare, loop = per / r["bare_s"], per / r["loop_s"]
        hours = samples / loop / 3600
        lines.append(
            f"{r['row']:<11} {r['compile']:<15} {bare:>14,.0f} {loop:>14,.0f} "
            f"{1e3 * r['bare_s']:>8.2f} {1e3 * r['loop_s']:>8.2f} "
            f"{r['loop_s'] / r['bare_s'] - 1:>+8.1%} {hours:>11,.1f}"
        )
        r.update(bare_per_s=bare, loop_per_s=loop, table_gpu_hours=hours)
    first, side = results[0], f" ({procs} processes side by side, summed)" if procs > 1 else ""
    layout = "channels_last" if first["channels_last"] else "NCHW"
    firsts = ", ".join(f"{r['row']}/{r['compile']} {r['first_step_s']:.1f} s" for r in results)
    head = [
        f"machine: {describe(torch.device(args.device))}",
        f"{args.config}: {first['what']}; batch {first['batch']}, amp {first['amp']}, {layout}, "
        f"data {first['pipeline']}",
        f"{args.steps} timed updates per phase, median of {args.rounds} rounds after "
        f"{args.warmup} warm-up updates{side}",
    ]
    tail = [
        f"table h: hours of this device for the whole table ({n_runs} runs, {samples:,} {unit}) "
        f"at the loop's speed{side}; first bare step (compile, autotune): {firsts}"
    ]
    for r in results:
        if r.get("logits_rel_diff") is not None:
            tail.append(
                f"{r['row']}/{r['compile']} against eager, same weights and batch "
                f"(amp {r['amp']}): logits rel. diff {r['logits_rel_diff']:.1e}, "
                f"gradients {r['grads_rel_diff']:.1e} (largest over tensors)"
            )
    return "\n".join([*head, *lines, *tail])


def describe(device: torch.device) -> str:
    """The machine: CPU, torch, GPU, and the load average (this benchmark runs on shared ones)."""
    text = machine()
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    if hasattr(os, "getloadavg"):
        text += ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return text


def _child(args: argparse.Namespace, barrier: Any, queue: Any) -> None:
    try:
        queue.put(("ok", measure(args, barrier)))
    except BaseException as exc:  # reported by the parent, with its type
        barrier.abort()
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def measure_side_by_side(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.procs`` processes measure together; the result holds their summed rates (as the
    seconds per update that rate would take one process)."""
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(args.procs), context.Queue()
    workers = [
        context.Process(target=_child, args=(args, barrier, queue)) for _ in range(args.procs)
    ]
    for w in workers:
        w.start()
    answers = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    errors = [a[1] for a in answers if a[0] == "error"]
    if errors:
        raise RuntimeError(f"a side-by-side copy failed: {errors[0]}")
    return sum_rates([a[1] for a in answers])


def sum_rates(copies: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The first copy's results with ``bare_s``/``loop_s`` set so that ``len(copies)``
    updates per that many seconds is the copies' summed rate (what :func:`report` expects)."""
    summed = [dict(r) for r in copies[0]]
    for i, r in enumerate(summed):
        for key in ("bare_s", "loop_s"):
            rate = sum(1 / c[i][key] for c in copies)  # updates per second, all copies
            r[key] = len(copies) / rate
    return summed


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__)
    p.add_argument("--config", required=True, help="a table, e.g. configs/cifar10.yaml")
    p.add_argument("--row", required=True, help="row(s), comma-separated: SGD,Apollo")
    p.add_argument("--schedule", help="default: the table's first")
    p.add_argument(
        "--device", choices=cfg.DEVICES, default=cli.default_device(), help="default: cuda if any"
    )
    p.add_argument("--amp", choices=cfg.AMP_MODES, help="default: the table's")
    p.add_argument(
        "--compile",
        default="none",
        help=f"mode(s), comma-separated, of {', '.join(cfg.COMPILE_MODES)}",
    )
    p.add_argument("--batch-size", type=int, help="default: the table's (global) batch")
    p.add_argument("--steps", type=int, default=50, help="timed updates per phase and round")
    p.add_argument("--warmup", type=int, default=20, help="untimed updates first (each phase)")
    p.add_argument("--rounds", type=int, default=3, help="bare/loop rounds (median reported)")
    p.add_argument("--procs", type=int, default=1, help="copies side by side on the device")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=tasks.LM1B_VOCAB,
        help="language model: vocabulary size (default: 1B Words')",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args(argv)
    args.row = [r.strip() for r in args.row.split(",") if r.strip()]
    args.compile = [m.strip() for m in args.compile.split(",") if m.strip()]
    bad = [m for m in args.compile if m not in cfg.COMPILE_MODES]
    if bad:
        raise ValueError(f"--compile: unknown mode(s) {bad}; modes: {', '.join(cfg.COMPILE_MODES)}")
    for name in ("steps", "warmup", "rounds", "procs", "vocab_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # the report's machine line; each copy sets its own
    results = measure_side_by_side(args) if args.procs > 1 else measure(args)
    print(report(results, args, args.procs), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": {k: v for k, v in vars(args).items()}, "results": results}, indent=2
            )
            + "\n"
        )
    return results


if __name__ == "__main__":
    cli.main(main, sys.argv[1:])
