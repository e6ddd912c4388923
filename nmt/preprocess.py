"""Raw parallel text -> a binarized, memory-mapped data directory, as the WMT-14 recipe does.

::

    python -m nmt.preprocess --config configs/wmt14.yaml \\
        --train wmt14/europarl-v7.de-en wmt14/commoncrawl.de-en wmt14/news-commentary-v9.de-en \\
        --test wmt14/newstest2014 --out-dir data/wmt14_en_de [--valid PREFIX] [key=value ...]

Each PREFIX names two files, ``PREFIX.<source_lang>`` and ``PREFIX.<target_lang>`` (``en`` and
``de`` for WMT-14), one sentence per line, line ``i`` of one the translation of line ``i`` of
the other. The steps and their numbers (the config's ``preprocess`` section, overridable with
``key=value``) follow fairseq's ``prepare-wmt14en2de.sh --icml17``:

1. training text: Moses punctuation normalisation, removal of non-printing characters, Moses
   tokenization with ``-a``; the training prefixes are concatenated and every
   ``valid_every``-th line (1-based) becomes the valid split, unless ``--valid`` names one;
2. test text (``--test``): ``’`` -> ``'`` and Moses tokenization only; never filtered;
3. joint BPE with ``bpe_merges`` merges (subword-nmt) learned on the training split of both
   languages, applied to every split;
4. train and valid pairs filtered as ``clean-corpus-n.perl -ratio max_len_ratio ... min_len
   max_len`` does (BPE units counted);
5. one dictionary over both languages' training BPE units (``nmt.dictionary``), every split
   encoded into the arrays ``nmt.data`` reads.

Work is spread over a process pool (one worker per core). Everything is written into a hidden
sibling directory, ``meta.json`` last, and renamed into place only when complete; re-running
with the same inputs and options finds the finished directory and does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from engine import config as cfg

from .data import FORMAT, FORMAT_VERSION, META, SPLITS, array_paths
from .dictionary import Dictionary
from .text import MosesPipeline, clean_pair

CHUNK = 2000  # sentence pairs per work item


@dataclass(frozen=True)
class Options:
    """The config's ``preprocess`` section."""

    source_lang: str
    target_lang: str
    bpe_merges: int
    bpe_min_frequency: int
    max_len_ratio: float
    min_len: int
    max_len: int
    valid_every: int
    dict_pad_multiple: int

    @classmethod
    def from_section(cls, section: dict[str, Any], where: str) -> Options:
        names = [f.name for f in fields(cls)]
        wrong = sorted(set(section) ^ set(names))
        if wrong:
            raise ValueError(
                f"{where}: preprocess keys must be {', '.join(names)}; unknown or missing: "
                f"{', '.join(wrong)}"
            )
        values = {}
        for f in fields(cls):
            value, kind = section[f.name], {"str": str, "int": int, "float": float}[f.type]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{where}: preprocess.{f.name} must be {f.type}, got {value!r}")
            values[f.name] = value
        opts = cls(**values)
        if (opts.source_lang == opts.target_lang or min(opts.min_len, opts.valid_every) < 0
                or opts.bpe_merges < 1):  # fmt: skip
            raise ValueError(f"{where}: bad preprocess section {values}")
        return opts


# ---------------------------------------------------------------- inputs


def _pair_paths(prefix: str, opts: Options, flag: str) -> tuple[Path, Path]:
    paths = (Path(f"{prefix}.{opts.source_lang}"), Path(f"{prefix}.{opts.target_lang}"))
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{flag} {prefix}: no such file {p}")
    return paths


def _count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n, last = n + block.count(b"\n"), block[-1:]
    return n + (last != b"\n")


def _checked_pairs(
    prefixes: Sequence[str], opts: Options, flag: str
) -> list[tuple[Path, Path, int]]:
    """Each prefix's two files and their line count; one error line for any mismatch."""
    out = []
    for prefix in prefixes:
        src, tgt = _pair_paths(prefix, opts, flag)
        n_src, n_tgt = _count_lines(src), _count_lines(tgt)
        if n_src != n_tgt:
            raise ValueError(f"{flag} {prefix}: {src} has {n_src} lines but {tgt} has {n_tgt}")
        out.append((src, tgt, n_src))
    if sum(n for *_, n in out) == 0:
        raise ValueError(f"{flag} {' '.join(prefixes)}: empty corpus (no lines)")
    return out


