"""The run directory through classification.train: one writer, never another run's results
lost, length changes, bad values up front, damaged checkpoints, full disks, keep-last,
update-bounded runs with gradient accumulation (the digits task: each run takes ~1 s)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from classification import train
from engine import checkpoint, cli
from engine.lock import RunDirLock

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")


def argv(out: Path, *extra: str, row: str = "SGD", epochs: int = 2) -> list[str]:
    return [
        "--config",
        QUICK,
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
    """One ``error:`` line on stderr and exit status 2, as the command line shows it."""
    with pytest.raises(SystemExit) as exc:
        cli.main(train.main, args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}


def model_digest(out: Path) -> str:
    return checkpoint.state_digest(checkpoint.load(out / "checkpoint.pt")["model"])


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
    assert train.main(argv(out))["finished"]


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
    assert train.main(argv(out))["finished"]
    assert f"locked by PID {other.pid} on " in (out / "train.log").read_text()


def test_a_dead_runs_lock_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("999999999 elsewhere\n")  # its holder was killed: no flock held
    (out / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"")  # and left a temp file behind
    assert train.main(argv(out))["finished"]
    assert (
        "was locked by PID 999999999 on elsewhere, which ended" in (out / "train.log").read_text()
    )
    assert not list(out.glob("*.tmp")) and (out / ".lock").read_text() == ""


def test_another_runs_results_are_never_overwritten(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    train.main(argv(out, epochs=1))
    (out / "checkpoint.pt").unlink()
    before = files(out)
    err = fails(argv(out, row="Adam", epochs=1), capsys)
    assert f"{out} holds the results of another run (optimizer:" in err
    err = fails(argv(out, epochs=3), capsys)  # the same row, but a longer run: another run too
    assert "epochs: 1 -> 3" in err
    assert files(out) == before
    assert train.main(argv(out, epochs=1))["finished"]  # the same run again: trained again


def test_length_changes_continue_only_where_nothing_done_changes(tmp_path, capsys) -> None:
    # cosine sized by --epochs: 1 epoch then 2 would not be a 2-epoch run
    sized = tmp_path / "sized"
    train.main(argv(sized, epochs=1))
    before = files(sized)
    err = fails(argv(sized, epochs=2), capsys)
    assert "epochs=1 whose cosine schedule is sized by it; epochs=2 would not continue it" in err
    assert files(sized) == before
    # pinned cosine: the continuation equals the longer run asked for from the start
    pin = "schedule.total_steps=2"
    train.main(argv(tmp_path / "straight", pin, epochs=2))
    train.main(argv(tmp_path / "cont", pin, epochs=1))
    results = train.main(argv(tmp_path / "cont", pin, epochs=2))
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
    train.main(argv(out, epochs=1))
    ckpt = out / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    weights = checkpoint.load(ckpt)["model"]["fc.weight"]  # a tensor's bytes in the file
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
    train.main(argv(out, "schedule.total_steps=2", epochs=1))
    state = checkpoint.load(out / "checkpoint.pt")
    state["ranks"] = state["ranks"] * 2  # as if written by two ranks
    checkpoint.save(out / "checkpoint.pt", state)
    assert train.main(argv(out, "schedule.total_steps=2", epochs=2))["finished"]
    assert (
        "checkpoint written by 2 rank(s), resuming on 1: same global batch, different "
        "random draws" in (out / "train.log").read_text()
    )
    state = checkpoint.load(out / "checkpoint.pt")
    state.update(ranks=state["ranks"] * 2, position=1, epoch=1)
    checkpoint.save(out / "checkpoint.pt", state)
    err = fails(argv(out, "schedule.total_steps=2", epochs=2), capsys)
    assert "stopped mid-epoch with 2 rank(s); resume it with the same number, not 1" in err


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save, calls = checkpoint.save, []

    def save_on_a_full_disk(path, state):
        calls.append(path)
        if len(calls) == 2:
            raise checkpoint.WriteError(f"cannot write {path}: No space left on device")
        real_save(path, state)

    monkeypatch.setattr(checkpoint, "save", save_on_a_full_disk)
    err = fails(argv(out, epochs=2), capsys)
    assert f"cannot write {out / 'checkpoint.pt'}: No space left on device" in err
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1
    # and the real writer turns the OSError into that line
    monkeypatch.setattr(checkpoint, "save", real_save)
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
    )
    assert "No space left on device" in fails(argv(out, epochs=2), capsys)
    monkeypatch.undo()
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1


def test_keep_last_epoch_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train.main(argv(out, "keep_last=2", epochs=4))
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
    real_no_sync = train.distributed.no_sync
    monkeypatch.setattr(
        train.distributed,
        "no_sync",
        lambda model, skip_sync: syncs.append(skip_sync) or real_no_sync(model, skip_sync),
    )
    straight = train.main(argv(tmp_path / "a", *extra, "log_every=1"))
    assert syncs == [True, False] * 5
    log = (tmp_path / "a" / "train.log").read_text()
    assert "epoch 1 step 2/2 train loss" in log and "epoch 3 step 1/1 train loss" in log
    assert [r["update"] for r in _history(tmp_path / "a")] == [2, 4, 5]
    assert straight["finished"] and straight["updates_completed"] == 5
    assert straight["final"]["train_samples"] == 32  # one update: 2 micro-batches of 16 digits

    real_save = checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(tmp_path / "b", *extra))
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert train.main(argv(tmp_path / "b", *extra))["finished"]
    assert model_digest(tmp_path / "a") == model_digest(tmp_path / "b")
    timing = ("images_per_s", "epoch_time_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in _history(tmp_path / "a")] == [
        {k: v for k, v in r.items() if k not in timing} for r in _history(tmp_path / "b")
    ]


def _history(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_loop_reads_metrics_only_at_epoch_ends(tmp_path: Path, monkeypatch) -> None:
    """No .item()/float()/.tolist()/.cpu() per update: the host reads are the same for 2
    updates per epoch as for 6 (they happen at the epoch's end and in evaluation)."""
    reads: list[str] = []
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, _counting(real, name, reads))

    def reads_in_one_epoch(steps: int) -> int:
        start = len(reads)
        real_epoch = train.train_one_epoch
        counted: list[int] = []

        def one_epoch(*args):
            before = len(reads)
            stats = real_epoch(*args)
            counted.append(len(reads) - before)
            return stats

        monkeypatch.setattr(train, "train_one_epoch", one_epoch)
        args = argv(tmp_path / f"s{steps}", epochs=1)
        train.main([*args[:-1], str(steps)])
        assert len(reads) > start
        return counted[0]

    assert reads_in_one_epoch(2) == reads_in_one_epoch(6)


def _counting(real, name: str, reads: list[str]):
    def wrapper(self, *args, **kwargs):
        reads.append(name)
        return real(self, *args, **kwargs)

    return wrapper


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA device syncs")
def test_no_device_sync_per_update_on_cuda(tmp_path: Path, sync_counts: list[int]) -> None:
    """torch.cuda.set_sync_debug_mode('warn') flags every synchronizing CUDA call: a training
    epoch of 6 updates makes as many as one of 2 (after a warm-up run: cuDNN's autotuning)."""
    for steps in (1, 2, 6):
        args = argv(tmp_path / f"s{steps}", epochs=1)
        args[args.index("--device") + 1] = "cuda"
        train.main([*args[:-1], str(steps)])
    assert sync_counts[1] == sync_counts[2], sync_counts
