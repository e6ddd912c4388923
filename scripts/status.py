"""Where each run of a table stands, locally or on a SLURM cluster, and the table in one line.

::

    python -m scripts.status RUN_ROOT [RUN_ROOT ...] [--only STATE[,STATE]]

RUN_ROOT is any folder above run directories (``runs``, ``runs/cifar10``, one run). Each run
is one of:

* **finished**: ``results.json`` says so (its best metric is shown);
* **running**: a live process holds the run directory's lock on this machine, or its SLURM
  job is running; shown with its last completed epoch and update and the time of its last
  log line;
* **failed**: not running, and its log (``stdout.log``, which ``scripts.run_table``,
  ``--jobs-per-gpu`` and ``--launcher slurm`` keep in the run directory) ends in an error:
  that line is shown;
* **stopped**: started, not running, no error (killed, interrupted, or stopped on a signal):
  the same launch command resumes it;
* **queued**: its SLURM job is waiting in the queue (a requeued run too);
* **not started**: a launcher recorded it (``launch.json``) but it never started.

SLURM states come from one ``squeue`` call; without ``squeue`` (or off the cluster), runs are
judged from their directories alone. The last line counts the runs per state.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What a launcher records in a run directory when it queues the run (see record_launch).
LAUNCH_FILE = "launch.json"
#: Files that make a folder a run directory.
RUN_MARKERS = (LAUNCH_FILE, "config.json", "results.json", "checkpoint.pt")
STATES = ("finished", "running", "failed", "stopped", "queued", "not started")
#: squeue states of a job that is executing, and of one that waits to.
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
WAITING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "STOPPED"}

#: An error line: the ``error: ...`` of a clean exit, a traceback's last line, the shell's.
_ERROR = re.compile(r"^(error: .*|[\w.]*(Error|Exception|Failed|Lost|Differ)(: .*)?|Killed)$")
#: Where a start of the run begins or ends without an error: nothing before it counts.
_START = re.compile(r"^\[slurm\] job |.*: (starting|resuming)\b|.*\bstopped on SIG\w+ at update")
#: The SLURM task's last line: the training process's exit status.
_EXIT = re.compile(r"^\[slurm\] exit status (-?\d+)")
#: Exit statuses that are no failure: success, and a stop on a signal (engine.preemption).
_NOT_FAILED = (0, 75)


@dataclass(frozen=True)
class RunStatus:
    run_dir: Path
    state: str
    detail: str


def record_launch(run_dir: str | Path, launcher: str, command: Sequence[str], **extra: Any) -> None:
    """Record in ``run_dir/launch.json`` how the run was launched (atomically: temp + rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "launcher": launcher,
        "command": list(command),
        "cwd": os.getcwd(),
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        **extra,
    }
    tmp = run_dir / f".{LAUNCH_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / LAUNCH_FILE)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def queue_states(job_ids: Iterable[str | None]) -> dict[str, str] | None:
    """``{job id: squeue state}`` of the jobs (array tasks as ``A_i``) still in SLURM's queue,
    or None when ``squeue`` is missing or fails (runs are then judged from their directories)."""
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        # every job named left the queue long ago (purged): "Invalid job id specified"
        return {} if "Invalid job id" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        states[job] = state
    return states


def find_runs(roots: Iterable[str | Path]) -> list[Path]:
    """The run directories at or under each root (sorted, unique)."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"no such folder: {root}")
        for marker in RUN_MARKERS:
            found.update(p.parent for p in root.rglob(marker) if ".submitit" not in p.parts)
    return sorted(found)


def run_status(run_dir: Path, queue: Mapping[str, str], now: float | None = None) -> RunStatus:
    """One run's state and the detail that goes with it (see the module docstring)."""
    now = time.time() if now is None else now
    launch = read_json(run_dir / LAUNCH_FILE) or {}
    job = launch.get("job_id")
    in_queue = queue.get(job) if job else None
    results = read_json(run_dir / "results.json")
    started = (run_dir / "config.json").exists()
    holder = _lock_holder(run_dir)
    if in_queue in RUNNING_STATES or (holder and not in_queue):
        where = f"SLURM job {job}" if in_queue else f"PID {holder}"
        return RunStatus(run_dir, "running", f"{where}: {_progress(run_dir, now)}")
    if in_queue is not None:
        again = f"; {_done_so_far(run_dir)}, resumes" if started else ""
        return RunStatus(run_dir, "queued", f"SLURM job {job} {in_queue}{again}")
    if isinstance(results, dict) and results.get("finished"):
        return RunStatus(run_dir, "finished", _result_line(results))
    error = _last_error(run_dir, launch)
    if error:
        return RunStatus(run_dir, "failed", error)
    if started:
        return RunStatus(run_dir, "stopped", f"{_done_so_far(run_dir)}; launching again resumes")
    return RunStatus(run_dir, "not started", f"{launch.get('launcher', '?')} launch recorded")