@dataclass
class Chunk:
    """Up to CHUNK line pairs of one prefix; ``first`` is the 1-based number of its first line
    in that file, ``global_first`` in the concatenation of all training prefixes."""

    src_path: str
    tgt_path: str
    first: int
    global_first: int
    pairs: list[tuple[bytes, bytes]]


def _read_chunks(files: list[tuple[Path, Path, int]]) -> Iterator[Chunk]:
    seen = 0  # lines of the prefixes before this one
    for src, tgt, n_lines in files:
        with src.open("rb") as fs, tgt.open("rb") as ft:
            lines = zip(fs, ft, strict=True)
            for first in range(1, n_lines + 1, CHUNK):
                pairs = list(itertools.islice(lines, CHUNK))
                yield Chunk(str(src), str(tgt), first, seen + first, pairs)
        seen += n_lines


def _decode(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} line {lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start})"
        ) from None


# ---------------------------------------------------------------- work items (pool workers)

_pipelines: dict[str, MosesPipeline] = {}
_bpe: dict[str, Any] = {}


def _pipeline(lang: str) -> MosesPipeline:
    if lang not in _pipelines:
        _pipelines[lang] = MosesPipeline(lang)
    return _pipelines[lang]


def tokenize_chunk(job: tuple[Chunk, Options, str]) -> dict[str, Any]:
    """Tokenize a chunk of the ``train``, ``valid`` or ``test`` inputs.

    Returns the tokenized pairs of each split (a training input sends every
    ``valid_every``-th global line to ``valid``), the raw test pairs, and the word counts of
    the training split (subword-nmt's word split), which BPE is learned from.
    """
    chunk, opts, role = job
    src_nlp, tgt_nlp = _pipeline(opts.source_lang), _pipeline(opts.target_lang)
    out: dict[str, Any] = {"train": [], "valid": [], "test": [], "raw": [], "words": Counter()}
    every = opts.valid_every if role == "train" else 0
    for k, (s, t) in enumerate(chunk.pairs):
        s = _decode(s, chunk.src_path, chunk.first + k)
        t = _decode(t, chunk.tgt_path, chunk.first + k)
        train_text = role != "test"  # test text is only tokenized, never normalised
        pair = (src_nlp.tokenize(s, train=train_text), tgt_nlp.tokenize(t, train=train_text))
        split = "valid" if every and (chunk.global_first + k) % every == 0 else role
        out[split].append(pair)
        if role == "test":
            out["raw"].append((s, t))
        if split == "train":
            for side in pair:
                out["words"].update(w for w in side.split(" ") if w)
    return out


def bpe_chunk(job: tuple[list[tuple[str, str]], str, Options, str]) -> dict[str, Any]:
    """Apply BPE to tokenized pairs and filter them (train, valid): the kept pairs, how many
    were dropped, their tokens per side and (train) the count of each BPE unit."""
    pairs, codes, opts, kind = job
    if codes not in _bpe:
        from subword_nmt.apply_bpe import BPE

        with open(codes, encoding="utf-8") as f:
            _bpe[codes] = BPE(f)
    bpe = _bpe[codes]
    out: dict[str, Any] = {"pairs": [], "units": Counter(), "dropped": 0, "tokens": [0, 0]}
    for s, t in pairs:
        pair: tuple[str, str] | None = (bpe.segment(s).strip(), bpe.segment(t).strip())
        if kind != "test":
            pair = clean_pair(*pair, ratio=opts.max_len_ratio, min_len=opts.min_len,
                              max_len=opts.max_len)  # fmt: skip
        if pair is None:
            out["dropped"] += 1
            continue
        out["pairs"].append(pair)
        out["tokens"][0] += len(pair[0].split())
        out["tokens"][1] += len(pair[1].split())
        if kind == "train":
            for side in pair:
                out["units"].update(side.split())
    return out


