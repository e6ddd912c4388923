"""Faults of the translation commands: each ends in a correct run or one error line, with
nothing lost or half-written (kills, locks, swapped data files, full disks, bad settings)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine.checkpoint
import nmt.preprocess as pre
from engine import cli
from engine.lock import RunDirLock
from nmt import evaluate, steps, train
from nmt.data import META, DataError, ParallelData, array_paths, write_meta
from tests.nmt.conftest import CONFIG, PAIRS, SMALL, SMALL_PREP, write_pairs
from tests.nmt.conftest import train_small as _run

ROOT = Path(__file__).resolve().parents[2]


def _one_line_error(entry, argv, capsys) -> str:
    """Run ``entry`` through the CLI; assert exit status 2 and one error line; return it."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(entry, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    """A finished run of 2 epochs (5 updates each), both epoch checkpoints kept."""
    out = tmp_path_factory.mktemp("nmt_faults") / "run"
    _run(data_dir, out, "--max-updates", "10")
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


@pytest.fixture
def data_copy(data_dir, tmp_path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(data_dir, out)
    return out


def _evaluate(run_dir: Path, *extra: str) -> list[str]:
    return ["--run-dir", str(run_dir), "--device", "cpu", *extra]


# --- nmt.preprocess ---------------------------------------------------------------------------

KILL_AT_SWAP = """
import os, signal, sys
import nmt.preprocess as pre
real_rename = os.rename
def rename(src, dst):
    real_rename(src, dst)
    if str(src) == sys.argv[1]:  # the old directory moved aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
pre.os.rename = rename
pre.main(["--config", sys.argv[2], "--train", sys.argv[3], "--out-dir", sys.argv[1],
          "--workers", "1", "--overwrite", *sys.argv[4:]])
