"""Preprocessing 1B Words text into LMDB: encoding, idempotence, atomicity, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

import language_model.preprocess as pre
from language_model.corpus import FORMAT_VERSION, Corpus, read_vocab_file
from tests.language_model.conftest import OOV, copy_with_meta, make_corpus
from tests.language_model.conftest import dump_lmdb as _dump
from tests.language_model.conftest import preprocess_corpus as _run


def test_sentences_are_marked_and_unknown_words_become_unk(corpus_files, tmp_path):
    path, written = _run(corpus_files, tmp_path / "db", workers=1)
    assert written
    items = _dump(path)
    vocab = items[b"vocab"].decode().split("\n")
    ids = {w: i for i, w in enumerate(vocab)}
    meta = json.loads(items[b"meta"])
    assert meta["format_version"] == FORMAT_VERSION and meta["vocab_size"] == len(vocab)
    bos, eos, unk = ids["<S>"], ids["</S>"], ids["<UNK>"]
    shard = sorted(corpus_files["train_dir"].iterdir())[1]
    tokens = np.frombuffer(items[b"train/00001/tokens"], "<i4")
    offsets = np.frombuffer(items[b"train/00001/offsets"], "<i8")
    lines = shard.read_text("utf-8").splitlines()
    assert len(offsets) == len(lines) + 1 and offsets[-1] == len(tokens)
    n_unk = 0
    for k, line in enumerate(lines):
        want = [bos] + [ids.get(w, unk) for w in line.split(" ")] + [eos]
        assert tokens[offsets[k] : offsets[k + 1]].tolist() == want
        n_unk += sum(w in OOV for w in line.split(" "))
    assert n_unk > 0 and meta["splits"]["train"]["shards"][1]["unk"] == n_unk
    assert meta["splits"]["train"]["shards"][1]["name"] == shard.name
    assert [s["name"] for s in meta["splits"]["test"]["shards"]] == [
        "news.en.heldout-00000-of-00050"
    ]


def test_ids_follow_descending_counts_and_bad_lines_are_refused(tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("<UNK> 0\nrare 3\n<S> 90\nthe 100\n</S> 90\ncommon 50\n", "utf-8")
    assert read_vocab_file(vocab) == [b"the", b"<S>", b"</S>", b"common", b"rare", b"<UNK>"]
    vocab.write_text("<S> 9\n</S> 9\n<UNK> 1\nword\n", "utf-8")
    with pytest.raises(ValueError, match="line 4 is not 'word count'"):
        read_vocab_file(vocab)


def test_pool_of_workers_writes_the_same_records(corpus_files, tmp_path):
    one, _ = _run(corpus_files, tmp_path / "one", workers=1)
    two, _ = _run(corpus_files, tmp_path / "two", workers=2)
    assert _dump(one) == _dump(two)


def test_rerun_is_a_no_op_and_changed_inputs_need_overwrite(corpus_files, tmp_path):
    path, _ = _run(corpus_files, tmp_path / "db", workers=1)
    before = _dump(path)
    stamp = (path / "data.mdb").stat().st_mtime_ns
    assert _run(corpus_files, path, workers=1) == (path, False)
    assert (path / "data.mdb").stat().st_mtime_ns == stamp
    shard = sorted(corpus_files["train_dir"].iterdir())[0]
    shard.write_text("w1 w2 zebra\n", "utf-8")
    with pytest.raises(ValueError, match="--overwrite"):
        _run(corpus_files, path, workers=1)
    assert _dump(path) == before  # refused: the old database is untouched
    _, written = _run(corpus_files, path, workers=1, overwrite=True)
    assert written and Corpus(path).shards("train")[0]["tokens"] == 5


def test_interrupted_run_leaves_no_database(corpus_files, tmp_path, monkeypatch):
    real, calls = pre.encode_file, []

    def dying(p: str):
        calls.append(p)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(p)

    monkeypatch.setattr(pre, "encode_file", dying)
    (tmp_path / "out").mkdir()
    with pytest.raises(KeyboardInterrupt):
        _run(corpus_files, tmp_path / "out" / "db", workers=1)
    assert len(calls) == 2
    assert os.listdir(tmp_path / "out") == []  # neither the DB nor a hidden partial remain


def test_interrupted_overwrite_keeps_the_old_database(corpus_files, tmp_path, monkeypatch):
    path, _ = _run(corpus_files, tmp_path / "out" / "db", workers=1)
    before = _dump(path)
    sorted(corpus_files["train_dir"].iterdir())[0].write_text("w3\n", "utf-8")
    monkeypatch.setattr(pre, "encode_file", lambda p: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _run(corpus_files, path, workers=1, overwrite=True)
    assert _dump(path) == before and os.listdir(tmp_path / "out") == ["db"]


def test_database_without_metadata_is_refused(tmp_path):
    env = lmdb.open(str(tmp_path / "partial"), map_size=1 << 20)
    with env.begin(write=True) as txn:  # what a killed writer would leave: shards, no meta
        txn.put(b"vocab", b"<S>\n</S>\n<UNK>")
        txn.put(b"train/00000/tokens", np.arange(4, dtype="<i4").tobytes())
    env.close()
    with pytest.raises(ValueError, match="no corpus metadata"):
        Corpus(tmp_path / "partial")


def test_older_format_version_is_refused(lmdb_dir, tmp_path):
    old = copy_with_meta(lmdb_dir, tmp_path / "old", lambda m: m.update(format_version=1))
    with pytest.raises(ValueError, match=f"version 1, this code reads .* version {FORMAT_VERSION}"):
        Corpus(old)


@pytest.mark.parametrize("kind", ["missing", "empty", "not_lmdb"])
def test_data_dir_that_is_not_a_corpus_is_refused(tmp_path, kind):
    path = tmp_path / "d"
    if kind != "missing":
        path.mkdir()
    if kind == "not_lmdb":
        (path / "data.mdb").write_bytes(b"this is not an lmdb file" * 100)
    with pytest.raises(ValueError, match=str(path)):
        Corpus(path)


def test_vocabulary_without_markers_is_refused(corpus_files, tmp_path, capsys):
    bad = tmp_path / "vocab.txt"
    bad.write_text("<S> 5\nw1 3\n<UNK> 2\n", "utf-8")
    argv = ["--train-dir", str(corpus_files["train_dir"]), "--heldout-dir"]
    argv += [
        str(corpus_files["heldout_dir"]),
        "--vocab",
        str(bad),
        "--out-dir",
        str(tmp_path / "o"),
    ]
    assert pre.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "</S>" in err[0] and str(bad) in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_cli_bad_train_dir_is_one_line_without_traceback(tmp_path, problem):
    files = make_corpus(tmp_path / "raw")
    train = tmp_path / "nothing"
    if problem == "empty":
        train.mkdir()
    cmd = [sys.executable, "-m", "language_model.preprocess", "--train-dir", str(train)]
    cmd += ["--heldout-dir", str(files["heldout_dir"]), "--vocab", str(files["vocab"])]
    cmd += ["--out-dir", str(tmp_path / "o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--train-dir" in lines[0] and str(train) in lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def _argv(files: dict, out: Path, *extra: str) -> list[str]:
    return [
        "--train-dir",
        str(files["train_dir"]),
        "--heldout-dir",
        str(files["heldout_dir"]),
        "--vocab",
        str(files["vocab"]),
        "--out-dir",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bytes_that_are_not_utf8_are_refused_naming_file_and_line(
    corpus_files, tmp_path, capsys, workers
):
    shard = sorted(corpus_files["train_dir"].iterdir())[1]
    text = shard.read_bytes()
    offset = len(text) + len(b"w1 caf")
    shard.write_bytes(text + "w1 café w2\n".encode("latin-1"))  # line 41, in Latin-1
    (tmp_path / "o").mkdir()
    assert pre.main(_argv(corpus_files, tmp_path / "o" / "db", "--workers", workers)) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {shard}: line 41 is not UTF-8 (byte 0xe9 at byte offset {offset} of the file: "
        "invalid continuation byte); convert the file to UTF-8"
    ]
    assert os.listdir(tmp_path / "o") == []  # no database, no hidden partial one


def test_a_vocabulary_that_is_not_utf8_is_refused(corpus_files, tmp_path, capsys):
    corpus_files["vocab"].write_bytes(corpus_files["vocab"].read_bytes() + b"na\xefve 1\n")
    assert pre.main(_argv(corpus_files, tmp_path / "db")) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"--vocab {corpus_files['vocab']}: line 49 is not UTF-8" in err[0]
    assert not (tmp_path / "db").exists()


def test_bad_workers_and_an_out_dir_under_a_file_are_one_line(corpus_files, tmp_path, capsys):
    assert pre.main(_argv(corpus_files, tmp_path / "db", "--workers", "-2")) == 2
    assert capsys.readouterr().err == "error: --workers must be at least 1, got -2\n"
    (tmp_path / "f").write_text("x")
    assert pre.main(_argv(corpus_files, tmp_path / "f" / "sub" / "db")) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --out-dir {tmp_path / 'f' / 'sub' / 'db'}: cannot create the folder "
        f"{tmp_path / 'f' / 'sub'} (Not a directory)\n"
    )
    assert not (tmp_path / "db").exists()


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
import language_model.preprocess as pre
sys.exit(pre.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_full_disk_is_one_line_and_leaves_no_half_written_database(
    corpus_files, tmp_path, overwrite
):
    """The file-size limit stands in for a full disk: writes fail part-way, as on ENOSPC."""
    out = tmp_path / "o" / "new" / "db"
    if overwrite:
        _run(corpus_files, out, workers=1)
        before = _dump(out)
        sorted(corpus_files["train_dir"].iterdir())[0].write_text("w1 w2\n", "utf-8")
    else:
        (tmp_path / "o").mkdir()
    argv = _argv(corpus_files, out, "--workers", "1", *(["--overwrite"] if overwrite else []))
    cmd = [sys.executable, "-c", FULL_DISK, "20000", *argv]
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: --out-dir {out}: writing the database failed (")
    assert r.stderr.count("\n") == 1 and "nothing half-written was left" in r.stderr
    if overwrite:  # the old database stays, and nothing lies beside it
        assert _dump(out) == before and os.listdir(out.parent) == ["db"]
    else:  # nothing at all: not even the folders made for it
        assert os.listdir(tmp_path / "o") == []


def test_help_names_the_command_keeps_the_example_and_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        pre.main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and out.startswith("usage: python -m language_model.preprocess")
    assert "    python -m language_model.preprocess \\\n        --train-dir " in out
    assert "``" not in out and ":func:" not in out
    assert [a.dest for a in pre.build_parser()._actions if not a.help] == []


def test_overwrite_never_replaces_a_folder_of_other_files(corpus_files, tmp_path, capsys):
    """--out-dir mistaken for the text's own folder: refused even with --overwrite."""
    train = corpus_files["train_dir"]
    before = {p.name: p.read_bytes() for p in train.iterdir()}
    argv = _argv(corpus_files, train, "--overwrite", "--workers", "1")
    assert pre.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out-dir {train}: holds other files than a database (news.en-")
    assert "not replaced, even with --overwrite" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in train.iterdir()} == before
    assert sorted(os.listdir(train.parent)) == sorted(
        [train.name, corpus_files["heldout_dir"].name, corpus_files["vocab"].name]
    )


def test_a_file_given_as_a_text_folder_is_named_so(corpus_files, tmp_path, capsys):
    files = {**corpus_files, "train_dir": corpus_files["vocab"]}
    assert pre.main(_argv(files, tmp_path / "db")) == 2
    assert capsys.readouterr().err == (
        f"error: --train-dir {corpus_files['vocab']}: is a file, not a directory\n"
    )
