"""Train a table's rows x seeds on this machine's CPU, a few at a time, one progress line per run.

::

    python -m scripts.run_table --config configs/quickstart.yaml [--rows SGD,Apollo]
        [--seeds N | --seed-list 1,101] [--out-root runs/quickstart] [--jobs 2]
        [--plugin MODULE_OR_PATH ...] [--dry-run] [-- --epochs 5 key=value ...]

The runs are exactly ``scripts.sweep``'s: the same ``python -m <task>.train`` command lines
(``--dry-run`` prints them) and run directories ``<out-root>/<table>/<version>/<row>/<schedule>/
seed<N>``, resolved before any starts; runs finished with this length are skipped and the
others resume. What this adds for short CPU runs such as the quickstart's: ``--jobs`` worker
processes, each on one thread (a tiny model gains nothing from intra-op threads), each calling
the task's entry point ``<task>.train.run`` with a command line's arguments, one run after
another. Python, torch and the data set are then loaded once per worker instead of once per
run, which on a 2-core CPU is most of a short run's time. Each run's output goes to
``stdout.log`` in its run directory, and a line per finished run shows its result. The first
run that fails stops the table: its one-line error is printed once (a crash's traceback is in
its ``stdout.log``), the runs in flight are stopped (they resume on the next start).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import shlex
import signal
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from engine import cli
from scripts import sweep


def _summary(results: dict) -> str:
    best, final = results.get("best") or {}, results.get("final") or {}
    metric = results.get("metric", "")
    loss = final.get("train_loss")
    return f"{metric} {best.get(metric, float('nan')):.2f} (best epoch {best.get('epoch')})" + (
        f", final train loss {loss:.4f}" if loss is not None else ""
    )


def _init_worker(threads: int | None) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it, by terminating the
    # workers (a run loses at most its current epoch: checkpoints are written atomically).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run(job: tuple[list[str], Path]) -> tuple[Path, str | None, float]:
    """``python -m <task>.train ARGS`` as ``<task>.train.run(ARGS)`` in this worker process;
    returns the error line of a run that failed (None if it succeeded)."""
    cmd, run_dir = job
    assert cmd[1] == "-m", cmd
    entry = importlib.import_module(cmd[2]).run
    run_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    with open(run_dir / "stdout.log", "a", encoding="utf-8") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                entry(cmd[3:])
                error = None
            except SystemExit as exc:  # argparse's usage errors (already printed to the log)
                error = f"exit status {exc.code}: see {run_dir / 'stdout.log'}"
            except cli.USER_ERRORS as exc:  # what the command prints as its one error line
                error = " ".join(str(exc).split()) or type(exc).__name__
                print(f"error: {error}", file=log)
            except Exception as exc:
                traceback.print_exc(file=log)
                error = (
                    f"crashed ({type(exc).__name__}: {exc}); traceback in {run_dir / 'stdout.log'}"
                )
    return run_dir, error, time.perf_counter() - tic


def main(argv: Sequence[str] | None = None) -> None:
    p = sweep.build_parser("python -m scripts.run_table")
    p.description = __doc__.split("\n")[0]
    p.set_defaults(config=None)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    args = p.parse_args(argv)
    if not args.config:
        raise ValueError("--config: required (a table file, e.g. configs/quickstart.yaml)")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    runs = sweep.plan_parsed(args, args.config, gpus=0)
    if args.dry_run:
        for job in runs:
            print(shlex.join(job.command))
        return
    total, width = len(runs), len(str(len(runs)))
    todo = [job for job in runs if job.finished() is None]
    print(
        f"{total} runs of {args.config} ({total - len(todo)} finished already), "
        f"{min(args.jobs, max(len(todo), 1))} at a time; each run's log: <run dir>/stdout.log",
        flush=True,
    )
    if not todo:
        return
    start, done = time.perf_counter(), total - len(todo)
    jobs = max(1, min(args.jobs, len(todo)))
    threads = 1 if args.jobs > 1 else None
    context = multiprocessing.get_context("spawn")  # fresh workers: no state forked from here
    pool = context.Pool(jobs, initializer=_init_worker, initargs=(threads,))
    by_dir = {job.run_dir: job for job in todo}
    try:
        for run_dir, error, seconds in pool.imap_unordered(
            _run, [(job.command, job.run_dir) for job in todo]
        ):
            done += 1
            job = by_dir[run_dir]
            label = (
                f"[{done:>{width}}/{total}] {job.config['row']:<11} seed {job.config['seed']:<6}"
            )
            results = job.finished() if error is None else None
            if results is None:
                raise ValueError(
                    f"{job.label}: {error or 'did not finish'} (stopped the table; "
                    "the other runs resume when it is run again)"
                )
            print(
                f"{label} {_summary(results)}  [{seconds:.1f} s, "
                f"{time.perf_counter() - start:.0f} s so far]",
                flush=True,
            )
        pool.close()
    except BaseException:
        pool.terminate()  # a failure, Ctrl-C: stop the workers now, not after the queue
        raise
    finally:
        pool.join()


if __name__ == "__main__":
    cli.main(main)
