"""The CPU demo's sentence pairs (nmt.ding) and ``scripts/nmt_demo.sh`` end to end, shortened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.lock import RunDirLock
from nmt.ding import sentence_pairs, write_corpus
from tests.nmt.conftest import PAIRS, TEST, write_pairs
from tests.scripts.conftest import ENV, REPO

# Lines in the layout of Debian's /usr/share/trans/de-en: "de | de :: en | en".
DICT = """\
# Version :: 1.9
Haus {n} | Das Haus ist sehr alt und klein. :: house | The house is very old and small.
Garten {m} | Wir sitzen jeden Abend im Garten. :: garden | We sit in the garden every evening.
Das Haus ist sehr alt und klein. :: The house is very old and small.
kurz | Das ist kurz. :: short | That is short.
etw. tun | Er hat etw. für uns getan, glaube ich. :: to do sth. | He did sth. for us, I think so.
Zug {m} | Der Zug fährt heute um acht Uhr ab. :: train | The train leaves at eight today | extra
Frage {f} | Wo ist der Bahnhof in dieser Stadt? :: question | Where is the station in this town?
"""


def test_sentence_pairs_keeps_whole_clean_example_sentences(tmp_path: Path) -> None:
    path = tmp_path / "de-en"
    path.write_text(DICT, encoding="utf-8")
    assert list(sentence_pairs(path)) == [
        ("Das Haus ist sehr alt und klein.", "The house is very old and small."),  # once
        ("Wir sitzen jeden Abend im Garten.", "We sit in the garden every evening."),
        ("Wo ist der Bahnhof in dieser Stadt?", "Where is the station in this town?"),
    ]  # not: headwords, short sentences, placeholders, fields that do not correspond


def test_write_corpus_splits_and_leaves_unchanged_files_alone(tmp_path: Path) -> None:
    pairs = [(de, en) for en, de in PAIRS]
    assert write_corpus(pairs, tmp_path, test_every=20) == {"train": 38, "test": 2}
    test_en = (tmp_path / "test.en").read_text(encoding="utf-8").splitlines()
    assert test_en == [PAIRS[19][0], PAIRS[39][0]]  # every 20th pair, English side in .en
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    write_corpus(pairs, tmp_path, test_every=20)  # a re-run: the preprocessing stays up to date
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes
    with pytest.raises(ValueError, match="too few"):
        write_corpus(pairs[:39], tmp_path / "few", test_every=20)
    for every in (1, 0, -3):  # no training pair, a division by zero, a nonsense split
        with pytest.raises(ValueError, match=f"--test-every must be at least 2, got {every}"):
            write_corpus(pairs, tmp_path / "bad", test_every=every)
    assert not (tmp_path / "bad").exists()


def _demo(tmp_path: Path, *args: str) -> tuple[list[str], Path]:
    """The demo's command on 132 test pairs (enough for the demo config's valid split, every
    50th training line), and its --out-dir."""
    corpus = write_pairs(tmp_path / "pairs", (PAIRS + TEST) * 3)
    out = tmp_path / "runs"
    cmd = [
        "bash",
        str(REPO / "scripts" / "nmt_demo.sh"),
        "--corpus",
        corpus,
        "--out-dir",
        str(out),
        *args,
    ]
    return cmd, out


def _run_dir(out: Path, row: str) -> Path:
    return out / "nmt_demo" / "current" / row / "recipe" / "seed1"


@pytest.mark.slow
def test_demo_trains_evaluates_prints_bleu_and_reruns_as_done(tmp_path: Path) -> None:
    cmd, out = _demo(tmp_path, "--max-updates", "2")
    first = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    table = [line for line in first.stdout.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table] == ["row", "Adam", "Apollo"]
    assert table[0] == (
        "| row | seeds | valid loss | valid ppl | test BLEU (tokenized, compound-split) "
        "| sacreBLEU |"
    )  # the columns nmt/README.md shows
    assert "test BLEU of the last epoch's checkpoint after 1 epoch (2 updates)" in first.stdout
    for row in ("Adam", "Apollo"):
        run = _run_dir(out, row)
        results = json.loads((run / "results.json").read_text())
        assert results["finished"] and results["updates_completed"] == 2
        assert results["metric"] == "bleu" and 0.0 <= results["final"]["bleu"] <= 100.0
        assert (run / "test.paper.detok.txt").read_text(encoding="utf-8").count("\n") == 6
        assert f"  {row}/recipe/seed1: epoch 1 update 2/2" in first.stdout  # its epoch line
        bleu = f"{results['final']['bleu']:.2f} | {results['final']['sacrebleu']:.2f} |"
        assert next(line for line in table if line.startswith(f"| {row} |")).endswith(bleu)

    again = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "up to date" in again.stdout  # the data is not rebuilt
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")] == table


def test_demo_checks_its_options_before_preparing_data(tmp_path: Path) -> None:
    for bad, why in (("--rows", "Foo"), ("--max-updates", "-3"), ("--jobs", "0")):
        cmd, out = _demo(tmp_path, bad, why)
        proc = subprocess.run(
            cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stdout == "" and not out.exists()  # no data prepared, no run folder made


def test_demo_help_is_its_header_and_the_table_options(tmp_path: Path) -> None:
    cmd = ["bash", str(REPO / "scripts" / "nmt_demo.sh"), "--help"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "set -euo" not in proc.stdout
    assert "--corpus PREFIX and --cache DIR are this script's own options" in proc.stdout
    assert "--max-updates" in proc.stdout and "--jobs" in proc.stdout


def test_demo_refuses_a_missing_corpus(tmp_path: Path) -> None:
    cmd = [
        "bash",
        str(REPO / "scripts" / "nmt_demo.sh"),
        "--corpus",
        str(tmp_path / "none"),
        "--out-dir",
        str(tmp_path / "runs"),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_training_processes_too(tmp_path: Path) -> None:
    """A script's background jobs ignore SIGINT: the demo must stop them itself."""
    cmd, out = _demo(tmp_path, "--max-updates", "100000")
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    logs = [_run_dir(out, row) / "stdout.log" for row in ("Adam", "Apollo")]
    deadline = time.monotonic() + 300
    while not all(log.is_file() and "starting" in log.read_text() for log in logs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "the same command resumes" in stderr
    for row in ("Adam", "Apollo"):  # a training process holds its run's lock while it lives
        lock = RunDirLock(_run_dir(out, row))
        lock.acquire()  # RunDirBusy if one outlived the script (a killed one's lock is free)
        lock.release()
