"""Encode the One Billion Words benchmark into LMDB once, so training can stream it.

Example (from the benchmark's unpacked folder, with the repository on the path)::

    export PYTHONPATH=/path/to/repo
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

Where the files come from (the benchmark's archive and ``1b_word_vocab.txt``): ``docs/data.md``.

Shards are encoded by a process pool (one worker per available core). The database is written
into a hidden sibling directory (``.NAME.partial-PID``), metadata in the last transaction, and
put in place only once complete; ``--overwrite`` swaps it with the old one in one step where the
system allows (Linux), so an interruption at any point (Ctrl-C, SIGTERM, SIGKILL, a full disk)
leaves the old database or the new one at ``--out-dir``, never neither. What a killed run left
beside it is cleaned up (or put back) by the next run. Re-running with the same inputs finds the
finished database and does nothing. A split whose files hold no sentences is refused, and so
are bytes that are not UTF-8 (one line naming the file, line and byte offset). A failed write (a
full disk) is one line; the partial database is deleted and an old one stays.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
from array import array
from collections.abc import Iterable, Iterator
from itertools import repeat
from pathlib import Path

import lmdb
import numpy as np
from tqdm import tqdm

from engine.cli import ArgumentParser
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
    check_utf8,
    checksum,
    read_vocab_file,
    shard_key,
    vocab_digest,
)

TRAIN_PATTERN = "news.en-*"
#: What an LMDB environment directory holds; --overwrite replaces only a directory of these.
LMDB_FILES = ("data.mdb", "lock.mdb")
HELDOUT_PATTERN = "news.en.heldout-*"

# (split name, encoded shard) pairs; a shard is (file name, tokens, sentence offsets).
EncodedShard = tuple[str, np.ndarray, np.ndarray]

_vocab: dict[bytes, int] = {}  # set in each worker by _init_worker


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that it cleans up like Ctrl-C (see :func:`main`)."""


class EmptySplit(ValueError):
    """A split whose files hold no sentences (a test perplexity over it would be 0/0)."""

    def __init__(self, split: str) -> None:
        super().__init__(f"the {split} split holds no sentences")
        self.split = split


def _init_worker(vocab: dict[bytes, int]) -> None:
    global _vocab
    _vocab = vocab


def _init_pool_worker(vocab: dict[bytes, int]) -> None:
    _init_worker(vocab)
    # A forked worker inherits main()'s SIGTERM handler; Pool.terminate() needs the default.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def encode_file(path: str) -> EncodedShard:
    """One shard file -> (name, int32 tokens, int64 sentence offsets); uses the worker's vocab.

    ValueError naming the file (and line) when it cannot be read or is not UTF-8.
    """
    get = _vocab.get
    bos, eos, unk = _vocab[BOS.encode()], _vocab[EOS.encode()], _vocab[UNK.encode()]
    tokens = array("i")
    lengths = array("q", [0])
    try:  # a shard is tens of MB: read whole, so its UTF-8 check is one C call
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    check_utf8(data, path)
    for line in data.split(b"\n"):
        # bytes.split() splits on ASCII whitespace only, as the vocabulary was built.
        words = line.split()
        if not words:
            continue
        tokens.append(bos)
        tokens.extend(map(get, words, repeat(unk)))
        tokens.append(eos)
        lengths.append(len(words) + 2)
    del data
    offsets = np.cumsum(np.frombuffer(lengths, np.int64)).astype(OFFSET_DTYPE)
    return Path(path).name, np.frombuffer(tokens, np.intc).astype(TOKEN_DTYPE), offsets