def _parallel(fn: Callable, jobs: Iterable, workers: int, bar: tqdm, size: Callable) -> Iterator:
    """``fn`` over ``jobs`` in order, in a pool when workers > 1; ``bar`` counts ``size(job)``."""
    if workers <= 1:
        for job in jobs:
            yield fn(job)
            bar.update(size(job))
        return
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(workers) as pool:
        sizes: list[int] = []

        def counted() -> Iterator:
            for job in jobs:
                sizes.append(size(job))
                yield job

        for result in pool.imap(fn, counted(), chunksize=1):
            bar.update(sizes.pop(0))
            yield result


def _bar(desc: str, total: int) -> tqdm:
    return tqdm(total=total, desc=desc, unit="pairs", file=sys.stderr, mininterval=1.0,
                disable=None)  # fmt: skip


# ---------------------------------------------------------------- the pipeline


def fingerprint(opts: Options, inputs: dict[str, list[Path]]) -> str:
    """Identity of a preparation: the format, the options, and each input's name/size/mtime."""
    h = hashlib.sha256(f"{FORMAT} {FORMAT_VERSION}".encode())
    h.update(json.dumps(asdict(opts), sort_keys=True).encode())
    for role, paths in inputs.items():
        for p in paths:
            st = p.stat()
            h.update(f"{role}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


class _Writer:
    """Tokenized or BPE text of each split and side, written line by line."""

    def __init__(self, root: Path, stage: str, opts: Options) -> None:
        self.root, self.stage, self.langs = root, stage, (opts.source_lang, opts.target_lang)
        self.files: dict[str, tuple[io.TextIOWrapper, io.TextIOWrapper]] = {}
        self.counts: Counter = Counter()

    def path(self, split: str, lang: str) -> Path:
        return self.root / f"{split}.{self.stage}.{lang}"

    def write(self, split: str, pairs: list[tuple[str, str]]) -> None:
        if split not in self.files:
            self.files[split] = tuple(  # type: ignore[assignment]
                self.path(split, lang).open("w", encoding="utf-8") for lang in self.langs
            )
        fs, ft = self.files[split]
        for s, t in pairs:
            fs.write(s + "\n")
            ft.write(t + "\n")
        self.counts[split] += len(pairs)

    def close(self) -> None:
        for pair in self.files.values():
            for f in pair:
                f.close()

    def pairs(self, split: str) -> Iterator[list[tuple[str, str]]]:
        with self.path(split, self.langs[0]).open(encoding="utf-8") as fs, \
                self.path(split, self.langs[1]).open(encoding="utf-8") as ft:  # fmt: skip
            lines = zip(fs, ft, strict=True)
            while block := list(itertools.islice(lines, CHUNK)):
                yield [(s.rstrip("\n"), t.rstrip("\n")) for s, t in block]


def _learn_bpe(words: Counter, merges: int, min_frequency: int, codes: Path) -> int:
    """subword-nmt's learn_bpe on the word counts; returns the number of merges learned."""
    from subword_nmt.learn_bpe import learn_bpe

    with codes.open("w", encoding="utf-8") as out:
        if any(len(w) > 1 and c >= min_frequency for w, c in words.items()):
            vocab = (f"{w} {c}" for w, c in words.items())
            # subword-nmt reports progress and "no pair has frequency >= 2" on stderr
            with contextlib.redirect_stderr(io.StringIO()):
                learn_bpe(vocab, out, merges, min_frequency=min_frequency, is_dict=True)
        else:
            out.write("#version: 0.2\n")
    learned = len(codes.read_text(encoding="utf-8").splitlines()) - 1
    if learned == 0:
        raise ValueError(
            f"--train: no pair of symbols occurs {min_frequency} times; BPE cannot be learned "
            "from so little text"
        )
    return learned


def _encode(text: _Writer, split: str, dictionary: Dictionary, root: Path, dtype: np.dtype,
            n_pairs: int, n_tokens: Sequence[int]) -> None:  # fmt: skip
    """Write one split's arrays, a block of pairs at a time (the corpus never sits in memory)."""
    for side, lang in enumerate(text.langs):
        tokens_path, offsets_path = array_paths(root, split, lang)
        offsets = np.zeros(n_pairs + 1, dtype=np.int64)
        if n_tokens[side] == 0:  # an empty file cannot be memory-mapped
            np.save(tokens_path, np.zeros(0, dtype=dtype))
            np.save(offsets_path, offsets)
            continue
        tokens = np.lib.format.open_memmap(tokens_path, "w+", dtype, (n_tokens[side],))
        pos = k = 0
        for block in text.pairs(split):
            encoded = [dictionary.encode(pair[side]) for pair in block]
            flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64)
            tokens[pos : pos + len(flat)] = flat
            offsets[k + 1 : k + 1 + len(block)] = pos + np.cumsum([len(e) for e in encoded])
            pos, k = pos + len(flat), k + len(block)
        tokens.flush()
        del tokens
        np.save(offsets_path, offsets)


