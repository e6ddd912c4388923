"""Several training runs side by side on each GPU: what ``scripts.sweep --jobs-per-gpu N`` does.

One ResNet-110 run at batch 128 leaves most of a large GPU idle (its kernels are small and the
host launches them one by one), so ``--jobs-per-gpu N`` keeps N runs going on every GPU. The
GPUs are ``CUDA_VISIBLE_DEVICES``' entries when it is set, else every GPU torch sees; with
``--gpus G`` per run they are taken G at a time. Each run is an ordinary training process
(its own command line, seed and run directory) started with ``CUDA_VISIBLE_DEVICES`` set to its
slot's GPUs, so its numbers are those it would have alone: nothing is shared but the device.
When a run ends, the next one of the table takes its slot; consecutive runs go to different
GPUs first. A run's output goes to ``<run dir>/stdout.log``; one line per start and end here.
The first run that fails stops the sweep: no new run starts, the others are stopped (each
resumes from its last checkpoint when the sweep is run again), and its log's last lines are
printed.

Host threads: each run gets ``OMP_NUM_THREADS`` = CPU cores / runs at a time (unless set), as
``torchrun`` does for its ranks, so N x GPUs processes do not oversubscribe the CPU.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol


class Job(Protocol):
    command: list[str]
    run_dir: Path

    @property
    def label(self) -> str: ...


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """``CUDA_VISIBLE_DEVICES``' entries if set, else ``0 .. torch.cuda.device_count() - 1``."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [x.strip() for x in listed.split(",") if x.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slots(gpus: Sequence[str], per_gpu: int, gpus_per_run: int = 1) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` of every slot: the GPUs in groups of ``gpus_per_run``, each
    group ``per_gpu`` times, ordered so that consecutive slots are on different groups."""
    if per_gpu < 1:
        raise ValueError(f"--jobs-per-gpu must be >= 1, got {per_gpu}")
    if gpus_per_run < 1:
        raise ValueError("--jobs-per-gpu needs GPUs: --gpus must be >= 1")
    groups = [
        ",".join(gpus[i : i + gpus_per_run])
        for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)
    ]
    if not groups:
        raise ValueError(
            f"--gpus {gpus_per_run} per run, but {len(gpus)} GPU(s) are visible "
            f"({', '.join(gpus) or 'none'}; CUDA_VISIBLE_DEVICES picks them)"
        )
    return [group for _ in range(per_gpu) for group in groups]


def run_jobs(
    jobs: Sequence[Job],
    slot_gpus: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    start: Callable[..., Any] = subprocess.Popen,
    poll_s: float = 0.2,
    out: Any = None,
) -> int:
    """Run ``jobs`` in order, at most one per slot at a time; returns 0, or the exit status of
    the first run that failed (the sweep stops there)."""
    out = out or sys.stdout
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(slot_gpus))))
    free: deque[int] = deque(range(len(slot_gpus)))
    todo = deque(enumerate(jobs, 1))
    running: dict[int, tuple[Any, int, Job, float, Any]] = {}  # slot -> (proc, i, job, t, log)
    total, failed = len(jobs), 0

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        while todo or running:
            while todo and free and not failed:
                slot = free.popleft()
                i, job = todo.popleft()
                job.run_dir.mkdir(parents=True, exist_ok=True)
                log = open(job.run_dir / "stdout.log", "a", encoding="utf-8")  # closed when it ends
                gpus = slot_gpus[slot]
                proc = start(
                    job.command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**env, "CUDA_VISIBLE_DEVICES": gpus},
                )
                running[slot] = (proc, i, job, time.perf_counter(), log)
                say(f"[{i}/{total}] GPU {gpus}: {job.label}: {shlex.join(job.command)}")
            if failed and todo:
                todo.clear()
            done = [s for s, (proc, *_) in running.items() if proc.poll() is not None]
            if not done:
                time.sleep(poll_s)
                continue
            for slot in done:
                proc, i, job, tic, log = running.pop(slot)
                log.close()
                code = proc.returncode
                if code == 0:
                    say(f"[{i}/{total}] {job.label}: done in {time.perf_counter() - tic:.0f} s")
                elif failed:
                    say(f"[{i}/{total}] {job.label}: stopped (resumes on the next start)")
                else:
                    say(
                        f"[{i}/{total}] {job.label}: FAILED (exit status {code}); the end of "
                        f"{job.run_dir / 'stdout.log'}:"
                    )
                    failed = code if 0 < code < 128 else 1
                    tail = (job.run_dir / "stdout.log").read_text(errors="replace")
                    say("\n".join("    " + x for x in tail.splitlines()[-8:]))
                    _stop(running.values())
                free.append(slot)
    except BaseException:  # Ctrl-C here: stop the runs now (they resume on the next start)
        _stop(running.values())
        raise
    return failed


def _stop(running: Any) -> None:
    for proc, *_ in list(running):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, *_ in list(running):
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