"""


@pytest.mark.parametrize("new_data_complete", [True, False])
def test_preprocess_killed_between_its_renames_is_repaired_by_the_next_run(
    tmp_path, data_copy, new_data_complete, capsys
):
    corpus = write_pairs(tmp_path / "raw" / "all", PAIRS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", KILL_AT_SWAP, str(data_copy), CONFIG, corpus, *SMALL_PREP]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # SIGKILL right between the two renames
    assert not data_copy.exists()  # the old data hidden aside, the new one beside it
    with pytest.raises(DataError, match=r"interrupted nmt\.preprocess --overwrite left it aside"):
        ParallelData(data_copy)
    (partial,) = tmp_path.glob(".data.partial-*")
    if not new_data_complete:
        (partial / META).unlink()  # as if killed before the new directory was whole

    opts = pre.options_from_config(CONFIG, SMALL_PREP)
    _, written = pre.preprocess(opts, [corpus], data_copy, workers=1, overwrite=True)
    err = capsys.readouterr().err
    if new_data_complete:  # the swap is finished: the same command has nothing left to do
        assert "its new data was complete and now takes the place" in err and not written
    else:  # the old data is put back, then replaced properly
        assert "the old data is back in place" in err and written
    assert _hidden(tmp_path) == []  # neither the old copy nor a partial one is left
    assert ParallelData(data_copy).meta["inputs"]["train"][0].endswith("all.en")


def test_preprocess_restores_the_old_directory_on_a_kill_without_a_rerun_of_it(
    tmp_path, data_copy, capsys
):
    """Killed between the renames, then another command looks first: the old data is back after
    the next nmt.preprocess even when that one fails on its input."""
    corpus = write_pairs(tmp_path / "raw" / "all", PAIRS)
    old = _files(data_copy)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", KILL_AT_SWAP, str(data_copy), CONFIG, corpus, *SMALL_PREP]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == -9
    (partial,) = tmp_path.glob(".data.partial-*")
    (partial / META).unlink()
    argv = ["--config", CONFIG, "--train", str(tmp_path / "none"), "--out-dir", str(data_copy)]
    with pytest.raises(SystemExit):
        cli.main(pre.main, argv)
    note, err = capsys.readouterr().err.strip().splitlines()
    assert "the old data is back in place" in note and "no such file" in err
    assert _files(data_copy) == old and _hidden(tmp_path) == []


def test_preprocess_interrupted_between_its_renames_puts_the_old_directory_back(
    tmp_path, data_copy, monkeypatch
):
    corpus = write_pairs(tmp_path / "raw" / "all", PAIRS)
    old = _files(data_copy)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:  # Ctrl-C as the new directory was about to take the place
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(pre.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        pre.preprocess(
            pre.options_from_config(CONFIG, SMALL_PREP),
            [corpus],
            data_copy,
            workers=1,
            overwrite=True,
        )
    monkeypatch.setattr(pre.os, "rename", real_rename)
    assert _files(data_copy) == old and _hidden(tmp_path) == []


@pytest.mark.parametrize("fault", ["full_disk", "read_only"])
def test_preprocess_on_a_full_disk_or_read_only_folder_is_one_line(
    tmp_path, data_copy, monkeypatch, capsys, fault
):
    corpus = write_pairs(tmp_path / "raw" / "all", PAIRS)
    old = _files(data_copy)
    if fault == "full_disk":  # the disk fills while the arrays are written

        def encode(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "train.en.tokens.npy")

        monkeypatch.setattr(steps, "encode_split", encode)
    else:  # the folder cannot be written at all

        def mkdir(self, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

        monkeypatch.setattr(Path, "mkdir", mkdir)
    argv = [
        "--config",
        CONFIG,
        "--train",
        corpus,
        "--out-dir",
        str(data_copy),
        "--workers",
        "1",
        "--overwrite",
        *SMALL_PREP,
    ]
    err = _one_line_error(pre.main, argv, capsys)
    want = "No space left on device" if fault == "full_disk" else "Read-only file system"
    assert want in err and "nothing was replaced" in err and str(data_copy) in err
    assert _files(data_copy) == old and _hidden(tmp_path) == []


# --- the data directory is verified -----------------------------------------------------------


def _swap_lines(path: Path, i: int, j: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[i], lines[j] = lines[j], lines[i]
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.parametrize("change", ["dict_same_size", "arrays_swapped", "array_same_size"])
def test_changed_data_files_are_refused_by_training_and_evaluation(
    data_copy, run_copy, tmp_path, capsys, change
):
    if change == "dict_same_size":  # another directory's dictionary: same symbols, other ids
        _swap_lines(data_copy / "dict.txt", 0, 1)
        bad = "dict.txt"
    elif change == "arrays_swapped":
        a, b = (array_paths(data_copy, "train", lang)[0] for lang in ("en", "de"))
        tmp = tmp_path / "swap"
        os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
        bad = "train.de.tokens.npy"
    else:  # same size, other ids (sentences of another corpus)
        path = array_paths(data_copy, "test", "de")[0]
        tokens = np.load(path)
        np.save(path, tokens[::-1].copy())
        bad = "test.de.tokens.npy"
    if change != "array_same_size":
        argv = [
            "--config",
            CONFIG,
            "--row",
            "Adam",
            "--data-dir",
            str(data_copy),
            "--out-dir",
            str(tmp_path / "new"),
            "--device",
            "cpu",
            "--max-updates",
            "1",
            *SMALL,
        ]
        err = _one_line_error(train.main, argv, capsys)
        assert bad in err and "not the file nmt.preprocess wrote" in err
        assert not (tmp_path / "new").exists()
    before = _files(run_copy)
    err = _one_line_error(
        evaluate.main,
        _evaluate(run_copy, "--data-dir", str(data_copy), "--average-last", "2"),
        capsys,
    )
    assert bad in err and "not the file nmt.preprocess wrote" in err
    assert _files(run_copy) == before


def test_a_resume_on_other_data_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    _run(data_dir, out, "--max-updates", "5")
    other = tmp_path / "other"  # the same options, another corpus
    corpora = [write_pairs(tmp_path / "raw" / "b", PAIRS[::-1])]
    pre.preprocess(pre.options_from_config(CONFIG, SMALL_PREP), corpora, other, workers=1)
    before = _files(out)
    argv = [
        "--config",
        CONFIG,
        "--row",
        "Apollo",
        "--data-dir",
        str(other),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--max-updates",
        "10",
        *SMALL,
    ]
    err = _one_line_error(train.main, argv, capsys)
    assert "data_fingerprint" in err
    assert {k: v for k, v in _files(out).items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_a_token_id_beyond_the_dictionary_is_one_line(data_copy):
    path = array_paths(data_copy, "valid", "de")[0]
    tokens = np.load(path)
    tokens[0] = 60000
    np.save(path, tokens)
    meta = json.loads((data_copy / META).read_text(encoding="utf-8"))
    write_meta(data_copy, meta)  # a consistent manifest: the ids themselves are wrong
    data = ParallelData(data_copy)
    with pytest.raises(DataError, match=r"valid.de.tokens.npy holds token id 60000, beyond"):
        data.split("valid")


def test_training_pairs_longer_than_the_positions_are_refused_before_anything_runs(
    data_dir, tmp_path, capsys
):
    """fairseq's training skips them with a warning; here they are refused, saying so."""
    out = tmp_path / "o"
    argv = ["--config", CONFIG, "--row", "Adam", "--data-dir", str(data_dir)]
    argv += ["--out-dir", str(out), "--device", "cpu", *SMALL, "model.max_positions=8"]
    err = _one_line_error(train.main, argv, capsys)
    assert "of the train split has" in err and "more than the model's max_positions 8" in err
    assert "fairseq's training would skip them with a warning; this code refuses them" in err
    assert not out.exists()


