"""The run directory (engine.run) through a toy task (tests/engine/toy/): one writer,
never another run's results lost, length changes, bad values up front, damaged checkpoints,
full disks, keep-last, update-bounded runs with gradient accumulation, mid-epoch resume."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import checkpoint
from engine.lock import RunDirLock
from tests.engine.toy import train as toy_task
from tests.helpers import fails as one_error_line
from tests.helpers import files, history, initial_parameters, model_digest, unmoved

ROOT = Path(__file__).resolve().parents[2]
TOY = str(Path(__file__).parent / "toy" / "toy.yaml")


def argv(out: Path, *extra: str, row: str = "SGD", epochs: int = 2) -> list[str]:
    return [
        "--config",
        TOY,
        "--row",
        row,
        "--schedule",
        "cosine",
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        str(epochs),
        "--max-steps-per-epoch",
        "2",
        *extra,
    ]


def fails(args: list[str], capsys) -> str:
    return one_error_line(toy_task.main, args, capsys)


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    holder = RunDirLock(out)  # what a live run holds while it trains
    holder.acquire()
    try:
        err = fails(argv(out), capsys)
        assert f"{out} is in use by another run (PID {os.getpid()}" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.release()
    assert toy_task.main(argv(out))["finished"]


def test_a_run_in_another_process_holds_the_directory_until_it_dies(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = (
        "import sys; from pathlib import Path; from engine.lock import RunDirLock; "
        "RunDirLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); sys.stdin.read()"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert other.stdout.readline() == "locked\n"
        assert f"is in use by another run (PID {other.pid} on " in fails(argv(out), capsys)
    finally:
        other.kill()  # SIGKILL: no chance to release anything
        other.wait()
    assert toy_task.main(argv(out))["finished"]
    assert f"locked by PID {other.pid} on " in (out / "train.log").read_text()


def test_a_dead_runs_lock_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("999999999 elsewhere\n")  # its holder was killed: no flock held
    (out / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"")  # and left a temp file behind
    assert toy_task.main(argv(out))["finished"]
    assert (
        "was locked by PID 999999999 on elsewhere, which ended" in (out / "train.log").read_text()
    )
    assert not list(out.glob("*.tmp")) and (out / ".lock").read_text() == ""


def test_another_runs_results_are_never_overwritten(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    toy_task.main(argv(out, epochs=1))
    (out / "checkpoint.pt").unlink()
    before = files(out)
    err = fails(argv(out, row="Adam", epochs=1), capsys)
    assert f"{out} holds the results of another run (optimizer:" in err
    err = fails(argv(out, epochs=3), capsys)  # the same row, but a longer run: another run too
    assert "epochs: 1 -> 3" in err
    assert files(out) == before
    assert toy_task.main(argv(out, epochs=1))["finished"]  # the same run again: trained again


def test_length_changes_continue_only_where_nothing_done_changes(tmp_path, capsys) -> None:
    # cosine sized by --epochs: 1 epoch then 2 would not be a 2-epoch run
    sized = tmp_path / "sized"
    toy_task.main(argv(sized, epochs=1))
    before = files(sized)
    err = fails(argv(sized, epochs=2), capsys)
    assert "epochs=1 whose cosine schedule is sized by it; epochs=2 would not continue it" in err
    assert files(sized) == before
    # pinned cosine: the continuation equals the longer run asked for from the start
    pin = "schedule.total_steps=2"
    toy_task.main(argv(tmp_path / "straight", pin, epochs=2))
    toy_task.main(argv(tmp_path / "cont", pin, epochs=1))
    results = toy_task.main(argv(tmp_path / "cont", pin, epochs=2))
    assert results["finished"] and results["epochs_completed"] == 2
    assert model_digest(tmp_path / "cont") == model_digest(tmp_path / "straight")
    # shorter than what was trained: refused, not counted as finished
    err = fails(argv(tmp_path / "cont", pin, epochs=1), capsys)
    assert "has trained 2 epochs, more than epochs=1" in err


@pytest.mark.parametrize(
    "bad",
    [
        ("--max-steps-per-epoch", "0"),
        ("--max-steps-per-epoch", "-1"),
        ("--epochs", "0"),
        ("update_freq=0",),
        ("keep_last=-1",),
    ],
)
def test_bad_counts_are_refused_up_front(bad: tuple[str, ...], tmp_path, capsys) -> None:
    args = argv(tmp_path / "o")[:-2]  # without --max-steps-per-epoch 2
    name = bad[0].lstrip("-").replace("-", "_").split("=")[0]
    assert f"{name} must be" in fails([*args, *bad], capsys)
    assert not (tmp_path / "o").exists()


def test_an_out_dir_that_is_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "o").write_text("a file")
    assert f"--out-dir {tmp_path / 'o'} is a file" in fails(argv(tmp_path / "o"), capsys)


def test_a_damaged_checkpoint_stops_the_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    toy_task.main(argv(out, epochs=1))
    ckpt = out / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    weights = checkpoint.load(ckpt)["model"]["0.weight"]  # a tensor's bytes in the file
    at = data.find(weights.numpy().tobytes()[:64]) + 16
    data[at] ^= 0x10
    ckpt.write_bytes(bytes(data))
    before = files(out)
    assert f"damaged checkpoint {ckpt}" in fails(argv(out, epochs=1), capsys)
    assert files(out) == before


def test_a_foreign_checkpoint_or_a_read_only_directory_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": {}, "epoch": 3}, out / "checkpoint.pt")  # a dict, not this project's
    assert f"{out / 'checkpoint.pt'} is not a checkpoint of this project" in fails(
        argv(out), capsys
    )
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    (tmp_path / "ro").mkdir()
    err = fails(argv(tmp_path / "ro"), capsys)
    assert f"cannot write to run directory {tmp_path / 'ro'}: Read-only file system" in err


def test_the_number_of_ranks_changes(tmp_path: Path, capsys) -> None:
    """At an epoch end: resumed with a warning (reseeded ranks); mid-epoch: refused."""
    out = tmp_path / "run"
    toy_task.main(argv(out, "schedule.total_steps=2", epochs=1))
    state = checkpoint.load(out / "checkpoint.pt")
    state["ranks"] = state["ranks"] * 2  # as if written by two ranks
    checkpoint.save(out / "checkpoint.pt", state)
    assert toy_task.main(argv(out, "schedule.total_steps=2", epochs=2))["finished"]
    assert (
        "checkpoint written by 2 rank(s), resuming on 1: same global batch, different "
        "random draws" in (out / "train.log").read_text()
    )
    state = checkpoint.load(out / "checkpoint.pt")
    state.update(ranks=state["ranks"] * 2, position=1, epoch=1)
    checkpoint.save(out / "checkpoint.pt", state)
    err = fails(argv(out, "schedule.total_steps=2", epochs=2), capsys)
    assert "stopped mid-epoch with 2 rank(s); resume it with the same number, not 1" in err


def test_keep_last_epoch_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    toy_task.main(argv(out, "keep_last=2", epochs=4))
    assert [p.name for p in checkpoint.epoch_paths(out)] == [
        "checkpoint_epoch3.pt",
        "checkpoint_epoch4.pt",
    ]
    assert (out / "checkpoint.pt").read_bytes() == checkpoint.epoch_path(out, 4).read_bytes()
    averaged = checkpoint.average(checkpoint.epoch_paths(out))
    assert averaged["epoch"] == 4 and averaged["averaged_from"][0].endswith("epoch3.pt")


def test_update_bounded_run_with_accumulation_resumes_bit_exactly(tmp_path, monkeypatch) -> None:
    """max_updates=5 at 2 updates per epoch: epochs of 2, 2, 1 updates, each update two
    micro-batches with DDP's sync on the last only; a per-update cosine; killed after epoch 1."""
    extra = ("max_updates=5", "update_freq=2", "schedule.unit=update", "--epochs", "9")
    syncs: list[bool] = []
    real_no_sync = toy_task.distributed.no_sync
    monkeypatch.setattr(
        toy_task.distributed,
        "no_sync",
        lambda model, skip_sync: syncs.append(skip_sync) or real_no_sync(model, skip_sync),
    )
    straight = toy_task.main(argv(tmp_path / "a", *extra, "log_every=1"))
    assert syncs == [True, False] * 5
    log = (tmp_path / "a" / "train.log").read_text()
    assert "epoch 1 step 2/2 (update 2) | loss " in log
    assert "epoch 3 step 1/1 (update 5) | loss " in log
    assert [r["update"] for r in history(tmp_path / "a")] == [2, 4, 5]
    assert straight["finished"] and straight["updates_completed"] == 5
    assert straight["final"]["train_samples"] == 8  # one update: 2 micro-batches of 4 pairs

    real_save = checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        toy_task.main(argv(tmp_path / "b", *extra))
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert toy_task.main(argv(tmp_path / "b", *extra))["finished"]
    assert model_digest(tmp_path / "a") == model_digest(tmp_path / "b")
    assert history(tmp_path / "a") == history(tmp_path / "b")


