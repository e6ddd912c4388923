"""A one-node SLURM cluster for the tests: Debian's slurmctld, slurmd and munge, installed with
apt when missing (as root), started from a config written to a temporary folder, and stopped at
the end by the PIDs this module started.

The node is this machine, declared with at least 4 CPUs (``SlurmdParameters=config_overrides``)
so that a few one-core array tasks run side by side on a 2-core CI machine, and with two
pretend GPUs (gres ``gpu`` on ``/dev/null`` and ``/dev/zero``) so that ``--gpus-per-run 2``
starts a run as two SLURM tasks, two ranks (the runs themselves train on the CPU). ``ProctrackType=
proctrack/linuxproc`` and ``TaskPlugin=task/none`` need no cgroups, so this works in a
container. Without root (or apt), :func:`start_or_skip` skips with the reason, unless
``REQUIRE_SLURM_TESTS=1`` (CI sets it) turns that into a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")


def install() -> str | None:
    """Install the SLURM packages when missing; returns why they cannot be, or None."""
    if all(shutil.which(p) for p in PROGRAMS):
        return None
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it (apt) needs root"
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:  # a fresh image has no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:
        return f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-300:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The running cluster: ``env`` points SLURM's commands at it (``SLURM_CONF``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def write_config(self) -> None:
        f, host = self.folder, socket.gethostname().split(".")[0]
        for sub in ("state", "spool"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        cpus = max(4, os.cpu_count() or 1)
        (f / "gres.conf").write_text(
            f"NodeName={host} Name=gpu File=/dev/null\nNodeName={host} Name=gpu File=/dev/zero\n"
        )
        lines = [
            "ClusterName=apollotest",
            "GresTypes=gpu",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={f / 'munge.socket'}",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=1",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SlurmdParameters=config_overrides",
            "KillWait=10",
            "MinJobAge=600",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 Gres=gpu:2",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _daemon(self, *cmd: str) -> None:
        log = open(self.folder / f"{Path(cmd[0]).name}.out", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def start(self) -> None:
        f = self.folder
        f.chmod(0o755)  # munged wants the socket's folder searchable
        key = f / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self.write_config()
        self._daemon(
            "munged",
            "--foreground",
            "--force",
            f"--socket={f / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={f / 'munged.pid'}",
            f"--log-file={f / 'munged.log'}",
            f"--seed-file={f / 'munged.seed'}",
        )
        self._wait_for(lambda: (f / "munge.socket").exists(), "munged's socket")
        self._daemon("slurmctld", "-D", "-i")
        self._daemon("slurmd", "-D")
        self._wait_for(self._idle, "the node to come up (sinfo: idle)")

    def _idle(self) -> bool:
        out = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
        return out == "idle"

    def _wait_for(self, ready, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0].args[0]} exited early; see {self.folder}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}; see {self.folder}")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=60, check=check
        )

    def queue(self) -> list[str]:
        """``JOBID STATE`` of every job (array tasks one per line)."""
        return self.run("squeue", "-h", "-r", "-o", "%i %T").stdout.split("\n")[:-1]

    def wait_until_empty(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still in the queue after {timeout} s: {self.queue()}")
            time.sleep(0.5)

    def release_requeued(self, job_id: str, timeout: float = 120.0) -> None:
        """SLURM holds a requeued job for ~2 minutes (its BeginTime) so that the ended attempt
        can finish first; once that attempt's processes are gone, start the job now."""
        deadline = time.monotonic() + timeout
        while self._state(job_id) != "PENDING" or self._has_processes(job_id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} was not requeued within {timeout} s")
            time.sleep(0.3)
        time.sleep(1.0)  # the ended attempt's completion message reaches slurmctld first
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def _state(self, job_id: str) -> str:
        return self.run("squeue", "-h", "-o", "%T", "-j", job_id, check=False).stdout.strip()

    def _has_processes(self, job_id: str) -> bool:
        raw = self.run("squeue", "-h", "-o", "%A", "-j", job_id, check=False).stdout.strip()
        pids = self.run("scontrol", "listpids", raw or job_id, check=False)
        return pids.returncode == 0 and len(pids.stdout.splitlines()) > 1

    def stop(self) -> None:
        """Cancel what is left, then stop each daemon this cluster started, by PID."""
        with contextlib.suppress(Exception):
            jobs = [line.split()[0] for line in self.queue()]
            if jobs:
                self.run("scancel", *jobs, check=False)
                self.wait_until_empty(timeout=30)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def start_or_skip(folder: Path) -> Iterator[Cluster]:
    """The running cluster in ``folder``; skips the tests when it cannot be started (fails
    instead with ``REQUIRE_SLURM_TESTS=1``)."""
    reason = install()
    if reason is None and os.geteuid() != 0:
        reason = "slurmd must run as root to start jobs"
    if reason:
        if os.environ.get("REQUIRE_SLURM_TESTS") == "1":
            pytest.fail(f"REQUIRE_SLURM_TESTS=1 but {reason}")
        pytest.skip(reason)
    cluster = Cluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
