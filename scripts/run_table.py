"""Train a table's rows x seeds on this machine's CPU, a few at a time, then print its table.

::

    python -m scripts.run_table (--config configs/quickstart.yaml | --table quickstart)
        [--rows SGD,Apollo] [--seeds N | --seed-list 1,101] [--out-dir runs] [--jobs 2]
        [--epochs N] [--max-updates N] [--plugin MODULE_OR_PATH ...] [--dry-run]
        [--no-report] [-- key=value ...]

The runs are exactly ``scripts.sweep``'s, on the CPU: the same ``python -m <task>.train``
command lines (``--dry-run`` prints them), options and run directories
``<out-dir>/<table>/<version>/<row>/<schedule>/seed<N>``, resolved before any starts; runs
finished with this length are skipped and the others resume. ``scripts/quickstart.sh`` is this
command with ``--table quickstart`` fixed. What this adds for short CPU runs: ``--jobs`` worker
processes, each on one thread (a tiny model gains nothing from intra-op threads), each calling
the task's entry point with a command line's arguments, one run after another. Python, torch
and the data set are then loaded once per worker instead of once per run, which on a 2-core CPU
is most of a short run's time. Each run's output goes to ``stdout.log`` in its run directory,
and a line per finished run shows its result. The first run that fails stops the table: its
one-line error is printed once (a crash's traceback is in its ``stdout.log``), the runs in
flight are stopped (they resume on the next start). A task with an evaluation entry point
(``nmt.evaluate``) then has each run evaluated the same way, and ``scripts.report`` prints the
table of every run under ``<out-dir>/<table>`` and writes it, with curves, to
``<out-dir>/<table>/report/`` (``--no-report``: not).
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
from collections.abc import Callable, Sequence
from pathlib import Path

from engine import cli
from engine import config as cfg
from scripts import slurm, sweep


def _summary(results: dict) -> str:
    if results.get("diverged"):
        return f"diverged at update {results['diverged']['update']}"
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
    """``python -m MODULE ARGS`` as ``MODULE.main(ARGS)`` in this worker process, its output
    appended to the run directory's ``stdout.log``; returns the error line of a run that failed
    (None if it succeeded)."""
    cmd, run_dir = job
    assert cmd[1] == "-m", cmd
    module = importlib.import_module(cmd[2])
    entry = module.main
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
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--jobs", type=int, default=2, metavar="J", help="runs at a time (default: 2)"
        )
        p.add_argument(
            "--no-report", action="store_true", help="skip the table and curves at the end"
        )
        slurm.add_options(p, gpus=False)

    argv = list(sys.argv[1:] if argv is None else argv)
    p, script, rest = sweep.script_parser(argv, "run_table", __doc__, options)
    args = p.parse_args(rest)
    path = sweep.table_file(args, p.prog, script)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    table = cfg.load_table(path)
    runs = sweep.plan_parsed(args, path, gpus=0)
    evaluate = [
        (["python", "-m", f"{table['task']}.evaluate", *cmd], job.run_dir)
        for job in runs
        if (cmd := sweep.evaluation_args(table["task"], [job.run_dir], data_dir=None, gpus=0))
    ]
    folder = Path(args.out_dir, table.get("table", path.stem))
    if args.dry_run and args.launcher == "local":
        for command in [job.command for job in runs] + [cmd for cmd, _ in evaluate]:
            print(shlex.join(command))
        return
    start = time.perf_counter()
    if args.launcher == "slurm":  # the same runs as SLURM array tasks, waited for
        args.gpus_per_run = 0
        unfinished = slurm.launch(runs, args, folder, dry_run=args.dry_run, wait=True)
        if args.dry_run:
            return
        if unfinished:
            raise ValueError(
                f"{unfinished} run(s) did not finish: python -m scripts.status {folder}"
            )
    else:
        train(runs, path, args.jobs)
    if evaluate:
        print(f"evaluating {len(evaluate)} runs", flush=True)
        _pool_map(evaluate, args.jobs, lambda run_dir, error, seconds: _stop_on(error, run_dir))
    if not args.no_report:
        from scripts import report

        print(flush=True)
        report.main([str(folder)])
    print(f"total: {time.perf_counter() - start:.0f} s")


def train(runs: Sequence[sweep.Job], path: Path, jobs: int) -> None:
    """Train the runs not finished yet, ``jobs`` at a time, one line per finished run."""
    total, width = len(runs), len(str(len(runs)))
    todo = [job for job in runs if job.finished() is None]
    print(
        f"{total} runs of {sweep.shown(path)} on the CPU ({total - len(todo)} finished already), "
        f"{min(jobs, max(len(todo), 1))} at a time; each run's log: <run dir>/stdout.log",
        flush=True,
    )
    if not todo:
        return
    start, done = time.perf_counter(), total - len(todo)
    by_dir = {job.run_dir: job for job in todo}

    def finished(run_dir: Path, error: str | None, seconds: float) -> None:
        nonlocal done
        done += 1
        job = by_dir[run_dir]
        label = f"[{done:>{width}}/{total}] {job.config['row']:<11} seed {job.config['seed']:<6}"
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

    _pool_map([(job.command, job.run_dir) for job in todo], jobs, finished)


def _stop_on(error: str | None, run_dir: Path) -> None:
    if error is not None:
        raise ValueError(f"evaluating {run_dir}: {error}")


def _pool_map(
    work: Sequence[tuple[list[str], Path]],
    jobs: int,
    done: Callable[[Path, str | None, float], None],
) -> None:
    """Each ``(python -m MODULE ARGS, run dir)`` in a worker process, ``jobs`` at a time;
    ``done`` is called as each ends and stops them all by raising."""
    threads = 1 if jobs > 1 else None  # as asked, not as many as are left: the same numbers
    jobs = max(1, min(jobs, len(work)))
    context = multiprocessing.get_context("spawn")  # fresh workers: no state forked from here
    pool = context.Pool(jobs, initializer=_init_worker, initargs=(threads,))
    try:
        for run_dir, error, seconds in pool.imap_unordered(_run, work):
            done(run_dir, error, seconds)
        pool.close()
    except BaseException:
        pool.terminate()  # a failure, Ctrl-C: stop the workers now, not after the queue
        raise
    finally:
        pool.join()


if __name__ == "__main__":
    cli.main(main)
