"""``--launcher slurm`` against a real one-node SLURM cluster (tests/scripts/slurm_cluster.py):
a table as job arrays, requeue and the warning signal, a failing task, a two-rank run.

Without root (or apt) the cluster cannot be started and these skip with that reason; CI sets
``REQUIRE_SLURM_TESTS=1``, which turns the skip into a failure. The dry-run and option tests
need no cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts import slurm, status
from tests.scripts.slurm_cluster import Cluster, start_or_skip

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TIMING = ("images_per_s", "epoch_time_s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_or_skip(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def _env(cluster: Cluster | None = None) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    env["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    if cluster is not None:
        env["SLURM_CONF"] = str(cluster.conf)
    return env


def _run(cmd: list[str], cluster: Cluster | None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=_env(cluster), capture_output=True, text=True, timeout=600
    )


def _module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", name, *args]


def _table(stdout: str) -> list[str]:
    """The report's Markdown table (title and rows) as printed."""
    return [line for line in stdout.splitlines() if line.startswith(("|", "**"))]


def _history(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.2)


# -- no cluster needed --------------------------------------------------------------------------
def test_time_limits_in_slurm_formats() -> None:
    assert [slurm.minutes(x) for x in ("90", "1:30", "01:30:00", "1-00:00:00", "2-3")] == [
        90,
        2,
        90,
        1440,
        2 * 1440 + 180,
    ]
    for bad in ("", "1h", "-5", "0", "1:2:3:4"):
        with pytest.raises(ValueError, match="--time"):
            slurm.minutes(bad)


def test_dry_run_shows_the_sbatch_script_and_each_task() -> None:
    cmd = _module("scripts.sweep", "--table", "imagenet", "--rows", "SGD,Apollo")
    cmd += ["--schedules", "cosine", "--seed-list", "1", "--launcher", "slurm", "--dry-run"]
    cmd += ["--gpus-per-run", "8", "--nodes-per-run", "2", "--time", "2-00:00:00"]
    cmd += ["--partition", "gpu", "--account", "lab", "--qos", "high", "--mem", "480G"]
    cmd += ["--array-parallelism", "1", "--sbatch", "constraint=a100", "--sbatch", "exclusive"]
    cmd += ["--data-dir", "/shared/imagenet"]
    out = _run(cmd, None)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (
        "2 runs, 2 to submit as one SLURM array: each 2 node(s) x 8 rank(s), 8 GPU(s) and "
        "9 core(s) per rank, time limit 2880 min"
    )  # imagenet.yaml: 8 data workers per rank, + 1
    for option in (
        "--array=0-1%1",
        "--nodes=2",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=9",
        "--time=2880",
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--mem=480G",
        "--constraint=a100",
        "--exclusive",
        "--signal=USR2@90",
    ):
        assert f"#SBATCH {option}" in lines, option
    tasks = [line for line in lines if line.startswith("# task ")]
    assert len(tasks) == 2 and "-m classification.train --config" in tasks[0]
    assert "--row SGD --schedule cosine --seed 1" in tasks[0] and "torchrun" not in tasks[0]
    assert tasks[0].endswith("--data-dir /shared/imagenet --device cuda")
    assert not (ROOT / "runs" / "imagenet" / ".submitit").exists()  # nothing written


def test_bad_launcher_options_are_one_line() -> None:
    base = _module("scripts.sweep", "--table", "cifar10", "--launcher", "slurm", "--dry-run")
    for extra, message in (
        ([], "error: --launcher slurm needs --time"),
        (["--time", "10", "--gpus-per-run", "-1"], "error: --gpus-per-run must be >= 0"),
        (["--time", "10", "--sbatch", "=x"], "error: --sbatch '=x': expected KEY=VALUE"),
        (["--time", "10", "--jobs-per-gpu", "2"], "error: --jobs-per-gpu runs on this machine"),
    ):
        out = _run(base + extra, None)
        assert out.returncode == 2 and out.stderr.startswith(message), out.stderr


