"""The on-disk LMDB layout of the encoded One Billion Words corpus, shared by writer and reader.

``language_model.preprocess`` writes it once; ``language_model.data`` streams from it. One
environment (a directory holding ``data.mdb``) contains:

- ``meta``: JSON with ``format``, ``format_version``, the vocabulary size and ``vocab_sha256``
  (the SHA-256 of the ``vocab`` record), the ids of ``<S>``, ``</S>`` and ``<UNK>``, and per
  split (``train``, ``test``) the shard names with their sentence, token and unknown-word counts
  and the CRC-32 of each shard's two records (``tokens_crc32``, ``offsets_crc32``). It is written
  in the last transaction, so a database without it is one whose writing was interrupted and is
  refused.
- ``vocab``: the vocabulary, one word per line in id order (by descending count in the file).
- ``{split}/{i:05d}/tokens``: the shard's sentences ``<S> w1 … wn </S>`` concatenated, little-endian
  int32 token ids; ``{split}/{i:05d}/offsets``: int64 start offsets of its sentences plus the end.

:class:`Corpus` verifies what it reads: opening checks ``data.mdb`` against the size LMDB's own
header records (a truncated file is one clear error, never a bus error when a page past its end
is touched), the vocabulary against its digest and that every split holds sentences; each shard
read checks both records' lengths and CRC-32s (``zlib.crc32``, a few percent of the reader's
time: see ``benchmarks/lm_data.py``). Training puts :meth:`Corpus.fingerprint` (the vocabulary's
SHA-256 and a digest of every shard's recorded counts and CRC-32s) into the run config's
``data_fingerprint``, so a resume on a corpus encoded with another vocabulary or from other
text is refused like any other config change.

Open it with the plain ``lmdb`` package: ``lmdb.open(path, readonly=True, lock=False)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

FORMAT = "apollo-lm1b-lmdb"
FORMAT_VERSION = 2  # 2: checksums of the vocabulary and of every record
TOKEN_DTYPE = np.dtype("<i4")
OFFSET_DTYPE = np.dtype("<i8")
META_KEY = b"meta"
VOCAB_KEY = b"vocab"
BOS, EOS, UNK = "<S>", "</S>", "<UNK>"
SPLITS = ("train", "test")


def shard_key(split: str, index: int, field: str) -> bytes:
    """LMDB key of one shard's ``tokens`` or ``offsets`` array."""
    return f"{split}/{index:05d}/{field}".encode()


def checksum(data: bytes | memoryview | np.ndarray) -> int:
    """The CRC-32 recorded for each shard record (fast enough to verify on every read)."""
    return zlib.crc32(data)


def vocab_digest(raw_vocab: bytes | memoryview) -> str:
    """SHA-256 hex digest of the ``vocab`` record: the identity of the token ids."""
    return hashlib.sha256(raw_vocab).hexdigest()


