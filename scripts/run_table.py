"""Train a table's rows x seeds on this machine's CPU, a few at a time, one progress line per run.

::

    python -m scripts.run_table --config configs/quickstart.yaml [--rows SGD,Apollo]
        [--num-seeds N | --seeds 1,101] [--out-root runs/quickstart] [--jobs 2]
        [--plugin MODULE_OR_PATH ...] [--dry-run] [-- --epochs 5 key=value ...]

The runs are exactly ``engine.sweep``'s: the same ``python -m <task>.train`` command lines
(``--dry-run`` prints them) and run directories ``<out-root>/<table>/<version>/<row>/<schedule>/
seed<N>``, so finished runs are skipped and unfinished ones resume. What this adds for short CPU
runs such as the quickstart's: ``--jobs`` worker processes, each on one thread (a tiny model
gains nothing from intra-op threads), each calling the task's entry point ``<task>.train.run``
with a command line's arguments, one run after another. Python, torch and the data set are then
loaded once per worker instead of once per run, which on a 2-core CPU is most of a short run's
time. Each run's output goes to ``stdout.log`` in its run directory, and a line per finished
run shows its result.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from engine import cli, sweep
from engine import config as cfg
from engine.metrics import read_json


def plan(args: argparse.Namespace) -> list[tuple[list[str], Path]]:
    """engine.sweep's (command, run directory) list for these options, on the CPU."""
    table = cfg.load_table(args.config)
    seeds = args.seeds
    if args.num_seeds is not None:
        if not 1 <= args.num_seeds <= len(table["seeds"]):
            raise ValueError(f"--seeds must be 1..{len(table['seeds'])} (the table's seed list: "
                             f"{table['seeds']}), got {args.num_seeds}")  # fmt: skip
        seeds = ",".join(str(s) for s in table["seeds"][: args.num_seeds])
    plugins = [x for p in args.plugin for x in ("--plugin", p)]
    ns = argparse.Namespace(
        config=args.config, table=None, version="current", configs_root="configs", rows=args.rows,
        schedules=args.schedules, seeds=seeds, gpus=0, data_dir=None, out_root=args.out_root,
        python=sys.executable, dry_run=args.dry_run, extra=[*plugins, *args.extra],
    )  # fmt: skip
    return sweep.commands(ns)


def _finished(run_dir: Path) -> dict | None:
    try:
        results = read_json(run_dir / "results.json")
    except (OSError, ValueError):
        return None
    return results if results.get("finished") else None


def _summary(results: dict) -> str:
    best, final = results.get("best") or {}, results.get("final") or {}
    metric = results.get("metric", "")
    loss = final.get("train_loss")
    return (f"{metric} {best.get(metric, float('nan')):.2f} (best epoch {best.get('epoch')})"
            + (f", final train loss {loss:.4f}" if loss is not None else ""))  # fmt: skip


def _init_worker(threads: int | None) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it, by terminating the
    # workers (a run loses at most its current epoch: checkpoints are written atomically).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run(job: tuple[list[str], Path]) -> tuple[list[str], Path, int, float]:
    """``python -m <task>.train ARGS`` as ``<task>.train.run(ARGS)`` in this worker process."""
    cmd, run_dir = job
    assert cmd[1] == "-m", cmd
    entry = importlib.import_module(cmd[2]).run
    run_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    with open(run_dir / "stdout.log", "a", encoding="utf-8") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                entry(cmd[3:])
                code = 0
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
            except Exception:
                traceback.print_exc(file=log)
                code = 1
    return cmd, run_dir, code, time.perf_counter() - tic


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.run_table",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--config", required=True, help="a table file, e.g. configs/quickstart.yaml")
    p.add_argument("--rows", help="comma-separated subset of the table's rows")
    p.add_argument("--schedules", help="comma-separated subset of the table's schedules")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--num-seeds", type=int, help="the first N seeds of the table's list")
    seeds.add_argument("--seeds", help="comma-separated seeds (default: the table's list)")
    p.add_argument("--out-root", default="runs")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_PATH",
                   help="passed to every run: a module that registers an optimizer")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("extra", nargs="*", help="passed to every run (after --): flags, key=value")
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    runs = plan(args)
    if args.dry_run:
        for cmd, _ in runs:
            print(shlex.join(cmd))
        return
    total, width = len(runs), len(str(len(runs)))
    todo = [(cmd, d) for cmd, d in runs if _finished(d) is None]
    print(f"{total} runs of {args.config} ({total - len(todo)} finished already), "
          f"{min(args.jobs, max(len(todo), 1))} at a time; each run's log: <run dir>/stdout.log",
          flush=True)  # fmt: skip
    if not todo:
        return
    start, failed, done = time.perf_counter(), [], total - len(todo)
    threads = 1 if args.jobs > 1 else None
    jobs = max(1, min(args.jobs, len(todo)))
    context = multiprocessing.get_context("spawn")  # fresh workers: no state forked from here
    pool = context.Pool(jobs, initializer=_init_worker, initargs=(threads,))
    try:
        for cmd, run_dir, code, seconds in pool.imap_unordered(_run, todo):
            done += 1
            row, seed = cmd[cmd.index("--row") + 1], cmd[cmd.index("--seed") + 1]
            label = f"[{done:>{width}}/{total}] {row:<11} seed {seed:<6}"
            results = _finished(run_dir) if code == 0 else None
            if results is None:
                failed.append(run_dir)
                tail = (run_dir / "stdout.log").read_text(encoding="utf-8").splitlines()[-8:]
                print(f"{label} FAILED (exit {code}) after {seconds:.0f} s: {shlex.join(cmd)}",
                      *("    " + line for line in tail), sep="\n", flush=True)  # fmt: skip
            else:
                print(f"{label} {_summary(results)}  [{seconds:.1f} s, "
                      f"{time.perf_counter() - start:.0f} s so far]", flush=True)  # fmt: skip
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C or an error here: stop the workers now, not after the queue
        raise
    finally:
        pool.join()
    if failed:
        raise ValueError(f"{len(failed)} of {total} runs failed: {', '.join(map(str, failed))}")


if __name__ == "__main__":
    cli.main(main)