def test_the_task_gets_torch_distributed_variables_from_slurm(monkeypatch) -> None:
    import submitit

    for key, value in {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "42",
        "SLURM_NTASKS": "16",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "11",
        "SLURM_LOCALID": "3",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    env = slurm.rank_environment(submitit.JobEnvironment())
    assert {k: env[k] for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK")} == {
        "MASTER_ADDR": "gpu07",
        "RANK": "11",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "3",
    }
    assert env["LOCAL_WORLD_SIZE"] == "8" and 20000 <= int(env["MASTER_PORT"]) <= 60000
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert slurm.rank_environment(submitit.JobEnvironment()) == {}


def test_default_cores_follow_the_data_workers() -> None:
    args = argparse.Namespace(
        gpus_per_run=4,
        nodes_per_run=1,
        cpus_per_run=None,
        mem=None,
        time="60",
        partition=None,
        account=None,
        qos=None,
        array_parallelism=None,
        sbatch=[],
    )
    assert slurm.resources(args, [{"workers": 8}, {"workers": 2}]).cpus_per_task == 9
    args.cpus_per_run = 32
    assert slurm.resources(args, [{"workers": 8}]).cpus_per_task == 8  # 32 cores, 4 ranks


# -- against the cluster --------------------------------------------------------------------------
@pytest.mark.slow
def test_quickstart_as_job_arrays_prints_the_table_of_the_local_launcher(
    cluster: Cluster, tmp_path: Path
) -> None:
    args = ["--rows", "SGD,Apollo", "--seeds", "2", "--epochs", "2"]
    quickstart = ["bash", str(ROOT / "scripts" / "quickstart.sh")]
    local = _run([*quickstart, "--out-dir", "local", *args], cluster, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    on_slurm = _run(
        [*quickstart, "--out-dir", "cluster", *args, "--launcher", "slurm", "--time", "10"],
        cluster,
        cwd=tmp_path,
    )
    assert on_slurm.returncode == 0, on_slurm.stdout + on_slurm.stderr
    assert "submitted job array" in on_slurm.stdout
    assert _table(on_slurm.stdout) == _table(local.stdout) and len(_table(local.stdout)) == 5
    runs = sorted((tmp_path / "cluster" / "quickstart" / "current").glob("*/cosine/seed*"))
    assert len(runs) == 4
    for run in runs:  # each task's log in its run directory
        log = (run / "stdout.log").read_text()
        assert log.startswith("[slurm] job ") and log.endswith("[slurm] exit status 0\n")
        assert json.loads((run / status.LAUNCH_FILE).read_text())["launcher"] == "slurm"
    watch = _run(_module("scripts.status", "cluster/quickstart"), cluster, cwd=tmp_path)
    assert watch.stdout.splitlines()[-1] == "4 runs: 4 finished (100% finished)"
    again = _run(  # finished runs are skipped, as locally
        [
            *quickstart,
            "--out-dir",
            "cluster",
            *args,
            "--launcher",
            "slurm",
            "--time",
            "10",
            "--dry-run",
        ],
        cluster,
        cwd=tmp_path,
    )
    assert again.returncode == 0 and again.stdout.count("finished already: ") == 4
    assert "4 runs, 0 to submit as one SLURM array" in again.stdout
    assert "#SBATCH" not in again.stdout


@pytest.mark.slow
def test_requeue_and_the_warning_signal_resume_to_the_uninterrupted_numbers(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two identical runs as SLURM tasks; one is requeued (``scontrol requeue``: SIGTERM) after
    its second epoch, then sent submitit's warning signal (``scancel --signal=USR2``), which
    makes it checkpoint (at the update it stopped at, mid-epoch) and requeue itself; both end
    with the same numbers."""

    def submit(out: str) -> Path:
        cmd = _module("scripts.sweep", "--config", QUICKSTART, "--rows", "SGD")
        cmd += ["--seed-list", "1", "--epochs", "12", "--out-dir", out, "--launcher", "slurm"]
        done = _run([*cmd, "--gpus-per-run", "0", "--time", "10"], cluster, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return tmp_path / out / "quickstart" / "current" / "SGD" / "cosine" / "seed1"

    straight, run = submit("straight"), submit("interrupted")
    job = json.loads((run / status.LAUNCH_FILE).read_text())["job_id"]

    def epochs_done() -> int:
        path = run / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def log() -> str:
        return (run / "train.log").read_text() if (run / "train.log").exists() else ""

    _wait_for(lambda: epochs_done() >= 2, "two epochs")
    cluster.run("scontrol", "requeue", job)
    _wait_for(lambda: "stopped on SIGTERM" in log(), "the stop on SIGTERM")
    cluster.release_requeued(job)

    def resumes() -> int:  # at an epoch's end or mid-epoch
        return len(re.findall(r"resuming (after epoch|epoch \d+ at step)", log()))

    _wait_for(lambda: resumes() == 1, "the first resume")
    resumed_at = epochs_done()
    _wait_for(lambda: epochs_done() >= resumed_at + 2, "two more epochs")
    cluster.run("scancel", "--signal=USR2", job)
    _wait_for(lambda: "stopped on SIGUSR2" in log(), "the stop on SIGUSR2")
    cluster.release_requeued(job)
    cluster.wait_until_empty(timeout=240)
    assert resumes() == 2
    assert log().count(": checkpoint written at epoch") == 2  # each stop wrote one
    assert "[slurm] job " + job + " attempt 3" in (run / "stdout.log").read_text()
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    assert b["finished"] and b["epochs_completed"] == 12
    assert _history(run) == _history(straight)
    assert a["best"]["test_acc1"] == b["best"]["test_acc1"]
    assert a["model_sha256_by_rank"] == b["model_sha256_by_rank"]


@pytest.mark.slow
def test_a_failing_array_task_shows_as_failed_with_its_error_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    broken = tmp_path / "runs" / "quickstart" / "current" / "SGD" / "cosine" / "seed101"
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    cmd = _module("scripts.run_table", "--config", QUICKSTART, "--rows", "SGD", "--seeds", "2")
    cmd += ["--epochs", "1", "--out-dir", "runs", "--launcher", "slurm", "--time", "10"]
    out = _run(cmd, cluster, cwd=tmp_path)
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "error: 1 run(s) did not finish: python -m scripts.status runs/quickstart"
    )
    watch = _run(_module("scripts.status", "runs"), cluster, cwd=tmp_path).stdout.splitlines()
    assert watch[0].startswith("finished  runs/quickstart/current/SGD/cosine/seed1: test_acc1 ")
    assert watch[1] == (
        "failed    runs/quickstart/current/SGD/cosine/seed101: error: corrupt or unreadable "
        "checkpoint runs/quickstart/current/SGD/cosine/seed101/checkpoint.pt (UnpicklingError); "
        "move it away to start over"
    )
    assert watch[2] == "2 runs: 1 finished, 1 failed (50% finished)"


@pytest.mark.slow
def test_a_two_rank_run_takes_its_ranks_from_slurm(cluster: Cluster, tmp_path: Path) -> None:
    cmd = _module("scripts.sweep", "--config", QUICKSTART, "--rows", "SGD", "--seed-list", "1")
    cmd += ["--epochs", "1", "--out-dir", "runs", "--launcher", "slurm", "--gpus-per-run", "2"]
    cmd += ["--time", "10", "--wait", "--", "--device", "cpu"]  # the cluster's GPUs pretend
    out = _run(cmd, cluster, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "runs" / "quickstart" / "current" / "SGD" / "cosine" / "seed1"
    results = json.loads((run / "results.json").read_text())
    digests = results["model_sha256_by_rank"]
    assert results["finished"] and len(digests) == 2 and digests[0] == digests[1]
    config = json.loads((run / "config.json").read_text())
    assert config["provenance"]["hardware"]["world_size"] == 2
    assert "rank 1 of 2" in (run / "stdout.rank1.log").read_text()
