"""``--launcher slurm``: a table's runs as one SLURM job array, submitted through submitit.

One array task per run (row x schedule x seed) not finished yet and not already in the queue;
each task asks for the run's resources (``--nodes-per-run`` nodes, ``--gpus-per-run`` GPUs and
as many ranks on each, ``--cpus-per-run`` cores, ``--mem``, ``--time``, ``--partition``,
``--account``, ``--qos``, any other sbatch option through ``--sbatch KEY=VALUE``), and at most
``--array-parallelism`` tasks run at once. submitit writes the sbatch script and starts the
task; the task (:class:`TrainTask`) runs the run's ordinary ``python -m <task>.train`` command
in the run directory's ``stdout.log`` (``stdout.rank<R>.log`` for the other ranks). A run with
several ranks gets its ``torch.distributed`` variables from SLURM's through submitit's
``TorchDistributedEnvironment`` (one SLURM task per rank; ``MASTER_ADDR`` is the job's first
node), so the training command is the same as on one machine.

**Time limits and preemption.** submitit asks SLURM for its warning signal (SIGUSR2) 90 s
before ``--time``; the training process (``engine.preemption``) then writes a checkpoint at the
next update boundary and exits, and submitit requeues the task (up to
:data:`MAX_REQUEUES` times), which resumes the run. ``scontrol requeue``, ``scancel`` and a
preemption send SIGTERM: the run checkpoints the same way; SLURM requeues or ends the job.
The run directories and the submitit folder (``<out-dir>/<table>/.submitit``) must be on a
filesystem every node shares.

``python -m scripts.status <out-dir>/<table>`` shows where each run stands.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from scripts import status

REPO = Path(__file__).resolve().parent.parent
#: Time-limit requeues of one task before submitit gives up (the run then shows as stopped and
#: the next submission resumes it).
MAX_REQUEUES = 20
#: Seconds before ``--time`` at which SLURM sends the warning signal (submitit's default).
SIGNAL_DELAY_S = 90
#: Exit status of a training run that stopped on a signal (``engine.preemption.STOPPED_EXIT``;
#: not imported, so that submitting needs no torch).
STOPPED_EXIT = 75


class TrainingFailed(RuntimeError):
    """The training command of an array task failed; the message is its error line."""


def add_options(p: argparse.ArgumentParser, *, gpus: bool = True) -> None:
    """The launcher choice and the SLURM resources of one run."""
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="where the runs execute: this machine (default), or a SLURM job array",
    )
    g = p.add_argument_group("with --launcher slurm (one array task per run; docs/cluster.md)")
    if gpus:
        g.add_argument(
            "--gpus-per-run",
            type=int,
            metavar="G",
            help="GPUs of a run on each of its nodes, one rank each (default: --gpus, else 1; "
            "0: the CPU)",
        )
        g.add_argument(
            "--nodes-per-run", type=int, default=1, metavar="N", help="nodes of a run (default: 1)"
        )
    g.add_argument(
        "--cpus-per-run",
        type=int,
        metavar="C",
        help="cores of a run on each node, shared by its ranks there (default: each rank's "
        "data workers + 1)",
    )
    g.add_argument("--mem", metavar="SIZE", help="memory of a run on each node, e.g. 64G")
    g.add_argument(
        "--time",
        metavar="LIMIT",
        help="time limit of a task: minutes or [D-]HH:MM[:SS] (required); a run that needs "
        "longer is requeued and resumes",
    )
    g.add_argument("--partition", metavar="NAME")
    g.add_argument("--account", metavar="NAME")
    g.add_argument("--qos", metavar="NAME")
    g.add_argument(
        "--array-parallelism", type=int, metavar="K", help="at most K runs at a time (default: all)"
    )
    g.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="any other sbatch option, e.g. --sbatch constraint=a100 --sbatch exclusive",
    )


@dataclass(frozen=True)
class Resources:
    """What one array task (one run) asks SLURM for."""

    time_min: int
    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int | None = None
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None
    sbatch: tuple[tuple[str, str | bool], ...] = ()

    @property
    def ranks_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    def parameters(self, count: int) -> dict[str, Any]:
        """submitit's ``SlurmExecutor.update_parameters`` for an array of ``count`` runs."""
        params: dict[str, Any] = {
            "job_name": "apollo",
            "time": self.time_min,
            "nodes": self.nodes,
            "ntasks_per_node": self.ranks_per_node,
            "array_parallelism": min(self.array_parallelism or count, count),
            "signal_delay_s": SIGNAL_DELAY_S,
            "setup": [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        optional = {
            "cpus_per_task": self.cpus_per_task,
            "mem": self.mem,
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        if self.sbatch:
            params["additional_parameters"] = dict(self.sbatch)
        return params


def resources(args: argparse.Namespace, configs: Sequence[dict[str, Any]]) -> Resources:
    """The options as :class:`Resources`; ``configs`` (the runs') give the default cores."""
    gpus = getattr(args, "gpus_per_run", None)
    if gpus is None:
        gpus = getattr(args, "gpus", None)
    gpus = 1 if gpus is None else gpus
    nodes = getattr(args, "nodes_per_run", 1)
    for name, value, least in (("--gpus-per-run", gpus, 0), ("--nodes-per-run", nodes, 1)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if args.array_parallelism is not None and args.array_parallelism < 1:
        raise ValueError(f"--array-parallelism must be >= 1, got {args.array_parallelism}")
    if args.time is None:
        raise ValueError(
            "--launcher slurm needs --time: each task's time limit (minutes or [D-]HH:MM[:SS]); "
            "a run that needs longer is requeued and resumes from its checkpoint"
        )
    ranks = max(gpus, 1)
    if args.cpus_per_run is not None:
        if args.cpus_per_run < ranks:
            raise ValueError(f"--cpus-per-run {args.cpus_per_run}: fewer cores than {ranks} ranks")
        cpus = args.cpus_per_run // ranks
    else:
        cpus = max((int(c.get("workers") or 0) for c in configs), default=0) + 1
    return Resources(
        time_min=minutes(args.time),
        gpus_per_node=gpus,
        nodes=nodes,
        cpus_per_task=cpus,
        mem=args.mem,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        array_parallelism=args.array_parallelism,
        sbatch=tuple(_sbatch_option(x) for x in args.sbatch),
    )


def minutes(limit: str) -> int:
    """SLURM's time formats (minutes, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) as whole
    minutes (rounded up; submitit takes minutes)."""
    text = str(limit).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m or (m[1] is None and m[3] is None and m[4] is not None):
        raise ValueError(f"--time {limit!r}: minutes or [D-]HH:MM[:SS], e.g. 240 or 1-00:00:00")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:
        seconds = a * 3600 + b * 60 + c
    elif b is not None:
        seconds = a * 60 + b
    else:
        seconds = a * 60
    if seconds <= 0:
        raise ValueError(f"--time {limit!r} must be positive")
    return -(-seconds // 60)


def _sbatch_option(text: str) -> tuple[str, str | bool]:
    key, eq, value = text.lstrip("-").partition("=")
    if not re.fullmatch(r"[A-Za-z][\w-]*", key):
        raise ValueError(f"--sbatch {text!r}: expected KEY=VALUE or KEY, e.g. constraint=a100")
    return key, (value if eq else True)


class TrainTask:
    """One array task: the run's training command, as one rank of the run (submitit starts one
    SLURM task per rank). Checkpointable: submitit calls :meth:`checkpoint` on rank 0 when the
    warning signal comes, then requeues the task."""

    def __init__(self, command: Sequence[str], run_dir: str, cwd: str) -> None:
        self.command, self.run_dir, self.cwd = list(command), run_dir, cwd
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"command": self.command, "run_dir": self.run_dir, "cwd": self.cwd}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __call__(self) -> str:
        import submitit

        job = submitit.JobEnvironment()
        env = {**os.environ, **rank_environment(job)}
        # one intra-op thread per allotted core, as torchrun sets for its ranks
        env.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        run_dir = Path(self.cwd, self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        rank = job.global_rank
        log_path = run_dir / ("stdout.log" if rank == 0 else f"stdout.rank{rank}.log")
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
        with open(log_path, "a", encoding="utf-8") as log:
            print(
                f"[slurm] job {job.job_id} attempt {attempt}, rank {rank} of {job.num_tasks} "
                f"on {socket.gethostname()}: {shlex.join(self.command)}",
                file=log,
                flush=True,
            )
            self._proc = subprocess.Popen(
                self.command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            # polled, not wait()ed: a wait() interrupted by the warning signal would hold the
            # lock that checkpoint(), running inside that signal's handler, needs
            while (code := self._proc.poll()) is None:
                time.sleep(0.5)
            print(f"[slurm] exit status {code}", file=log, flush=True)
        if code == 0:
            return str(run_dir)
        if code == STOPPED_EXIT:  # SIGTERM: SLURM requeues (requeue, preemption) or ends it
            sys.exit(code)  # no result: a requeued task starts afresh
        raise TrainingFailed(_error_line(log_path) or f"exit status {code}: see {log_path}")

    def checkpoint(self) -> Any:
        """SLURM's warning signal reached this task (and the training process, which stops at
        its next update boundary): wait for that checkpoint, then let submitit requeue."""
        import submitit

        # srun may pass the signal on once more: one checkpoint, one requeue
        signal.signal(submitit.JobEnvironment._usr_sig(), signal.SIG_IGN)
        proc, deadline = self._proc, time.monotonic() + max(SIGNAL_DELAY_S - 20, 10)
        while proc is not None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # past the deadline it dies with the job: resumes from the last one
        return submitit.helpers.DelayedSubmission(TrainTask(self.command, self.run_dir, self.cwd))


def rank_environment(job: Any) -> dict[str, str]:
    """torch.distributed's variables for this SLURM task when the run has several ranks
    (submitit's ``TorchDistributedEnvironment``: the job's first node is the master), else {}."""
    if job.num_tasks <= 1:
        return {}
    import submitit

    dist = submitit.helpers.TorchDistributedEnvironment()
    return {
        "MASTER_ADDR": dist.master_addr,
        "MASTER_PORT": str(dist.master_port),
        "RANK": str(dist.rank),
        "WORLD_SIZE": str(dist.world_size),
        "LOCAL_RANK": str(dist.local_rank),
        "LOCAL_WORLD_SIZE": str(dist.local_world_size),
    }


def _error_line(log: Path) -> str | None:
    found = status.run_status(log.parent, {})
    return found.detail if found.state == "failed" else None


def launch(
    jobs: Sequence[Any],
    args: argparse.Namespace,
    folder: Path,
    *,
    dry_run: bool = False,
    wait: bool = False,
    out: TextIO | None = None,
) -> int:
    """Submit ``jobs`` (``scripts.sweep.Job``s) not finished and not queued as one array; with
    ``wait``, return when every task has left the queue, one line per run as it ends. Returns
    how many runs ended without finishing (failed or stopped; 0 without ``wait``)."""
    out = out or sys.stdout
    res = resources(args, [job.config for job in jobs])
    queued = (
        (status.queue_states(_job_id(job.run_dir) for job in jobs) or {}) if not dry_run else {}
    )
    todo, skipped = [], []
    for job in jobs:
        job_id = _job_id(job.run_dir)
        if done := job.finished():
            state = "diverged already" if done.get("diverged") else "finished already"
            skipped.append(f"{state}: {job.run_dir}")
        elif job_id in queued:
            skipped.append(
                f"in the queue already as job {job_id} ({queued[job_id]}): {job.run_dir}"
            )
        else:
            todo.append(job)
    for line in skipped:
        print(line, file=out)
    folder = Path(folder, ".submitit").absolute()
    params = res.parameters(max(len(todo), 1))  # (validated even when nothing is left)
    say = (
        f"{len(jobs)} runs, {len(todo)} to submit as one SLURM array: each {res.nodes} node(s) x "
        f"{res.ranks_per_node} rank(s), {res.gpus_per_node} GPU(s) and {res.cpus_per_task} "
        f"core(s) per rank, time limit {res.time_min} min"
    )
    print(say, file=out, flush=True)
    if not todo:
        return _wait(jobs, out) if wait and not dry_run else 0
    if dry_run:
        from submitit.slurm.slurm import _make_sbatch_string

        command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder / '%j'}"
        script = _make_sbatch_string(
            command=command, folder=folder / "%j", map_count=len(todo), **params
        )
        print("# the sbatch script (submitit's):", file=out)
        print(script, file=out)
        for i, job in enumerate(todo):
            print(f"# task {i}: {job.run_dir}: {shlex.join(_command(job))}", file=out)
        return 0
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=MAX_REQUEUES)
    executor.update_parameters(**params)
    cwd = os.getcwd()
    with executor.batch():
        handles = [executor.submit(TrainTask(_command(job), str(job.run_dir), cwd)) for job in todo]
    for job, handle in zip(todo, handles, strict=True):
        status.record_launch(
            job.run_dir,
            "slurm",
            _command(job),
            job_id=handle.job_id,
            submitit_log=str(handle.paths.stdout),
        )
    array = handles[0].job_id.split("_")[0]
    print(
        f"submitted job array {array} ({len(todo)} tasks); watch it: "
        f"python -m scripts.status {shlex.quote(str(folder.parent))}",
        file=out,
        flush=True,
    )
    return _wait(jobs, out) if wait else 0


def _command(job: Any) -> list[str]:
    """The run's command for one SLURM task (one rank): ``python -m <task>.train ...`` with
    this Python, which the nodes share."""
    return [sys.executable, *job.command[1:]]


def _job_id(run_dir: Path) -> str | None:
    launch = status.read_json(Path(run_dir) / status.LAUNCH_FILE) or {}
    return launch.get("job_id") if launch.get("launcher") == "slurm" else None


def _wait(jobs: Sequence[Any], out: TextIO, poll_s: float = 2.0) -> int:
    """Until no run of ``jobs`` is queued or running: a line per run as it ends; returns how
    many did not finish."""
    pending = {job.run_dir: job for job in jobs}
    unfinished, start = 0, time.time()
    total, width = len(jobs), len(str(len(jobs)))
    done = 0
    while pending:
        queue = status.queue_states(_job_id(d) for d in pending)
        if queue is None:  # squeue did not answer: ask again
            time.sleep(poll_s)
            continue
        for run_dir in list(pending):
            found = status.run_status(run_dir, queue)
            if found.state in ("running", "queued"):
                continue
            job = pending.pop(run_dir)
            done += 1
            unfinished += found.state != "finished"
            print(
                f"[{done:>{width}}/{total}] {job.label}: {found.state}: {found.detail}  "
                f"[{time.time() - start:.0f} s]",
                file=out,
                flush=True,
            )
        if pending:
            time.sleep(poll_s)
    return unfinished