def test_bad_generation_settings_are_refused_before_anything_runs(data_dir, tmp_path, capsys):
    argv = [
        "--config",
        CONFIG,
        "--row",
        "Adam",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--max-updates",
        "5",  # one epoch, then the valid BLEU
        *SMALL,
        "generations.valid.beam=0",
    ]
    err = _one_line_error(train.main, argv, capsys)
    assert "generations.valid.beam must be" in err and ">= 1, got 0" in err
    assert not (tmp_path / "o").exists()


# --- nmt.evaluate -------------------------------------------------------------------------------


def test_evaluate_refuses_a_run_that_training_holds(run_copy, capsys):
    before = _files(run_copy)
    lock = RunDirLock(run_copy)  # what a training run holds while it runs
    lock.acquire()
    try:
        err = _one_line_error(evaluate.main, _evaluate(run_copy), capsys)
    finally:
        lock.release()
    assert "in use by PID" in err and "not evaluated" in err
    assert {k: v for k, v in _files(run_copy).items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_evaluate_reads_results_under_the_lock_and_keeps_what_it_does_not_set(
    run_copy, monkeypatch
):
    """What training wrote before the lock was taken is kept: results.json is read under it."""
    real = evaluate._lock

    def lock_then_training_wrote(run_dir):
        lock = real(run_dir)
        results = json.loads((run_dir / "results.json").read_text())
        (run_dir / "results.json").write_text(json.dumps({**results, "lengthened": True}))
        return lock

    monkeypatch.setattr(evaluate, "_lock", lock_then_training_wrote)
    cli.main(evaluate.main, _evaluate(run_copy, "--average-last", "2"))
    results = json.loads((run_copy / "results.json").read_text())
    assert results["lengthened"] and results["metric"] == "bleu"
    assert results["evaluation"]["checkpoints"] == ["checkpoint_epoch1.pt", "checkpoint_epoch2.pt"]
    assert not (run_copy / ".lock").read_text()  # released


def test_evaluate_refuses_to_average_more_checkpoints_than_were_kept(run_copy, capsys):
    before = _files(run_copy)
    err = _one_line_error(evaluate.main, _evaluate(run_copy, "--average-last", "10"), capsys)
    assert "--average-last 10 needs 10 epoch checkpoints, but the run kept 2" in err
    assert {k: v for k, v in _files(run_copy).items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


@pytest.mark.parametrize("size", ["0", "-1"])
def test_evaluate_refuses_a_beam_search_batch_below_one(run_copy, capsys, size):
    """--batch-size -1 decoded no sentence: empty translations scored as the run's BLEU."""
    before = _files(run_copy)
    argv = _evaluate(run_copy, "--average-last", "2", "--batch-size", size)
    err = _one_line_error(evaluate.main, argv, capsys)
    assert err == f"error: --batch-size must be >= 1, got {size}"
    assert _files(run_copy) == before


@pytest.mark.parametrize("fault", ["disk_full_at_the_texts", "disk_full_at_results", "read_only"])
def test_evaluate_on_a_full_disk_or_read_only_run_dir_loses_nothing(
    run_copy, monkeypatch, capsys, fault
):
    cli.main(evaluate.main, _evaluate(run_copy, "--average-last", "2"))  # a first evaluation
    capsys.readouterr()
    before = _files(run_copy)
    if fault.startswith("disk_full"):  # the disk fills as a file is flushed
        real_fsync, calls = os.fsync, []
        fail_at = 1 if fault == "disk_full_at_the_texts" else 3  # hyp, detok, results.json

        def fsync(fd):
            calls.append(fd)
            if len(calls) == fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        want = "No space left on device"
    else:
        real_open = os.open

        def open_(path, flags, *args):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
            return real_open(path, flags, *args)

        monkeypatch.setattr(os, "open", open_)
        want = "Read-only file system"
    err = _one_line_error(evaluate.main, _evaluate(run_copy, "--average-last", "1"), capsys)
    assert want in err and str(run_copy) in err
    monkeypatch.undo()
    after = _files(run_copy)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }  # no temp file left, the first evaluation's files untouched


def _edit_config(run_dir: Path, **model) -> None:
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    config["model"].update(model)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("problem", ["other_width", "config_of_another_model", "long_sentence"])
def test_evaluate_refuses_what_does_not_fit_the_model(run_copy, capsys, problem):
    if problem == "other_width":  # one of the averaged checkpoints is of a narrower model
        path = run_copy / "checkpoint_epoch1.pt"
        state = engine.checkpoint.load(path)
        state["model"] = {k: v[..., :8] if v.dim() else v for k, v in state["model"].items()}
        engine.checkpoint.save(path, state)
        want = "checkpoints of different models cannot be averaged"
    elif problem == "config_of_another_model":
        _edit_config(run_copy, ffn_dim=64)
        want = "does not hold the model of its config.json"
    else:  # the positions table covers fewer tokens than a test sentence has
        _edit_config(run_copy, max_positions=4)
        want = "more than the model's max_positions 4"
    before = _files(run_copy)
    err = _one_line_error(evaluate.main, _evaluate(run_copy, "--average-last", "2"), capsys)
    assert want in err
    assert {k: v for k, v in _files(run_copy).items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_evaluate_on_a_folder_skips_runs_of_other_tasks(run_copy, tmp_path, capsys):
    folder = run_copy.parent
    lm = folder / "a_language_model_run"  # found first
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"task": "language_model"}))
    cli.main(evaluate.main, ["--run-dir", str(folder), "--device", "cpu", "--average-last", "2"])
    out = capsys.readouterr().out
    assert f"{lm}: skipped (a language_model run, not translation)" in out
    assert f"{run_copy}: test BLEU" in out
    assert json.loads((run_copy / "results.json").read_text())["metric"] == "bleu"
    with pytest.raises(SystemExit):  # named explicitly, it is an error
        cli.main(evaluate.main, ["--run-dir", str(lm), "--device", "cpu"])
    assert "not a translation run" in capsys.readouterr().err


def test_evaluate_says_a_diverged_run_diverged(run_copy, capsys):
    results = json.loads((run_copy / "results.json").read_text())
    diverged = {**results, "finished": False, "diverged": {"epoch": 1, "update": 7}}
    (run_copy / "results.json").write_text(json.dumps(diverged))
    cli.main(evaluate.main, ["--run-dir", str(run_copy.parent), "--device", "cpu"])
    out = capsys.readouterr().out
    assert f"{run_copy}: diverged at update 7; nothing to evaluate, skipped" in out
