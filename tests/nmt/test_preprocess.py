"""nmt.preprocess: the recipe's steps on real sentences, idempotence, atomicity, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from sacremoses import MosesPunctNormalizer, MosesTokenizer
from subword_nmt.apply_bpe import BPE

import nmt.preprocess as pre
from engine import cli
from nmt import steps
from nmt.data import FORMAT_VERSION, DataError, ParallelData
from nmt.dictionary import Dictionary
from nmt.text import remove_bpe
from tests.nmt.conftest import CONFIG, PAIRS, SMALL_PREP, TEST, write_pairs


def _opts(*extra: str) -> pre.Options:
    return pre.options_from_config(CONFIG, [*SMALL_PREP, *extra])


def _moses(lang: str, line: str, train: bool) -> str:
    """The spec's settings, written out with sacremoses independently of nmt.text (the test
    corpus has no line where nmt.text's Perl-parity rules differ: see test_text.py)."""
    if train:
        line = MosesPunctNormalizer(lang, perl_parity=True).normalize(line)
    else:
        line = line.replace("’", "'")
    return MosesTokenizer(lang).tokenize(
        line, aggressive_dash_splits=True, escape=True, return_str=True
    )


def _decoded(data: ParallelData, split: str, side: str) -> list[str]:
    s = data.split(split)
    arrays = s.src if side == "src" else s.tgt
    return [remove_bpe(data.dictionary.decode(arrays.sentence(i))) for i in range(len(s))]


def _expected_ids(data_dir: Path, lines: list[str], lang: str, train: bool) -> list[list[int]]:
    """The spec's pipeline written out with the libraries themselves: Moses, subword-nmt's
    BPE with the learned codes, the dictionary."""
    with open(data_dir / "bpe.codes", encoding="utf-8") as f:
        bpe = BPE(f)
    d = Dictionary.load(data_dir / "dict.txt")
    return [d.encode(bpe.segment(_moses(lang, line, train))) for line in lines]


def _ids(data: ParallelData, split: str, side: str) -> list[list[int]]:
    s = data.split(split)
    arrays = s.src if side == "src" else s.tgt
    return [arrays.sentence(i).tolist() for i in range(len(s))]


def test_the_recipes_steps(data_dir):
    data = ParallelData(data_dir)
    meta = data.meta
    assert (data.source_lang, data.target_lang) == ("en", "de")
    # every 10th line of the two corpora taken as one (lines 10, 20 of a; 5, 15 of b)
    valid = [PAIRS[i - 1] for i in (10, 20, 30, 40)]
    train = [p for i, p in enumerate(PAIRS, 1) if i % 10]
    for split, pairs in (("train", train), ("valid", valid)):
        for side, lang in ((0, "en"), (1, "de")):
            want = _expected_ids(data_dir, [p[side] for p in pairs], lang, train=True)
            assert _ids(data, split, ("src", "tgt")[side]) == want, (split, lang)
    tgt = _decoded(data, "train", "tgt")
    assert tgt[8] == "Die E @-@ Mail kam heute Morgen an ."  # -a splits hyphens
    # test: only ’ -> ' and tokenization (no normalisation), never filtered
    assert data.text("test", "en", "tok") == [_moses("en", en, False) for en, _ in TEST]
    assert data.text("test", "en", "tok")[2] == "It &apos;s a long @-@ term plan ."
    assert data.text("test", "de", "raw") == [de for _, de in TEST]
    assert _ids(data, "test", "src") == _expected_ids(
        data_dir, [en for en, _ in TEST], "en", train=False
    )
    splits = meta["splits"]
    assert [splits[s]["sentences"] for s in ("train", "valid", "test")] == [36, 4, 4]
    assert meta["preprocess"]["bpe_merges"] == 200 and meta["bpe_merges_learned"] == 200
    codes = (data_dir / "bpe.codes").read_text(encoding="utf-8").splitlines()
    assert codes[0] == "#version: 0.2" and len(codes) == 201
    # BPE is learned on the training split only, of both languages: one joint dictionary
    assert {"Haus", "house"} <= set(data.dictionary.symbols)
    sides = [_moses(lang, pair[k], True) for pair in train for k, lang in enumerate(("en", "de"))]
    words = Counter(w for side in sides for w in side.split())
    with open(data_dir / "bpe.codes", encoding="utf-8") as f:
        from subword_nmt.learn_bpe import learn_bpe

        out = io.StringIO()
        with contextlib.redirect_stderr(io.StringIO()):
            learn_bpe([f"{w} {c}" for w, c in words.items()], out, 200, is_dict=True)
        assert out.getvalue() == f.read()
    assert not any(p.name.startswith(".") for p in data_dir.parent.iterdir())


def test_length_ratio_and_length_limits_filter_pairs(tmp_path):
    pairs = [
        *PAIRS[:12],
        ("Yes.", "Ja, das machen wir gern."),
        ("one two three four five six seven.", "eins zwei drei vier fünf sechs sieben."),
    ]
    pairs = pairs + pairs  # every word twice: enough merges make each word one BPE unit
    train = write_pairs(tmp_path / "raw" / "t", pairs)
    opts = _opts("max_len=8", "bpe_merges=5000", "valid_every=1000")  # no valid line
    path, _ = pre.preprocess(opts, [train], tmp_path / "d", workers=1)
    data = ParallelData(path)
    kept = _decoded(data, "train", "src")
    assert "Yes ." not in kept  # 2 against 7 units: ratio above 1.5
    assert all(len(line.split()) <= 8 for line in kept)
    assert "one two three four five six seven ." in kept  # 8 units: kept
    lengths = [
        (len(_moses("en", en, True).split()), len(_moses("de", de, True).split()))
        for en, de in pairs
    ]
    too_long = sum(max(n) > 8 for n in lengths)
    dropped = data.meta["splits"]["train"]["dropped"]
    assert 0 < too_long < len(pairs) - 4 and dropped == too_long + 2  # + "Yes." twice