def preprocess(
    opts: Options,
    train: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    valid: str | None = None,
    test: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> tuple[Path, bool]:
    """Build the data directory; returns ``(path, written)`` (False: already up to date)."""
    out_dir = Path(out_dir)
    roles = {"train": _checked_pairs(train, opts, "--train")}
    if valid is not None:
        roles["valid"] = _checked_pairs([valid], opts, "--valid")
    elif opts.valid_every < 2:
        raise ValueError("preprocess.valid_every must be >= 2 when no --valid is given")
    if test is not None:
        roles["test"] = _checked_pairs([test], opts, "--test")
    inputs = {r: [p for s, t, _ in files for p in (s, t)] for r, files in roles.items()}
    digest = fingerprint(opts, inputs)
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            same = json.loads((out_dir / META).read_text(encoding="utf-8"))["fingerprint"] == digest
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if same:
            return out_dir, False
        if not overwrite:
            raise ValueError(
                f"--out-dir {out_dir}: exists and was not built from these inputs and options "
                "(or is incomplete); pass --overwrite or choose another directory"
            )
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = _build(opts, roles, tmp, workers)
        meta["fingerprint"] = digest
        meta["inputs"] = {role: [str(p) for p in paths] for role, paths in inputs.items()}
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        staged = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
        if out_dir.exists():  # only with --overwrite (or empty): swap once the new one is whole
            os.rename(out_dir, staged)
        os.rename(tmp, out_dir)
        shutil.rmtree(staged, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir, True


def _build(opts: Options, roles: dict, root: Path, workers: int) -> dict[str, Any]:
    work = root / "work"
    work.mkdir()
    tok, words = _Writer(work, "tok", opts), Counter()
    raw_test: list[tuple[str, str]] = []
    for role, files in roles.items():
        jobs = ((chunk, opts, role) for chunk in _read_chunks(files))
        bar = _bar(f"tokenize {role}", sum(n for *_, n in files))
        for result in _parallel(tokenize_chunk, jobs, workers, bar, lambda j: len(j[0].pairs)):
            for split in SPLITS:
                if result[split]:
                    tok.write(split, result[split])
            words.update(result["words"])
            raw_test += result["raw"]
        bar.close()
    tok.close()
    if not tok.counts["train"]:
        raise ValueError("--train: every line went to the valid split; no training pairs")
    codes = root / "bpe.codes"
    n_merges = _learn_bpe(words, opts.bpe_merges, opts.bpe_min_frequency, codes)
    del words

    bpe, units = _Writer(work, "bpe", opts), Counter()
    stats: dict[str, dict[str, Any]] = {}
    for split in [s for s in SPLITS if tok.counts[s]]:
        jobs = ((pairs, str(codes), opts, split) for pairs in tok.pairs(split))
        bar = _bar(f"bpe {split}", tok.counts[split])
        stats[split] = {"lines": tok.counts[split], "dropped": 0, "tokens": [0, 0]}
        for result in _parallel(bpe_chunk, jobs, workers, bar, lambda j: len(j[0])):
            if result["pairs"]:
                bpe.write(split, result["pairs"])
            units.update(result["units"])
            stats[split]["dropped"] += result["dropped"]
            stats[split]["tokens"] = [
                a + b for a, b in zip(stats[split]["tokens"], result["tokens"], strict=True)
            ]
        bar.close()
    bpe.close()
    if not bpe.counts["train"]:
        raise ValueError(
            f"--train: no pair is left after length filtering (min_len {opts.min_len}, "
            f"max_len {opts.max_len}, ratio {opts.max_len_ratio})"
        )
    dictionary = Dictionary.build(units, opts.dict_pad_multiple)
    dictionary.save(root / "dict.txt")
    dtype = np.dtype("<u2") if len(dictionary) <= 1 << 16 else np.dtype("<i4")
    for split, st in stats.items():
        st["sentences"] = bpe.counts[split]
        _encode(bpe, split, dictionary, root, dtype, st["sentences"], st["tokens"])
        st["tokens"] = dict(zip(bpe.langs, st["tokens"], strict=True))
    if raw_test:
        for side, lang in enumerate((opts.source_lang, opts.target_lang)):
            raw = "".join(pair[side] + "\n" for pair in raw_test)
            (root / f"test.{lang}.raw.txt").write_text(raw, encoding="utf-8")
            shutil.copyfile(tok.path("test", lang), root / f"test.{lang}.tok.txt")
    shutil.rmtree(work)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "source_lang": opts.source_lang, "target_lang": opts.target_lang,
        "vocab_size": len(dictionary), "dtype": dtype.str, "bpe_merges_learned": n_merges,
        "preprocess": asdict(opts), "splits": stats,
    }  # fmt: skip


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete hidden partial directories left by killed runs (their process is gone)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        try:
            os.kill(int(p.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def options_from_config(path: str, overrides: Sequence[str]) -> Options:
    """The ``defaults.preprocess`` section of a table, with ``key=value`` overrides."""
    table = cfg.load_table(path)
    section = dict(table["defaults"].get("preprocess") or {})
    if not section:
        raise ValueError(f"{path}: no defaults.preprocess section")
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("preprocess.")
        if not sep or key not in section:
            raise ValueError(f"bad override {item!r}; preprocess keys: {', '.join(section)}")
        section[key] = cfg.parse_value(text)
    return Options.from_section(section, path)


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    opts = options_from_config(args.config, args.overrides)
    path, written = preprocess(opts, args.train, args.out_dir, valid=args.valid, test=args.test,
                               workers=args.workers, overwrite=args.overwrite)  # fmt: skip
    if not written:
        print(f"{path} is up to date with its inputs and options; nothing to do")
        return
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    for split, s in meta["splits"].items():
        tokens = ", ".join(f"{n:,} {lang} tokens" for lang, n in s["tokens"].items())
        print(f"{split}: {s['sentences']:,} pairs of {s['lines']:,} ({s['dropped']:,} filtered "
              f"out), {tokens}")  # fmt: skip
    print(f"wrote {path} (dictionary {meta['vocab_size']:,} symbols, "
          f"{meta['bpe_merges_learned']:,} BPE merges)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nmt.preprocess",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--config", required=True, help="a table with a preprocess section")
    p.add_argument(
        "--train",
        nargs="+",
        required=True,
        metavar="PREFIX",
        help="training corpora: PREFIX.<src> and PREFIX.<tgt> each",
    )
    p.add_argument(
        "--valid",
        metavar="PREFIX",
        help="a valid set (default: every valid_every-th training line)",
    )
    p.add_argument("--test", metavar="PREFIX", help="the test set, e.g. newstest2014")
    p.add_argument("--out-dir", required=True, help="the data directory to create")
    p.add_argument("--workers", type=int, help="processes (default: the available cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a different existing one")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. bpe_merges=8000")
    return p  # fmt: skip


if __name__ == "__main__":
    from engine import cli

    cli.main(main)
