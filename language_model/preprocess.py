"""Encode the One Billion Words benchmark into LMDB once, so training can stream it.

    cd 1-billion-word-language-modeling-benchmark-r13output
    python -m language_model.preprocess \\
        --train-dir training-monolingual.tokenized.shuffled \\
        --heldout-dir heldout-monolingual.tokenized.shuffled \\
        --vocab 1b_word_vocab.txt --out-dir lm1b.lmdb

Each non-blank line is one sentence, encoded as ``<S> w1 … wn </S>`` with out-of-vocabulary
words as ``<UNK>``; every file becomes one shard record (layout: ``language_model.corpus``).
All ``news.en.heldout-*`` files of ``--heldout-dir`` form the test split, as in the authors'
code; point it at a directory holding only ``news.en.heldout-00000-of-00050`` for the
customary single-shard test set.

Shards are encoded by a process pool (one worker per available core). The database is written
into a hidden sibling directory and renamed into place only once complete, with its metadata in
the last transaction, so an interrupted run leaves nothing training accepts. Re-running with the
same inputs finds the finished database and does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from array import array
from collections.abc import Iterable, Iterator
from itertools import repeat
from pathlib import Path

import lmdb
import numpy as np
from tqdm import tqdm

from language_model.corpus import (
    BOS,
    EOS,
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    OFFSET_DTYPE,
    TOKEN_DTYPE,
    UNK,
    VOCAB_KEY,
    Corpus,
    read_vocab_file,
    shard_key,
)

TRAIN_PATTERN = "news.en-*"
HELDOUT_PATTERN = "news.en.heldout-*"

# (split name, encoded shard) pairs; a shard is (file name, tokens, sentence offsets).
EncodedShard = tuple[str, np.ndarray, np.ndarray]

_vocab: dict[bytes, int] = {}  # set in each worker by _init_worker


def _init_worker(vocab: dict[bytes, int]) -> None:
    global _vocab
    _vocab = vocab


def encode_file(path: str) -> EncodedShard:
    """One shard file -> (name, int32 tokens, int64 sentence offsets); uses the worker's vocab."""
    get = _vocab.get
    bos, eos, unk = _vocab[BOS.encode()], _vocab[EOS.encode()], _vocab[UNK.encode()]
    tokens = array("i")
    lengths = array("q", [0])
    with open(path, "rb") as f:
        for line in f:
            # bytes.split() splits on ASCII whitespace only, as the vocabulary was built.
            words = line.split()
            if not words:
                continue
            tokens.append(bos)
            tokens.extend(map(get, words, repeat(unk)))
            tokens.append(eos)
            lengths.append(len(words) + 2)
    offsets = np.cumsum(np.frombuffer(lengths, np.int64)).astype(OFFSET_DTYPE)
    return Path(path).name, np.frombuffer(tokens, np.intc).astype(TOKEN_DTYPE), offsets