def check_utf8(data: bytes, name: str | os.PathLike) -> None:
    """ValueError naming ``name`` (the file), the line and the byte offset unless ``data`` is
    UTF-8.

    The benchmark's text is UTF-8; other bytes mean another encoding (Latin-1, say), whose words
    would silently become ``<UNK>`` or ids of other words.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{name}: line {line} is not UTF-8 (byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start} of the file: {e.reason}); convert the file to UTF-8"
        ) from None


def read_vocab_file(path: str | os.PathLike) -> list[bytes]:
    """Words of a ``word count``-per-line vocabulary file in id order: most frequent first.

    Ids follow the counts (ties keep file order), as in the authors' encoder: the adaptive
    softmax's cutoffs assume id < 60000 are the 60000 most frequent words. Words are kept as
    bytes and compared with the corpus's space-separated bytes, so a word holding a non-ASCII
    space is never split differently from the file that defined it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--vocab {path}: no such file")
    entries: list[tuple[int, bytes]] = []
    seen: set[bytes] = set()
    data = path.read_bytes()
    check_utf8(data, f"--vocab {path}")
    for lineno, line in enumerate(data.split(b"\n"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise ValueError(f"--vocab {path}: line {lineno} is not 'word count'")
        word = fields[0]
        if word in seen:
            raise ValueError(f"--vocab {path}: line {lineno} repeats the word {word!r}")
        seen.add(word)
        entries.append((int(fields[1]), word))
    if not entries:
        raise ValueError(f"--vocab {path}: the vocabulary file is empty")
    missing = [w for w in (BOS, EOS, UNK) if w.encode() not in seen]
    if missing:
        raise ValueError(f"--vocab {path}: the vocabulary lacks {', '.join(missing)}")
    order = sorted(range(len(entries)), key=lambda i: -entries[i][0])  # stable: ties in order
    return [entries[i][1] for i in order]


class Corpus:
    """A read-only view of an encoded corpus; validates the layout when opened.

    Raises ValueError with one line naming the path when ``path`` is missing, not an LMDB,
    truncated, incomplete (no metadata: an interrupted write), of another format version, or
    damaged (a vocabulary or, when read, a shard that does not match its recorded checksum).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"--data-dir {self.path}: no such directory")
        if not self.path.is_dir() or not (self.path / "data.mdb").is_file():
            raise ValueError(
                f"--data-dir {self.path}: not an LMDB directory (no data.mdb); "
                "create it with python -m language_model.preprocess"
            )
        try:
            # lock=False: nothing writes a finished corpus, and DDP ranks share it read-only.
            self.env = lmdb.open(str(self.path), readonly=True, lock=False, max_readers=512)
        except lmdb.Error as e:
            raise ValueError(f"--data-dir {self.path}: not a readable LMDB ({e})") from None
        try:
            self._check_size()
            try:
                with self.env.begin() as txn:
                    raw_meta, raw_vocab = txn.get(META_KEY), txn.get(VOCAB_KEY)
            except lmdb.Error as e:
                raise self._damaged(e) from None
            self.meta: dict = self._parse_meta(raw_meta, raw_vocab)
        except BaseException:
            self.env.close()
            raise
        self.vocab: list[str] = raw_vocab.decode("utf-8", "surrogateescape").split("\n")
        self.bos, self.eos, self.unk = (self.meta["specials"][k] for k in (BOS, EOS, UNK))

    def _damaged(self, error: lmdb.Error) -> ValueError:
        """A B-tree page LMDB cannot follow (bytes overwritten on disk): one line naming it."""
        return ValueError(
            f"--data-dir {self.path}: data.mdb is damaged ({error}); "
            "re-run python -m language_model.preprocess --overwrite"
        )

    def _check_size(self) -> None:
        """Refuse a ``data.mdb`` shorter than the pages its header says are in use.

        LMDB maps the file; reading a page past its end kills the process with SIGBUS. Opening
        reads only the two header pages, so this runs before any other page is touched.
        """
        data = self.path / "data.mdb"
        needed = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        size = data.stat().st_size
        if size < needed:
            raise ValueError(
                f"--data-dir {self.path}: {data} is truncated ({size} bytes, its header records "
                f"{needed}); re-run python -m language_model.preprocess --overwrite"
            )

    def _parse_meta(self, raw_meta: bytes | None, raw_vocab: bytes | None) -> dict:
        if raw_meta is None or raw_vocab is None:
            raise ValueError(
                f"--data-dir {self.path}: no corpus metadata (an interrupted or foreign write); "
                "re-run python -m language_model.preprocess"
            )
        try:
            meta = json.loads(raw_meta)
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise ValueError(f"--data-dir {self.path}: unreadable corpus metadata")
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"--data-dir {self.path}: written as {meta.get('format')} version "
                f"{meta.get('format_version')}, this code reads {FORMAT} version {FORMAT_VERSION}; "
                "re-run python -m language_model.preprocess --overwrite"
            )
        if vocab_digest(raw_vocab) != meta.get("vocab_sha256"):
            raise ValueError(
                f"--data-dir {self.path}: the vocabulary in data.mdb does not match its recorded "
                "SHA-256 (damaged); re-run python -m language_model.preprocess --overwrite"
            )
        for split, info in meta["splits"].items():
            if not info.get("sentences"):
                raise ValueError(
                    f"--data-dir {self.path}: the {split} split holds no sentences; "
                    "re-run python -m language_model.preprocess with data in it"
                )
        return meta

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def vocab_sha256(self) -> str:
        """The vocabulary's digest (verified when opened): which words the token ids mean."""
        return str(self.meta["vocab_sha256"])

    def fingerprint(self) -> dict[str, Any]:
        """The corpus's identity, from its metadata alone (no shard is read): the vocabulary's
        size and SHA-256 (which words the ids mean) and ``shards_sha256``, a SHA-256 of every
        shard's name, sentence and token counts and recorded CRC-32s (which token streams it
        holds, hence the number of steps an epoch takes). Re-encoding the same files with the
        same vocabulary gives the same fingerprint; any other content gives another. Each CRC-32
        is verified when its shard is read, so the records cannot change behind it."""
        keys = ("name", "sentences", "tokens", "tokens_crc32", "offsets_crc32")
        shards = [
            [split, *(s[k] for k in keys)]
            for split in sorted(self.meta["splits"])
            for s in self.meta["splits"][split]["shards"]
        ]
        return {
            "vocab_size": self.vocab_size,
            "vocab_sha256": self.vocab_sha256,
            "shards_sha256": hashlib.sha256(json.dumps(shards).encode()).hexdigest(),
        }

    def shards(self, split: str) -> list[dict]:
        """Per-shard records ``{name, sentences, tokens, unk, ...}`` of ``split``, in order."""
        if split not in self.meta["splits"]:
            raise ValueError(f"--data-dir {self.path}: no split {split!r}")
        return self.meta["splits"][split]["shards"]

    @contextmanager
    def shard(self, split: str, index: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(tokens, offsets)`` of one shard as zero-copy views, valid inside the ``with``.

        Both records are checked against their recorded lengths and CRC-32s first.
        """
        record = self.shards(split)[index]
        with self.env.begin(buffers=True) as txn:
            try:
                tokens = txn.get(shard_key(split, index, "tokens"))
                offsets = txn.get(shard_key(split, index, "offsets"))
            except lmdb.Error as e:
                raise self._damaged(e) from None
            if tokens is None or offsets is None:
                raise ValueError(f"--data-dir {self.path}: shard {split}/{index} is missing")
            expected = (
                (record["tokens"] * TOKEN_DTYPE.itemsize, record["tokens_crc32"]),
                ((record["sentences"] + 1) * OFFSET_DTYPE.itemsize, record["offsets_crc32"]),
            )
            for buf, (length, crc) in zip((tokens, offsets), expected, strict=True):
                if len(buf) != length or checksum(buf) != crc:
                    raise ValueError(
                        f"--data-dir {self.path}: shard {split}/{index} ({record['name']}) in "
                        "data.mdb does not match its recorded length and CRC-32 (damaged); "
                        "re-run python -m language_model.preprocess --overwrite"
                    )
            yield np.frombuffer(tokens, TOKEN_DTYPE), np.frombuffer(offsets, OFFSET_DTYPE)

    def close(self) -> None:
        self.env.close()
