"""The steps of ``nmt.preprocess``, as functions a process pool runs over chunks of pairs.

Reading and checking the input files (:func:`checked_pairs`, :func:`read_chunks`), Moses
tokenization (:func:`tokenize_chunk`), BPE application and length filtering
(:func:`bpe_chunk`), learning the joint BPE (:func:`learn_bpe`), the intermediate text files
(:class:`TextFiles`) and the arrays of a split (:func:`encode_split`). ``nmt.preprocess``
strings them together and owns the atomic output directory.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .data import array_paths
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
        if (
            opts.source_lang == opts.target_lang
            or min(opts.min_len, opts.valid_every) < 0
            or opts.bpe_merges < 1
        ):
            raise ValueError(f"{where}: bad preprocess section {values}")
        return opts


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


def checked_pairs(
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


def read_chunks(files: list[tuple[Path, Path, int]]) -> Iterator[Chunk]:
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
            pair = clean_pair(
                *pair, ratio=opts.max_len_ratio, min_len=opts.min_len, max_len=opts.max_len
            )
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


def parallel(fn: Callable, jobs: Iterable, workers: int, bar: tqdm, size: Callable) -> Iterator:
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


def progress_bar(desc: str, total: int) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="pairs", file=sys.stderr, mininterval=1.0, disable=None
    )


class TextFiles:
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
        with (
            self.path(split, self.langs[0]).open(encoding="utf-8") as fs,
            self.path(split, self.langs[1]).open(encoding="utf-8") as ft,
        ):
            lines = zip(fs, ft, strict=True)
            while block := list(itertools.islice(lines, CHUNK)):
                yield [(s.rstrip("\n"), t.rstrip("\n")) for s, t in block]


def learn_bpe_codes(words: Counter, merges: int, min_frequency: int, codes: Path) -> int:
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


def encode_split(
    text: TextFiles,
    split: str,
    dictionary: Dictionary,
    root: Path,
    dtype: np.dtype,
    n_pairs: int,
    n_tokens: Sequence[int],
) -> None:
    """Write one split's arrays, a block of pairs at a time (the corpus never sits in memory).

    The ``.npy`` files are written with plain writes (a header, then the blocks), not through
    a memory map: a full disk is then an OSError, where a write into a mapped page would kill
    the process with SIGBUS."""
    header = np.lib.format.write_array_header_1_0
    for side, lang in enumerate(text.langs):
        tokens_path, offsets_path = array_paths(root, split, lang)
        offsets = np.zeros(n_pairs + 1, dtype=np.int64)
        pos = k = 0
        with tokens_path.open("wb") as f:
            shape = (n_tokens[side],)
            descr = np.lib.format.dtype_to_descr(dtype)
            header(f, {"descr": descr, "fortran_order": False, "shape": shape})
            for block in text.pairs(split):
                encoded = [dictionary.encode(pair[side]) for pair in block]
                flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64)
                f.write(flat.astype(dtype).tobytes())
                offsets[k + 1 : k + 1 + len(block)] = pos + np.cumsum([len(e) for e in encoded])
                pos, k = pos + len(flat), k + len(block)
        if pos != n_tokens[side] or k != n_pairs:
            raise RuntimeError(
                f"{tokens_path}: {pos} tokens of {n_pairs} pairs written, expected "
                f"{n_tokens[side]} of {k}"
            )
        np.save(offsets_path, offsets)
