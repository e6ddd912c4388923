"""Watching a run (docs/run_directory.md): log lines with elapsed time, throughput and ETA also
when the output goes to a file, and TensorBoard scalars per log point on the update axis with
the learning rate the optimizer really applied (Apollo's and AdaHessian's own warmup)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import apollo_optim as optim
from engine.optimization import applied_lr
from tests.engine.toy import train as toy

ROOT = Path(__file__).resolve().parents[2]
TOY = str(Path(__file__).parent / "toy" / "toy.yaml")
#: The toy table's Apollo row: lr 0.01 after 5 warmup updates from 1e-4.
APOLLO = {"lr": 0.01, "warmup": 5, "init_lr": 1e-4}


def argv(out: Path, *extra: str, row: str = "Apollo") -> list[str]:
    args = ["--config", TOY, "--row", row, "--schedule", "cosine", "--out-dir", str(out)]
    return [*args, "log_every=3", *extra]


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard events: tag -> [(step, value), ...]."""
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_a_run_piped_to_a_file_logs_elapsed_throughput_and_eta(tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "stdout.txt"
    with open(log, "w") as f:
        cmd = [sys.executable, "-m", "tests.engine.toy.train", *argv(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no progress bar
    lines = [x for x in log.read_text().splitlines() if "(update " in x]
    # 8 updates an epoch, a log point every 3 into it: updates 3, 6, then 11, 14
    assert [x.split("(update ")[1].split(")")[0] for x in lines] == ["3", "6", "11", "14"]
    for line in lines:
        assert " | loss " in line and " | lr " in line and " | grad norm " in line
        assert " samples/s | elapsed 0:00:0" in line and ", ETA epoch 0:00:0" in line
        assert ", run 0:00:0" in line
    assert lines == [x for x in (out / "train.log").read_text().splitlines() if "(update " in x]


def test_tensorboard_has_per_update_scalars_with_the_applied_lr(tmp_path: Path) -> None:
    out = tmp_path / "run"
    toy.main(argv(out))
    tb = scalars(out)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"):
        assert [step for step, _ in tb[tag]] == [3, 6, 11, 14], tag
    # Apollo's own warmup (the lr of the step with count t is init + (lr - init) * t / 5),
    # then the cosine schedule's lr of epoch 2 (halfway from 0.01 to last_lr 0.001)
    warm = optim.lr_at(2, APOLLO["lr"], "constant", warmup=5, init_lr=APOLLO["init_lr"])
    want = [warm, 0.01, 0.0055, 0.0055]
    assert [v for _, v in tb["train/lr"]] == pytest.approx(want, rel=1e-6)
    assert tb["train/lr"][0][1] < 0.01 / 2  # not the group's lr (0.01): the warmup's
    assert all(v > 0 for _, v in tb["train/grad_norm"])
    # per epoch, on the epoch axis, without the schedule's lr
    assert [step for step, _ in tb["test_loss"]] == [1, 2] and "lr" not in tb


def test_a_run_counted_in_updates_is_drawn_on_the_update_axis(tmp_path: Path) -> None:
    out = tmp_path / "run"
    toy.main(argv(out, "epochs=null", "--max-updates", "11", "schedule.unit=update"))
    tb = scalars(out)
    assert [step for step, _ in tb["test_loss"]] == [8, 11]  # epochs of 8 and 3 updates
    assert [step for step, _ in tb["train/loss"]] == [3, 6, 11]


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph:UserWarning")
@pytest.mark.parametrize("name", ["apollo", "adahessian", "sgd"])
def test_applied_lr_follows_the_optimizers_own_warmup(name: str) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    kwargs = {"lr": 0.1, "warmup": 4, "init_lr": 0.001} if name != "sgd" else {"lr": 0.1}
    opt = optim.create(name, [p], **kwargs)
    applied = []
    for _ in range(6):
        loss = (p**2).sum()
        loss.backward(create_graph=optim.get(name).needs_create_graph)
        opt.step()
        opt.zero_grad(set_to_none=True)
        applied.append(applied_lr(opt))
    if name == "sgd":
        assert applied == [0.1] * 6
    else:
        want = [optim.lr_at(t, 0.1, "constant", warmup=4, init_lr=0.001) for t in range(6)]
        assert applied == pytest.approx(want) and applied[0] == pytest.approx(0.001)
        assert len(opt.state_dict()["state"]) == 1  # read without touching the state