def test_rerun_is_a_no_op_changed_options_need_overwrite(tmp_path, monkeypatch):
    train = [write_pairs(tmp_path / "raw" / "a", PAIRS)]
    path, written = pre.preprocess(_opts(), train, tmp_path / "d", workers=1)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    assert written and pre.preprocess(_opts(), train, path, workers=1) == (path, False)
    with pytest.raises(ValueError, match="--overwrite"):
        pre.preprocess(_opts("bpe_merges=50"), train, path, workers=1)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    # an overwrite interrupted half-way keeps the old directory
    calls = []

    def dying(job):
        calls.append(job)
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "bpe_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        pre.preprocess(_opts("bpe_merges=50"), train, path, workers=1, overwrite=True)
    assert calls and {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["d", "raw"]  # no partial directory left
    monkeypatch.undo()
    _, written = pre.preprocess(_opts("bpe_merges=50"), train, path, workers=1, overwrite=True)
    assert written and ParallelData(path).meta["preprocess"]["bpe_merges"] == 50


def test_a_pool_of_workers_writes_the_same_files(data_dir, tmp_path):
    train = [
        write_pairs(tmp_path / "raw" / "a", PAIRS[:25]),
        write_pairs(tmp_path / "raw" / "b", PAIRS[25:]),
    ]
    test = write_pairs(tmp_path / "raw" / "newstest", TEST)
    path, _ = pre.preprocess(_opts(), train, tmp_path / "d", test=test, workers=2)
    for p in data_dir.iterdir():
        if p.name != "meta.json":
            assert (path / p.name).read_bytes() == p.read_bytes(), p.name


def _main(argv: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(pre.main, argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("problem", ["missing", "line_counts", "empty", "not_utf8"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, problem):
    prefix = write_pairs(tmp_path / "raw" / "c", PAIRS[:5])
    bad = Path(f"{prefix}.de")
    if problem == "missing":
        bad.unlink()
    elif problem == "line_counts":
        bad.write_text("".join(de + "\n" for _, de in PAIRS[:4]), encoding="utf-8")
    elif problem == "empty":
        bad.write_text("")
        Path(f"{prefix}.en").write_text("")
    else:
        bad.write_bytes(
            bad.read_bytes().replace("ß".encode(), b"\xdf", 1).replace(b"Haus", b"H\xe4us", 1)
        )
    out = tmp_path / "out" / "d"
    code, err = _main(
        [
            "--config",
            CONFIG,
            "--train",
            prefix,
            "--out-dir",
            str(out),
            "--workers",
            "1",
            *SMALL_PREP,
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert (str(bad) if problem != "empty" else prefix) in err[0]
    if problem == "not_utf8":
        assert "line 1: not UTF-8 (byte 0xe4" in err[0]
    assert not out.exists() and not any(out.parent.glob(".*"))


def test_cli_prints_the_splits_and_rejects_unknown_keys(tmp_path, capsys):
    prefix = write_pairs(tmp_path / "raw" / "a", PAIRS)
    argv = [
        "--config",
        CONFIG,
        "--train",
        prefix,
        "--out-dir",
        str(tmp_path / "d"),
        "--workers",
        "1",
        *SMALL_PREP,
    ]
    cli.main(pre.main, argv)
    out = capsys.readouterr().out
    assert "train: 36 pairs of 36 (0 filtered out)" in out and "200 BPE merges" in out
    cli.main(pre.main, argv)
    assert "up to date" in capsys.readouterr().out
    code, err = _main([*argv, "merges=5"], capsys)
    assert code == 2 and "bad override 'merges=5'" in err[0]


def test_a_directory_of_an_older_format_is_prepared_again_without_overwrite(data_dir, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(data_dir, out)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    meta["format_version"] = 1  # what nmt.preprocess wrote before files were recorded
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match="version 1, expected"):
        ParallelData(out)
    train = [write_pairs(tmp_path / "raw" / "a", PAIRS)]
    _, written = pre.preprocess(_opts(), train, out, workers=1)
    assert written and ParallelData(out).meta["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["--workers", "0"], "error: --workers must be at least 1, got 0"),
        (["--workers", "-2"], "error: --workers must be at least 1, got -2"),
        ([], "the following arguments are required: --out-dir (see --help)"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, argv, want):
    prefix = write_pairs(tmp_path / "raw" / "a", PAIRS)
    out = ["--out-dir", str(tmp_path / "d")] if argv else []
    code, err = _main(["--config", CONFIG, "--train", prefix, *out, *argv, *SMALL_PREP], capsys)
    assert code == 2 and len(err) == 1 and want in err[0], err
    assert not (tmp_path / "d").exists() and not any(tmp_path.glob(".d.*"))