def _lock_holder(run_dir: Path) -> str | None:
    """``PID on HOST`` of the live process holding the run directory's lock, if any. The lock
    file holds ``<pid> <host>`` while held and is emptied on release (``engine.lock``); a killed
    holder leaves it, so the PID is checked when the host is this one."""
    try:
        text = (run_dir / ".lock").read_text(encoding="utf-8").split()
    except OSError:
        return None
    if len(text) < 2 or not text[0].isdigit():
        return None
    pid, host = int(text[0]), text[1]
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
        return f"{pid}"
    return f"{pid} on {host} (not checked from here)"


def _history(run_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _done_so_far(run_dir: Path) -> str:
    history = _history(run_dir)
    config = read_json(run_dir / "config.json") or {}
    if not history:
        return "no epoch completed yet"
    last = history[-1]
    total = config.get("epochs")
    of = f"/{total}" if total else ""
    return f"epoch {last.get('epoch')}{of} done (update {last.get('update', '?'):,})"


def _progress(run_dir: Path, now: float) -> str:
    """The last completed epoch and the last log line with its age."""
    line, stamp = _last_log_line(run_dir / "train.log")
    when = ""
    if stamp is not None:
        when = f"; last log {stamp:%Y-%m-%d %H:%M:%S} ({_ago(now - stamp.timestamp())})"
    text = f": {line}" if line else ""
    return f"{_done_so_far(run_dir)}{when}{text}"


def _last_log_line(path: Path) -> tuple[str, datetime.datetime | None]:
    for line in reversed(_tail(path)):
        try:
            stamp = datetime.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            continue
        return line[20:].strip()[:160], stamp
    return "", None


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _tail(path: Path, size: int = 65536) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _last_error(run_dir: Path, launch: Mapping[str, Any]) -> str | None:
    """The error line that ended the run's last start, from its logs (rank 0's, the other
    ranks', the SLURM task's), or None when the last start did not end in an error."""
    logs = [run_dir / "stdout.log", *sorted(run_dir.glob("stdout.rank*.log"))]
    if launch.get("submitit_log"):
        logs.append(Path(launch["submitit_log"]))
    for log in logs:
        status = None
        for line in reversed(_tail(log)):
            line = line.strip()
            if exit_line := _EXIT.match(line):
                if int(exit_line[1]) in _NOT_FAILED:
                    break
                status = status or line
            elif _START.match(line):
                break
            elif _ERROR.match(line):
                return line[:300]
        if status:
            return status
    return None


def _result_line(results: Mapping[str, Any]) -> str:
    metric = results.get("metric", "")
    best = results.get("best") or {}
    value = best.get(metric)
    shown = f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"
    epochs = results.get("epochs_completed")
    return f"{metric} {shown} (best epoch {best.get('epoch')}), {epochs} epochs"


def table_line(statuses: Sequence[RunStatus]) -> str:
    counts = Counter(s.state for s in statuses)
    parts = ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state])
    done = counts["finished"]
    share = f" ({100 * done / len(statuses):.0f}% finished)" if statuses else ""
    return f"{len(statuses)} runs: {parts or 'none found'}{share}"


def statuses(roots: Iterable[str | Path]) -> list[RunStatus]:
    runs = find_runs(roots)
    launches = {run: read_json(run / LAUNCH_FILE) or {} for run in runs}
    queue = queue_states(x.get("job_id") for x in launches.values())
    return [run_status(run, queue or {}) for run in runs]


def main(argv: Sequence[str] | None = None) -> None:
    from engine import cli

    p = cli.ArgumentParser(prog="python -m scripts.status", description=__doc__)
    p.add_argument("roots", nargs="+", metavar="RUN_ROOT", help="a folder of run directories")
    p.add_argument("--only", metavar="STATE[,STATE]", help=f"show these states: {STATES}")
    args = p.parse_args(argv)
    only = set(STATES)
    if args.only:
        only = {x.strip() for x in args.only.split(",")}
        unknown = only - set(STATES)
        if unknown:
            raise ValueError(f"--only: unknown state(s) {sorted(unknown)}; states: {STATES}")
    found = statuses(args.roots)
    width = max((len(s.state) for s in found), default=0)
    for s in found:
        if s.state in only:
            print(f"{s.state:<{width}}  {s.run_dir}: {s.detail}")
    print(table_line(found))


if __name__ == "__main__":
    from engine import cli

    cli.main(main)