def test_a_run_killed_mid_epoch_resumes_to_the_same_numbers(tmp_path, monkeypatch) -> None:
    """Killed right after the mid-epoch checkpoint of update 6 (epoch 2, step 2 of 4): the
    resumed run restores its partial sums and dropout draws and ends bit-identical."""
    extra = ("checkpoint_every=3", "--max-steps-per-epoch", "4")
    toy_task.main(argv(tmp_path / "a", *extra))
    real_save = checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if state["update"] == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        toy_task.main(argv(tmp_path / "b", *extra))
    monkeypatch.setattr(checkpoint, "save", real_save)
    state = checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert (state["epoch"], state["position"]) == (1, 2) and state["ranks"][0]["sums"]["count"]
    toy_task.main(argv(tmp_path / "b", *extra))
    assert "resuming epoch 2 at step 2" in (tmp_path / "b" / "train.log").read_text()
    assert model_digest(tmp_path / "a") == model_digest(tmp_path / "b")
    assert history(tmp_path / "a") == history(tmp_path / "b")


def test_a_run_lowers_the_loss_and_moves_every_weight(tmp_path, monkeypatch) -> None:
    initial = initial_parameters(monkeypatch)
    toy_task.main([*argv(tmp_path, epochs=3)[:-2], "--max-steps-per-epoch", "8"])
    h = history(tmp_path)
    assert h[0]["train_loss"] > h[1]["train_loss"] > h[2]["train_loss"]
    assert h[0]["test_loss"] > h[2]["test_loss"]
    assert not unmoved(initial[0], checkpoint.load(tmp_path / "checkpoint.pt")["model"])