def list_shards(directory: str | os.PathLike, pattern: str, flag: str) -> list[Path]:
    """The shard files of one split, sorted; ValueError naming ``flag`` when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "no such directory"
        raise ValueError(f"{flag} {directory}: {what}")
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
    """Write encoded shards into a new LMDB that then takes the place of ``out_dir``.

    ``shards`` yields ``(split, (name, tokens, offsets))``. The environment is built in a
    hidden sibling directory, metadata last, and put in place only when complete (replacing
    what ``out_dir`` held: :func:`put_in_place`). Raises :class:`EmptySplit` (and writes
    nothing) when a split has no sentences. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    index = {w: i for i, w in enumerate(vocab)}
    raw_vocab = b"\n".join(vocab)
    splits: dict[str, dict] = {}
    try:
        env = lmdb.open(str(tmp), map_size=map_size, subdir=True, metasync=False, sync=False)
        try:
            with env.begin(write=True) as txn:
                txn.put(VOCAB_KEY, raw_vocab)
            for split, (name, tokens, offsets) in shards:
                info = splits.setdefault(split, {"shards": [], "sentences": 0, "tokens": 0})
                i = len(info["shards"])
                raw_tokens = tokens.astype(TOKEN_DTYPE).tobytes()
                raw_offsets = offsets.astype(OFFSET_DTYPE).tobytes()
                with env.begin(write=True) as txn:  # one transaction per shard bounds memory
                    txn.put(shard_key(split, i, "tokens"), raw_tokens)
                    txn.put(shard_key(split, i, "offsets"), raw_offsets)
                unk = int(np.count_nonzero(tokens == index[UNK.encode()]))
                record = {"name": name, "sentences": len(offsets) - 1, "tokens": len(tokens)}
                info["shards"].append(
                    {
                        **record,
                        "unk": unk,
                        "tokens_crc32": checksum(raw_tokens),
                        "offsets_crc32": checksum(raw_offsets),
                    }
                )
                info["sentences"] += record["sentences"]
                info["tokens"] += record["tokens"]
            for split, info in splits.items():
                if not info["sentences"]:
                    raise EmptySplit(split)
            meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "vocab_size": len(vocab),
                "vocab_sha256": vocab_digest(raw_vocab),
                "specials": {s: index[s.encode()] for s in (BOS, EOS, UNK)},
                "splits": splits,
                **(extra_meta or {}),
            }
            with env.begin(write=True) as txn:
                txn.put(META_KEY, json.dumps(meta, indent=1).encode())
            env.sync(True)
        finally:
            env.close()
        put_in_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back (delivered on exit) where the platform allows it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def put_in_place(new: Path, target: Path) -> None:
    """Move the complete database ``new`` to ``target``, replacing (and deleting) what is there.

    Where the two can be swapped in one step, ``target`` holds the old database or the new
    one at every instant, and the old one is then deleted under ``new``'s hidden name. Elsewhere
    the old one is renamed to a hidden ``.NAME.replaced-PID`` sibling first, with SIGINT/SIGTERM
    held back until the new one is in place; a SIGKILL in between leaves it there, and the next
    run puts it back (:func:`clean_leftovers`).
    """
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # it now holds the old database
        return
    staged = target.parent / f".{target.name}.replaced-{os.getpid()}"
    with _signals_held():
        os.rename(target, staged)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(staged, target)
            raise
        shutil.rmtree(staged, ignore_errors=True)


