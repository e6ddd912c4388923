"""scripts.sweep --jobs-per-gpu: N runs side by side per GPU (a fake GPU list on the CPU); a
run's numbers do not depend on its neighbours."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from classification import train
from scripts import gpu_slots, sweep
from tests.classification.conftest import write_cifar

ROOT = Path(__file__).resolve().parents[2]
# Each fake run records when it ran and on which GPU, then sleeps a little.
RECORD = (
    "import json, os, sys, time; t = time.time(); time.sleep(0.4); "
    "open(sys.argv[1], 'w').write(json.dumps([t, time.time(), "
    "os.environ['CUDA_VISIBLE_DEVICES'], os.environ['OMP_NUM_THREADS']]))"
)


def fake_job(folder: Path, name: str, code: str = RECORD) -> SimpleNamespace:
    run_dir = folder / name
    return SimpleNamespace(
        command=[sys.executable, "-c", code, str(run_dir / "ran.json")], run_dir=run_dir, label=name
    )


def test_slots_take_the_gpus_in_groups_round_robin() -> None:
    assert gpu_slots.slots(["0", "1"], 2) == ["0", "1", "0", "1"]
    assert gpu_slots.slots(["4", "5", "6", "7", "8"], 1, 2) == ["4,5", "6,7"]
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5"}) == ["3", "5"]
    with pytest.raises(ValueError, match="--gpus 2 per run, but 1 GPU"):
        gpu_slots.slots(["0"], 2, 2)
    with pytest.raises(ValueError, match="needs GPUs: --gpus must be >= 1"):
        gpu_slots.slots(["0"], 2, 0)


def test_at_most_n_runs_per_gpu_side_by_side(tmp_path: Path) -> None:
    jobs = [fake_job(tmp_path, f"run{i}") for i in range(7)]
    out = io.StringIO()
    assert gpu_slots.run_jobs(jobs, gpu_slots.slots(["7", "9"], 2), out=out, poll_s=0.02) == 0
    ran = [json.loads((j.run_dir / "ran.json").read_text()) for j in jobs]
    assert {r[2] for r in ran} == {"7", "9"} and all(r[3] for r in ran)
    events = sorted([(r[0], 1, r[2]) for r in ran] + [(r[1], -1, r[2]) for r in ran])
    busy: dict[str, int] = {"7": 0, "9": 0}
    peak = 0
    for _, step, gpu in events:  # ends sort before starts at equal times
        busy[gpu] += step
        assert busy[gpu] <= 2
        peak = max(peak, sum(busy.values()))
    assert peak > 2  # side by side, on both GPUs
    assert out.getvalue().count(": done in ") == 7


def test_the_first_failure_stops_the_sweep(tmp_path: Path) -> None:
    slow = "import time; time.sleep(30)"
    jobs = [
        fake_job(tmp_path, "slow", slow),
        fake_job(tmp_path, "bad", "import sys; print('error: no data'); sys.exit(3)"),
        *(fake_job(tmp_path, f"later{i}") for i in range(3)),
    ]
    out = io.StringIO()
    assert gpu_slots.run_jobs(jobs, ["0", "0"], out=out, poll_s=0.02) == 3
    text = out.getvalue()
    assert "bad: FAILED (exit status 3)" in text and "    error: no data" in text
    assert "slow: stopped (resumes on the next start)" in text
    assert not any((tmp_path / f"later{i}").exists() for i in range(3))


@pytest.mark.slow  # two training processes: ~10 s on an idle 2-core machine
def test_runs_side_by_side_give_the_numbers_they_give_alone(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Two tiny CIFAR runs at once on one (fake) GPU == each run alone, in this process."""
    data = write_cifar(tmp_path / "data")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setattr(sweep, "_visible_gpus", lambda: 1)  # torch would see none here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    tiny = [
        "--device",
        "cpu",
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--workers",
        "0",
        "model=cifar_resnet8",
        "batch_size=8",
        "eval_batch_size=10",
        "augmentation.crop=16",
    ]
    config = str(ROOT / "configs/cifar10.yaml")
    subset = ["--rows", "SGD,Apollo", "--schedules", "milestone", "--seeds", "1"]
    sweep.main(
        [
            "--config",
            config,
            *subset,
            "--jobs-per-gpu",
            "2",
            "--out-root",
            str(tmp_path / "a"),
            "--",
            *tiny,
        ]
    )
    assert "up to 2 at a time on GPU(s) 5" in capsys.readouterr().out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for job in sweep.plan(
            config,
            rows=["SGD", "Apollo"],
            schedules=["milestone"],
            seeds=[1],
            out_root=tmp_path / "b",
            extra=tiny,
        ):
            train.main(job.command[3:])
    finally:
        torch.set_num_threads(threads)
    for row in ("SGD", "Apollo"):
        together, alone = (
            json.loads(next((tmp_path / x).rglob(f"{row}/*/seed1/results.json")).read_text())
            for x in ("a", "b")
        )
        assert together["model_sha256_by_rank"] == alone["model_sha256_by_rank"]
        assert together["final"]["train_loss"] == alone["final"]["train_loss"]
