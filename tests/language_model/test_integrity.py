"""The encoded corpus is verified: truncation, flipped bytes, another vocabulary, empty splits,
and a ``preprocess --overwrite`` killed at any point (subprocesses: a bus error or a SIGKILL
must not take the test session with it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import language_model.preprocess as pre
from language_model.corpus import Corpus
from tests.language_model.conftest import SMALL, copy_with_meta, make_corpus
from tests.language_model.conftest import dump_lmdb as _dump
from tests.language_model.conftest import preprocess_corpus as _run
from tests.language_model.conftest import train_small as _train

ROOT = Path(__file__).resolve().parents[2]
READ_ALL = """
import sys
from language_model.corpus import Corpus
try:
    corpus = Corpus(sys.argv[1])
    for split in ("train", "test"):
        for i in range(len(corpus.shards(split))):
            with corpus.shard(split, i) as (tokens, offsets):
                int(tokens.sum()), int(offsets.sum())  # touch every page
except ValueError as e:
    sys.exit(f"error: {e}")
print("read")
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def _flip(path: Path, needle: bytes, at: int = 0) -> None:
    """Change byte ``at`` of every copy of ``needle`` in ``path`` (LMDB's copy-on-write leaves
    stale copies in free pages: one of them is the live record)."""
    raw = path.read_bytes()
    assert needle in raw
    changed = bytearray(needle)
    changed[at] ^= 0x01
    path.write_bytes(raw.replace(needle, bytes(changed)))