def list_shards(directory: str | os.PathLike, pattern: str, flag: str) -> list[Path]:
    """The shard files of one split, sorted; ValueError naming ``flag`` when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{flag} {directory}: no such directory")
    files = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"{flag} {directory}: no files matching {pattern}")
    return files


def fingerprint(vocab_path: Path, splits: dict[str, list[Path]]) -> str:
    """Identity of the inputs: the vocabulary's bytes, and each shard's name, size and mtime."""
    h = hashlib.sha256(f"{FORMAT} {FORMAT_VERSION}".encode())
    h.update(vocab_path.read_bytes())
    for split, files in splits.items():
        for p in files:
            st = p.stat()
            h.update(f"{split}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def write_corpus(
    out_dir: str | os.PathLike,
    vocab: list[bytes],
    shards: Iterable[tuple[str, EncodedShard]],
    *,
    map_size: int,
    extra_meta: dict | None = None,
) -> Path:
    """Write encoded shards into a new LMDB at ``out_dir`` atomically; returns its path.

    ``shards`` yields ``(split, (name, tokens, offsets))``. The environment is built in a
    hidden sibling directory, metadata last, and renamed to ``out_dir`` (which must not exist).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    index = {w: i for i, w in enumerate(vocab)}
    splits: dict[str, dict] = {}
    try:
        env = lmdb.open(str(tmp), map_size=map_size, subdir=True, metasync=False, sync=False)
        try:
            with env.begin(write=True) as txn:
                txn.put(VOCAB_KEY, b"\n".join(vocab))
            for split, (name, tokens, offsets) in shards:
                info = splits.setdefault(split, {"shards": [], "sentences": 0, "tokens": 0})
                i = len(info["shards"])
                with env.begin(write=True) as txn:  # one transaction per shard bounds memory
                    txn.put(shard_key(split, i, "tokens"), tokens.astype(TOKEN_DTYPE).tobytes())
                    txn.put(shard_key(split, i, "offsets"), offsets.astype(OFFSET_DTYPE).tobytes())
                unk = int(np.count_nonzero(tokens == index[UNK.encode()]))
                record = {"name": name, "sentences": len(offsets) - 1, "tokens": len(tokens)}
                info["shards"].append({**record, "unk": unk})
                info["sentences"] += record["sentences"]
                info["tokens"] += record["tokens"]
            meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "vocab_size": len(vocab),
                "specials": {s: index[s.encode()] for s in (BOS, EOS, UNK)},
                "splits": splits,
                **(extra_meta or {}),
            }
            with env.begin(write=True) as txn:
                txn.put(META_KEY, json.dumps(meta, indent=1).encode())
            env.sync(True)
        finally:
            env.close()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete hidden partial databases left by killed runs (their process no longer exists)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        try:
            os.kill(int(p.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def _encoded(
    files: list[tuple[str, Path]], vocab: dict[bytes, int], workers: int
) -> Iterator[tuple[str, EncodedShard]]:
    """Encode files in order, in a process pool when more than one worker helps."""
    paths = [str(p) for _, p in files]
    bar = tqdm(total=len(files), unit="shard", desc="encoding", file=sys.stderr)
    try:
        if workers <= 1 or len(files) == 1:
            _init_worker(vocab)
            results: Iterable[EncodedShard] = map(encode_file, paths)
            for (split, _), shard in zip(files, results, strict=True):
                bar.update()
                yield split, shard
        else:
            ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(vocab,)) as pool:
                for (split, _), shard in zip(files, pool.imap(encode_file, paths), strict=True):
                    bar.update()
                    bar.set_postfix(tokens=len(shard[1]))
                    yield split, shard
    finally:
        bar.close()


def preprocess(
    train_dir: str | os.PathLike,
    heldout_dir: str | os.PathLike,
    vocab_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    train_pattern: str = TRAIN_PATTERN,
    heldout_pattern: str = HELDOUT_PATTERN,
) -> tuple[Path, bool]:
    """Build the corpus LMDB; returns ``(path, written)`` (False when already up to date)."""
    out_dir, vocab_path = Path(out_dir), Path(vocab_path)
    words = read_vocab_file(vocab_path)
    splits = {
        "train": list_shards(train_dir, train_pattern, "--train-dir"),
        "test": list_shards(heldout_dir, heldout_pattern, "--heldout-dir"),
    }
    digest = fingerprint(vocab_path, splits)
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            existing = Corpus(out_dir)
            same = existing.meta.get("fingerprint") == digest
            existing.close()
        except ValueError:
            same = False
        if same:
            return out_dir, False
        if not overwrite:
            raise ValueError(
                f"--out-dir {out_dir}: exists and was not built from these inputs "
                "(or is incomplete); pass --overwrite or choose another directory"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    files = [(split, p) for split, ps in splits.items() for p in ps]
    # Tokens never outnumber input bytes plus two markers per line; 4 bytes each, plus slack.
    input_bytes = sum(p.stat().st_size for _, p in files)
    map_size = 12 * input_bytes + 2 * vocab_path.stat().st_size + (64 << 20)
    staged = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
    vocab = {w: i for i, w in enumerate(words)}
    extra = {"fingerprint": digest, "vocab_file": vocab_path.name}
    if out_dir.exists():
        # Only reached with overwrite (or an empty directory): swap after the new one is complete.
        os.rename(out_dir, staged)
    try:
        write_corpus(
            out_dir, words, _encoded(files, vocab, workers), map_size=map_size, extra_meta=extra
        )
    except BaseException:
        if staged.exists() and not out_dir.exists():
            os.rename(staged, out_dir)  # nothing already written is lost
        raise
    shutil.rmtree(staged, ignore_errors=True)
    return out_dir, True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-dir", required=True, help="training-monolingual.tokenized.shuffled/")
    p.add_argument("--heldout-dir", required=True, help="heldout-monolingual.tokenized.shuffled/")
    p.add_argument("--vocab", required=True, help="1b_word_vocab.txt (lines: word count)")
    p.add_argument("--out-dir", required=True, help="the LMDB directory to create")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a different existing DB")
    p.add_argument("--train-pattern", default=TRAIN_PATTERN)
    p.add_argument("--heldout-pattern", default=HELDOUT_PATTERN)
    args = p.parse_args(argv)
    try:
        path, written = preprocess(
            args.train_dir,
            args.heldout_dir,
            args.vocab,
            args.out_dir,
            workers=args.workers,
            overwrite=args.overwrite,
            train_pattern=args.train_pattern,
            heldout_pattern=args.heldout_pattern,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: nothing was written to {args.out_dir}", file=sys.stderr)
        return 130
    if not written:
        print(f"{path} is up to date with its inputs; nothing to do")
        return 0
    corpus = Corpus(path)
    for split in ("train", "test"):
        s = corpus.meta["splits"][split]
        n = len(s["shards"])
        print(f"{split}: {n} shards, {s['sentences']} sentences, {s['tokens']} tokens")
    print(f"wrote {path} (vocabulary {corpus.vocab_size} words)")
    corpus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