def clean_leftovers(out_dir: Path) -> None:
    """Tidy what killed runs left beside ``out_dir``: put back an old database that a run had
    moved aside when nothing took its place, delete hidden partial and replaced databases.
    Leftovers of a run still alive are left alone."""
    for p in sorted(out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*-*")):
        kind, _, pid = p.name[len(out_dir.name) + 2 :].rpartition("-")
        if kind not in ("partial", "replaced") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "replaced" and not out_dir.exists():
            os.rename(p, out_dir)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # a namesake from before a restart (containers reuse PIDs)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _encoded(
    files: list[tuple[str, Path]], vocab: dict[bytes, int], workers: int
) -> Iterator[tuple[str, EncodedShard]]:
    """Encode files in order, in a process pool when more than one worker helps."""
    paths = [str(p) for _, p in files]
    # A bar for a person watching (none in a log file); wiped on failure, so that the error is
    # the one line left.
    bar = tqdm(total=len(files), unit="shard", desc="encoding", file=sys.stderr, disable=None)
    try:
        if workers <= 1 or len(files) == 1:
            _init_worker(vocab)
            results: Iterable[EncodedShard] = map(encode_file, paths)
            for (split, _), shard in zip(files, results, strict=True):
                bar.update()
                yield split, shard
        else:
            ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            with ctx.Pool(workers, initializer=_init_pool_worker, initargs=(vocab,)) as pool:
                for (split, _), shard in zip(files, pool.imap(encode_file, paths), strict=True):
                    bar.update()
                    bar.set_postfix(tokens=len(shard[1]))
                    yield split, shard
    except BaseException:
        bar.leave = False
        raise
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
    sources = {
        "train": ("--train-dir", Path(train_dir), train_pattern),
        "test": ("--heldout-dir", Path(heldout_dir), heldout_pattern),
    }
    splits = {split: list_shards(d, pattern, flag) for split, (flag, d, pattern) in sources.items()}
    for split, files in splits.items():
        if not any(p.stat().st_size for p in files):  # the quick check; write_corpus's is exact
            flag, directory, pattern = sources[split]
            raise ValueError(f"{flag} {directory}: its {pattern} files are empty")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir}: exists and is not a directory")
    if out_dir.parent.is_dir():
        clean_leftovers(out_dir)  # first: it may put a database back at out_dir
    digest = fingerprint(vocab_path, splits)
    if out_dir.exists() and any(out_dir.iterdir()):
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in LMDB_FILES)
        if foreign:  # --overwrite deletes what it replaces: never a folder of other files
            raise ValueError(
                f"--out-dir {out_dir}: holds other files than a database ({', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}); not replaced, even with --overwrite: "
                "choose another directory"
            )
        try:
            existing = Corpus(out_dir)
            same = existing.meta.get("fingerprint") == digest
            reason = "was not built from these inputs"
            existing.close()
        except ValueError as e:
            same, reason = False, f"is not a usable corpus ({e})"
        if same:
            return out_dir, False
        if not overwrite:
            raise ValueError(
                f"--out-dir {out_dir}: exists and {reason}; pass --overwrite or choose another "
                "directory"
            )
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    files = [(split, p) for split, ps in splits.items() for p in ps]
    # Tokens never outnumber input bytes plus two markers per line; 4 bytes each, plus slack.
    input_bytes = sum(p.stat().st_size for _, p in files)
    map_size = 12 * input_bytes + 2 * vocab_path.stat().st_size + (64 << 20)
    vocab = {w: i for i, w in enumerate(words)}
    extra = {"fingerprint": digest, "vocab_file": vocab_path.name}
    created = [p for p in reversed(out_dir.parents) if not p.exists()]  # outermost first
    try:
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = f"--out-dir {out_dir}: cannot create the folder {e.filename} ({e.strerror})"
            raise ValueError(msg) from None
        write_corpus(
            out_dir, words, _encoded(files, vocab, workers), map_size=map_size, extra_meta=extra
        )
    except EmptySplit as e:
        flag, directory, pattern = sources[e.split]
        raise ValueError(f"{flag} {directory}: its {pattern} files hold no sentences") from None
    except (lmdb.Error, OSError) as e:  # a full disk, a read-only or vanished folder
        raise ValueError(
            f"--out-dir {out_dir}: writing the database failed ({_reason(e)}); a full disk? "
            f"{_free_space(out_dir)} once the partial database was removed, for "
            f"{input_bytes / 2**20:.0f} MiB of input text; nothing half-written was left"
        ) from None
    finally:
        if not out_dir.exists():  # failed: remove the folders made for it, as they were
            for p in reversed(created):
                with contextlib.suppress(OSError):
                    p.rmdir()
    return out_dir, True


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


def _free_space(out_dir: Path) -> str:
    """How much room the file system holding ``out_dir`` has left, as words."""
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            return f"{shutil.disk_usage(p).free / 2**20:.0f} MiB free there"
    return "free space unknown"


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m language_model.preprocess",
        description="\n\n".join(__doc__.split("\n\n")[:4]),
        epilog="Where the files come from: docs/data.md. More (the layout, what is verified): "
        "language_model/README.md.",
    )
    p.add_argument(
        "--train-dir",
        required=True,
        help="the training shards' folder (training-monolingual.tokenized.shuffled/): its "
        "--train-pattern files",
    )
    p.add_argument(
        "--heldout-dir",
        required=True,
        help="the heldout folder (heldout-monolingual.tokenized.shuffled/): its "
        "--heldout-pattern files are the test split",
    )
    p.add_argument("--vocab", required=True, help="1b_word_vocab.txt (lines: word count)")
    p.add_argument("--out-dir", required=True, help="the LMDB directory to create")
    p.add_argument(
        "--workers", type=int, default=None, help="encoding processes (default: one per core)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing database built from other inputs (kept until the new one is "
        "complete)",
    )
    p.add_argument(
        "--train-pattern",
        default=TRAIN_PATTERN,
        help=f"file names of the training shards (default: {TRAIN_PATTERN})",
    )
    p.add_argument(
        "--heldout-pattern",
        default=HELDOUT_PATTERN,
        help=f"file names of the test shards (default: {HELDOUT_PATTERN})",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM cleans up as Ctrl-C does (after a SIGKILL, the next run does).
    previous = signal.signal(signal.SIGTERM, _terminate)
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
    except KeyboardInterrupt as e:
        print(f"interrupted: {args.out_dir} is as it was", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
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