@pytest.mark.parametrize("cut", ["last_page", "half"])
def test_truncated_data_mdb_is_one_clear_error_not_a_bus_error(corpus_files, tmp_path, cut):
    path, _ = _run(corpus_files, tmp_path / "db", workers=1)
    data = path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, size - 4096 if cut == "last_page" else size // 2)
    proc = _python(READ_ALL, str(path))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # -7 would be SIGBUS
    assert f"{data} is truncated" in proc.stderr and len(proc.stderr.splitlines()) == 1
    # and preprocess no longer calls it up to date: it names the problem, --overwrite rebuilds
    cmd = [
        sys.executable,
        "-m",
        "language_model.preprocess",
        "--workers",
        "1",
        "--out-dir",
        str(path),
        "--train-dir",
        str(corpus_files["train_dir"]),
        "--heldout-dir",
        str(corpus_files["heldout_dir"]),
        "--vocab",
        str(corpus_files["vocab"]),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "is truncated" in proc.stderr and "--overwrite" in proc.stderr
    assert subprocess.run([*cmd, "--overwrite"], cwd=ROOT, timeout=120).returncode == 0
    assert _python(READ_ALL, str(path)).stdout == "read\n"


def test_a_flipped_byte_in_a_record_is_detected(corpus_files, tmp_path):
    path, _ = _run(corpus_files, tmp_path / "db", workers=1)
    corpus = Corpus(path)
    with corpus.shard("train", 1) as (tokens, _):
        needle = tokens.tobytes()
    corpus.close()
    _flip(path / "data.mdb", needle, at=len(needle) // 2)
    corpus = Corpus(path)  # the other shards still read
    with corpus.shard("train", 0):
        pass
    with pytest.raises(
        ValueError,
        match=r"shard train/1 \(news\.en-00002-of-00100\) in data\.mdb "
        r"does not match its recorded length and CRC-32",
    ):
        with corpus.shard("train", 1):
            pass
    corpus.close()


def test_a_damaged_vocabulary_is_refused_when_opened(corpus_files, tmp_path):
    path, _ = _run(corpus_files, tmp_path / "db", workers=1)
    _flip(path / "data.mdb", b"\nw17\n", at=2)  # w17 -> w07: still a plausible vocabulary
    with pytest.raises(ValueError, match=r"vocabulary in data\.mdb does not match its recorded"):
        Corpus(path)


@pytest.mark.slow
def test_resume_on_another_vocabulary_of_the_same_size_is_refused(tmp_path):
    files = make_corpus(tmp_path / "raw")
    first, _ = _run(files, tmp_path / "a", workers=1)
    shutil.copytree(first, tmp_path / "a_copy")  # same corpus, another path: resumable
    lines = files["vocab"].read_text("utf-8").splitlines()
    lines[3:5] = [f"{lines[4].split()[0]} 50", f"{lines[3].split()[0]} 49"]  # swap two ids
    files["vocab"].write_text("\n".join(lines) + "\n", "utf-8")
    other, _ = _run(files, tmp_path / "b", workers=1)
    assert Corpus(other).vocab_size == Corpus(first).vocab_size
    out, args = tmp_path / "run", ("--max-steps-per-epoch", "2", *SMALL)
    _train(first, out, "--epochs", "1", *args)
    with pytest.raises(ValueError, match=r"holds a run with another config \(.*vocab_sha256"):
        _train(other, out, "--epochs", "2", *args)
    assert _train(tmp_path / "a_copy", out, "--epochs", "2", *args)["epochs_completed"] == 2


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_an_empty_heldout_split_is_refused(corpus_files, tmp_path, content):
    heldout = next(corpus_files["heldout_dir"].iterdir())
    heldout.write_text(content, "utf-8")
    (tmp_path / "out").mkdir()
    with pytest.raises(
        ValueError,
        match=r"--heldout-dir .*news\.en\.heldout-\* files "
        r"(are empty|hold no sentences)",
    ):
        _run(corpus_files, tmp_path / "out" / "db", workers=1)
    assert os.listdir(tmp_path / "out") == []


def test_a_corpus_with_an_empty_split_is_refused_when_opened(lmdb_dir, tmp_path):
    def empty_test_split(meta: dict) -> None:
        meta["splits"]["test"].update(sentences=0, tokens=0)

    copy = copy_with_meta(lmdb_dir, tmp_path / "db", empty_test_split)
    with pytest.raises(ValueError, match=r"db: the test split holds no sentences"):
        Corpus(copy)


KILLED = """
import os, signal, sys, time
import language_model.preprocess as pre

mode, argv = sys.argv[1], sys.argv[2:]
real_encode, real_rename = pre.encode_file, os.rename
real_exchange = getattr(pre, "_exchange", None)
calls = []

def encode(path):
    calls.append(path)
    if mode in ("SIGTERM", "SIGKILL") and len(calls) == 2:  # mid-encoding
        os.kill(os.getpid(), getattr(signal, mode))
        time.sleep(10)
    return real_encode(path)

def exchange_then_die(a, b):  # right after the swap, before the old copy is deleted
    assert real_exchange(a, b)
    os.kill(os.getpid(), signal.SIGKILL)

def rename_then_die(a, b):  # between the two renames of the fallback
    real_rename(a, b)
    if ".replaced-" in str(b):
        os.kill(os.getpid(), signal.SIGKILL)

pre.encode_file = encode
if mode == "exchange":
    pre._exchange = exchange_then_die
if mode == "rename":
    pre._exchange = lambda a, b: False
    os.rename = rename_then_die
sys.exit(pre.main(argv))
"""


@pytest.mark.parametrize("mode", ["SIGTERM", "SIGKILL", "exchange", "rename"])
def test_an_overwrite_killed_at_any_point_leaves_a_database_and_no_litter(
    corpus_files, tmp_path, mode
):
    path, _ = _run(corpus_files, tmp_path / "out" / "db", workers=1)
    old = _dump(path)
    shard = sorted(corpus_files["train_dir"].iterdir())[0]
    shard.write_text("w3 w4\n", "utf-8")
    argv = [
        "--workers",
        "1",
        "--overwrite",
        "--out-dir",
        str(path),
        "--train-dir",
        str(corpus_files["train_dir"]),
        "--heldout-dir",
        str(corpus_files["heldout_dir"]),
        "--vocab",
        str(corpus_files["vocab"]),
    ]
    proc = _python(textwrap.dedent(KILLED), mode, *argv)
    if mode == "SIGTERM":  # cleaned up at once, like Ctrl-C
        assert proc.returncode == 143 and "is as it was" in proc.stderr, proc.stderr
        assert os.listdir(tmp_path / "out") == ["db"]
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    if mode == "exchange":  # the swap happened: the new database is in place
        assert Corpus(path).shards("train")[0]["tokens"] == 4
    elif mode != "rename":  # killed before the swap: the old one never moved
        assert _dump(path) == old
    # the next run puts back what a killed run moved aside and deletes its leftovers
    pre.clean_leftovers(path)
    assert os.listdir(tmp_path / "out") == ["db"]
    if mode != "exchange":
        assert _dump(path) == old
    # ... and finishes the job (after the swap there is none left: the new one is up to date)
    assert _run(corpus_files, path, workers=1, overwrite=True)[1] == (mode != "exchange")
    assert Corpus(path).shards("train")[0]["tokens"] == 4
    assert os.listdir(tmp_path / "out") == ["db"]


def test_a_damaged_btree_page_is_one_line_naming_the_corpus(corpus_files, tmp_path):
    """Bytes overwritten past the header pages: LMDB's own MDB_CORRUPTED, as one clear line."""
    path, _ = _run(corpus_files, tmp_path / "db", workers=1)
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    for page in range(2, len(raw) // 4096):  # every page's header, past LMDB's two meta pages
        raw[page * 4096 : page * 4096 + 64] = b"\xff" * 64
    data.write_bytes(bytes(raw))
    proc = _python(READ_ALL, str(path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: --data-dir {path}: data.mdb is damaged (")
    assert len(proc.stderr.splitlines()) == 1


def test_the_fingerprint_is_the_corpus_content_not_its_path(corpus_files, tmp_path):
    """Re-encoding the same text gives the same fingerprint (the resume goes on); other text
    encoded with the same vocabulary gives another (the resume is refused)."""
    first, _ = _run(corpus_files, tmp_path / "a", workers=1)
    again, _ = _run(corpus_files, tmp_path / "b", workers=2)
    fingerprint = Corpus(first).fingerprint()
    assert Corpus(again).fingerprint() == fingerprint
    shard = sorted(corpus_files["train_dir"].iterdir())[2]
    shard.write_text(shard.read_text("utf-8") + "w1 w2\n", "utf-8")
    other = Corpus(_run(corpus_files, tmp_path / "c", workers=1)[0]).fingerprint()
    assert other["vocab_sha256"] == fingerprint["vocab_sha256"]
    assert other["shards_sha256"] != fingerprint["shards_sha256"]


def test_resume_on_a_corpus_re_encoded_from_other_text_is_refused(tmp_path, capsys):
    """The corpus re-encoded (same vocabulary) half-way through a run: another epoch length,
    so the checkpoint's position would point into other data. Refused in one line; the same
    text encoded again resumes."""
    from engine import cli
    from language_model import train

    files = make_corpus(tmp_path / "raw")
    db, _ = _run(files, tmp_path / "db", workers=1)
    out, args = tmp_path / "run", ("--max-steps-per-epoch", "2", *SMALL)
    _train(db, out, "--epochs", "1", *args)
    saved = (out / "config.json").read_text()
    shard = sorted(files["train_dir"].iterdir())[0]
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 3])  # fewer sentences: fewer steps an epoch
    _run(files, db, workers=1, overwrite=True)
    argv = ["--config", str(ROOT / "configs" / "lm1b.yaml"), "--row", "Apollo"]
    argv += ["--data-dir", str(db), "--out-dir", str(out), "--device", "cpu", "--epochs", "2"]
    with pytest.raises(SystemExit) as exited:
        cli.main(train.main, [*argv, *args])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.splitlines()) == 1, err
    assert "holds a run with another config (data_fingerprint:" in err and "shards_sha256" in err
    assert (out / "config.json").read_text() == saved  # the run is as it was
    shard.write_bytes(original)
    _run(files, db, workers=1, overwrite=True)  # the same text again: the same corpus
    assert _train(db, out, "--epochs", "2", *args)["epochs_completed"] == 2
