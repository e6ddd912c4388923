"""The binarized parallel corpus on disk, token-based batches, and the order of an epoch.

Layout of a data directory (written by ``nmt.preprocess``, atomically: ``meta.json`` last)::

    meta.json                   format, languages, per-split counts, the preprocessing options,
                                and ``files``: every other file's size and CRC-32
    dict.txt                    the joined dictionary (fairseq's format, see nmt.dictionary)
    bpe.codes                   the joint BPE merges (subword-nmt's format)
    {split}.{lang}.tokens.npy   every sentence's ids concatenated, no </s> (uint16 or int32)
    {split}.{lang}.offsets.npy  int64 start of each sentence, plus the end (n + 1 entries)
    test.{lang}.raw.txt         the test set as given (detokenized sacreBLEU's reference)
    test.{lang}.tok.txt         the test set tokenized (tokenized BLEU's reference)

Splits are ``train``, ``valid`` and (when prepared) ``test``. The arrays are opened with
``numpy.load(mmap_mode="r")``: a batch reads only its sentences, so the corpus streams from
disk (and the page cache) without being loaded.

Opening verifies what is used against ``meta.json``'s ``files``: every file's size at once,
the CRC-32 of ``dict.txt`` and ``bpe.codes`` at once and of a split's arrays (or a test text)
when it is first read, and that no token id is outside the dictionary. A ``dict.txt`` or an
array from another directory, even of the same size, is one error naming the file, never used.
:meth:`ParallelData.fingerprint` (the digest of ``files``) goes into a run's config, so a
resume or an evaluation on other data is refused.

Batches follow fairseq: sentences sorted by source length, then target length, ties in a
random order drawn from the seed; cut greedily so that (sentences x longest side, ``</s>``
included) stays within ``max_tokens``, with the number of sentences a multiple of 8 where
possible. Each epoch shuffles the list of batches with ``(seed, epoch)``. Update ``u`` of an
epoch takes batches ``u*W*F … (u+1)*W*F - 1`` of that order (W ranks, F micro-batches per
rank): rank ``r``'s micro-batch ``i`` is batch ``(u*F + i)*W + r``, as fairseq shards and
groups them, so one update sees the same sentences whatever the split between GPUs and
accumulation. A position is ``(epoch, update)``; the last ``len % (W*F)`` batches of an epoch,
too few for a whole update, are left out of that epoch (they differ from epoch to epoch).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dictionary import Dictionary

FORMAT = "apollo-nmt-mmap"
FORMAT_VERSION = 2  # 2: meta.json records every file's size and CRC-32
META = "meta.json"
SPLITS = ("train", "valid", "test")
_BLOCK = 1 << 22  # bytes read at a time for a checksum


def array_paths(root: Path, split: str, lang: str) -> tuple[Path, Path]:
    return root / f"{split}.{lang}.tokens.npy", root / f"{split}.{lang}.offsets.npy"


class DataError(ValueError):
    """A data directory that cannot be used; the message names the path."""


def file_checksum(path: Path) -> int:
    """CRC-32 of a file's bytes (``zlib.crc32``, read in blocks)."""
    crc = 0
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def write_meta(root: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` with ``files``: the size and CRC-32 of every other file in ``root``
    (written last: a directory without it is incomplete)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "crc32": file_checksum(p)}
        for p in sorted(root.iterdir())
        if p.is_file() and p.name != META
    }
    text = json.dumps({**meta, "files": files}, indent=1) + "\n"
    (root / META).write_text(text, encoding="utf-8")


class Side:
    """One language of one split: memory-mapped token ids and sentence offsets."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens, self.offsets = tokens, offsets
        self.lengths = np.diff(offsets)  # without </s>

    def __len__(self) -> int:
        return len(self.lengths)

    def sentence(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def padded(self, index: np.ndarray, pad: int, eos: int, eos_first: bool) -> np.ndarray:
        """Rows of the sentences ``index`` with ``</s>`` at the end (or the start), right-padded."""
        starts, lengths = self.offsets[index], self.lengths[index]
        width = int(lengths.max()) + 1 if len(index) else 1
        out = np.full((len(index), width), pad, dtype=np.int64)
        cols = np.arange(width - 1)
        inside = cols[None, :] < lengths[:, None]
        shift = 1 if eos_first else 0
        rows, where = np.nonzero(inside)
        out[rows, where + shift] = self.tokens[(starts[:, None] + cols[None, :])[inside]]
        out[np.arange(len(index)), 0 if eos_first else lengths] = eos
        return out


@dataclass
class Batch:
    """One batch of sentence pairs as int64 tensors, right-padded with ``<pad>``.

    ``src_tokens`` ends each sentence with ``</s>``; ``prev_output_tokens`` is the target
    shifted right behind ``</s>`` (the decoder's input, as fairseq builds it); ``target`` is
    the target followed by ``</s>``. ``ntokens`` counts the target tokens (``</s>`` included),
    the number the loss is normalised by.
    """

    ids: torch.Tensor
    src_tokens: torch.Tensor
    src_lengths: torch.Tensor
    prev_output_tokens: torch.Tensor
    target: torch.Tensor
    ntokens: int

    def to(self, device: torch.device) -> Batch:
        move = {"non_blocking": True} if device.type == "cuda" else {}
        return Batch(
            self.ids,
            *(
                t.to(device, **move)
                for t in (self.src_tokens, self.src_lengths, self.prev_output_tokens, self.target)
            ),
            self.ntokens,
        )


class Split:
    """Sentence pairs of one split."""

    def __init__(self, name: str, src: Side, tgt: Side, dictionary: Dictionary) -> None:
        if len(src) != len(tgt):
            raise DataError(f"split {name}: {len(src)} source but {len(tgt)} target sentences")
        self.name, self.src, self.tgt, self.dictionary = name, src, tgt, dictionary
        # lengths with </s>, what batching counts
        self.src_sizes = src.lengths + 1
        self.tgt_sizes = tgt.lengths + 1

    def __len__(self) -> int:
        return len(self.src)

    def check_positions(self, max_positions: int, where: str) -> None:
        """Refuse a pair with a side longer than the model's positions (``</s>`` counted), as
        fairseq's generation and validation do without ``--skip-invalid-size-inputs-valid-test``:
        one line naming the first such sentence. Training pairs are refused too, where fairseq's
        training skips them with a warning: the recipe's data has none (``nmt.preprocess``
        keeps pairs of at most ``max_len`` = 250 units, the model has 1,024 positions), so only
        a smaller ``model.max_positions`` meets them, and then it is said, not hidden."""
        if self.name == "train":
            how = "fairseq's training would skip them with a warning; this code refuses them"
        else:
            how = "as fairseq does without --skip-invalid-size-inputs-valid-test"
        for side, sizes in (("source", self.src_sizes), ("target", self.tgt_sizes)):
            over = np.flatnonzero(sizes > max_positions)
            if len(over):
                i = int(over[0])
                raise DataError(
                    f"{where}: sentence {i + 1} of the {self.name} split has {int(sizes[i])} "
                    f"{side} tokens (with </s>), more than the model's max_positions "
                    f"{max_positions} ({len(over)} such sentence(s)); shorten or drop them, or "
                    f"raise model.max_positions ({how})"
                )

    def collate(self, index: Sequence[int] | np.ndarray) -> Batch:
        index = np.asarray(index, dtype=np.int64)
        d = self.dictionary
        src = self.src.padded(index, d.pad, d.eos, eos_first=False)
        target = self.tgt.padded(index, d.pad, d.eos, eos_first=False)
        prev = self.tgt.padded(index, d.pad, d.eos, eos_first=True)
        return Batch(
            ids=torch.from_numpy(index),
            src_tokens=torch.from_numpy(src),
            src_lengths=torch.from_numpy(self.src_sizes[index].astype(np.int64)),
            prev_output_tokens=torch.from_numpy(prev),
            target=torch.from_numpy(target),
            ntokens=int(self.tgt_sizes[index].sum()),
        )


class ParallelData:
    """A data directory written by ``nmt.preprocess``; checked when opened."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path = Path(path)
        if not path.is_dir():
            raise DataError(f"--data-dir {path}: no such directory{_interrupted_swap(path)}")
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                f"--data-dir {path}: no {META} (not prepared by nmt.preprocess, or its "
                "preparation was interrupted)"
            ) from None
        except (OSError, ValueError) as exc:
            raise DataError(f"--data-dir {path}: unreadable {META} ({exc})") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"--data-dir {path}: format {meta.get('format')!r} version "
                f"{meta.get('format_version')!r}, expected {FORMAT!r} version {FORMAT_VERSION}; "
                "prepare it again with python -m nmt.preprocess"
            )
        self.meta: dict[str, Any] = meta
        self.source_lang, self.target_lang = meta["source_lang"], meta["target_lang"]
        if not isinstance(meta.get("files"), dict):
            raise DataError(f"--data-dir {path}: {META} lists no files; prepare it again")
        self._files: dict[str, dict[str, int]] = meta["files"]
        for name, record in self._files.items():
            try:
                size = (path / name).stat().st_size
            except OSError:
                raise DataError(
                    f"--data-dir {path}: {name} is missing (listed in {META}); prepare the "
                    "directory again with python -m nmt.preprocess"
                ) from None
            if size != record["bytes"]:
                raise self._changed(name, f"{size:,} bytes, {META} records {record['bytes']:,}")
        for name in ("dict.txt", "bpe.codes"):
            self._verify(name)
        try:
            self.dictionary = Dictionary.load(path / "dict.txt")
        except (OSError, ValueError) as exc:
            raise DataError(f"--data-dir {path}: bad dictionary ({exc})") from None
        if len(self.dictionary) != meta["vocab_size"]:
            raise DataError(f"--data-dir {path}: dict.txt does not match {META}")
        self._splits: dict[str, Split] = {}

    def fingerprint(self) -> dict[str, Any]:
        """What a run records of its data (``data_fingerprint``): the digest of every file's
        size and CRC-32, and the dictionary's size. Equal for equal contents, wherever they
        lie."""
        digest = hashlib.sha256(json.dumps(self._files, sort_keys=True).encode()).hexdigest()
        return {"files_sha256": digest, "vocab_size": len(self.dictionary)}

    def _changed(self, name: str, how: str) -> DataError:
        return DataError(
            f"--data-dir {self.path}: {name} is not the file nmt.preprocess wrote ({how}); was it "
            "replaced or copied from another directory? Prepare the directory again with "
            "python -m nmt.preprocess"
        )

    def _verify(self, name: str) -> None:
        """The file's CRC-32 against ``meta.json`` (files it does not list are not verified)."""
        record = self._files.get(name)
        if record is None:
            return
        try:
            crc = file_checksum(self.path / name)
        except OSError as exc:
            raise DataError(f"--data-dir {self.path}: cannot read {name} ({exc})") from None
        if crc != record["crc32"]:
            raise self._changed(name, f"CRC-32 {crc:08x}, {META} records {record['crc32']:08x}")

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str) -> Split:
        if name not in self.meta["splits"]:
            raise DataError(f"--data-dir {self.path}: no {name} split (it has {self.splits})")
        if name not in self._splits:
            sides = []
            for lang in (self.source_lang, self.target_lang):
                tokens_path, offsets_path = array_paths(self.path, name, lang)
                for p in (tokens_path, offsets_path):
                    self._verify(p.name)
                try:
                    tokens = np.load(tokens_path, mmap_mode="r")
                    offsets = np.load(offsets_path, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise DataError(
                        f"--data-dir {self.path}: unreadable {name}.{lang} ({exc})"
                    ) from None
                if len(offsets) == 0 or offsets[-1] != len(tokens):
                    raise DataError(f"--data-dir {self.path}: {offsets_path.name} is inconsistent")
                largest = int(tokens.max()) if len(tokens) else 0
                if largest >= len(self.dictionary):
                    raise DataError(
                        f"--data-dir {self.path}: {tokens_path.name} holds token id {largest}, "
                        f"beyond dict.txt's {len(self.dictionary)} symbols"
                    )
                sides.append(Side(tokens, np.asarray(offsets)))
            self._splits[name] = Split(name, *sides, self.dictionary)
        return self._splits[name]

    def text(self, split: str, lang: str, kind: str) -> list[str] | None:
        """``test.{lang}.{raw,tok}.txt`` as lines, or None when not prepared."""
        path = self.path / f"{split}.{lang}.{kind}.txt"
        if not path.exists():
            return None
        self._verify(path.name)
        return path.read_text(encoding="utf-8").split("\n")[:-1]


def _interrupted_swap(path: Path) -> str:
    """The hint for a data directory that an interrupted ``nmt.preprocess --overwrite`` moved
    aside (see ``nmt.preprocess``), or ''."""
    if any(path.parent.glob(f".{path.name}.replaced-*")):
        return (
            f" (an interrupted nmt.preprocess --overwrite left it aside as "
            f"{path.parent}/.{path.name}.replaced-*: run the same nmt.preprocess command again "
            "to finish or undo the replacement)"
        )
    return ""


def token_batches(
    src_sizes: np.ndarray,
    tgt_sizes: np.ndarray,
    max_tokens: int,
    *,
    seed: int | None,
    batch_multiple: int = 8,
) -> list[np.ndarray]:
    """fairseq's ordering and ``batch_by_size`` (see the module docstring).

    ``seed=None`` keeps ties in corpus order (evaluation). Raises DataError when one
    sentence alone exceeds ``max_tokens``.
    """
    n = len(src_sizes)
    order = np.arange(n) if seed is None else np.random.default_rng([seed]).permutation(n)
    order = order[np.argsort(tgt_sizes[order], kind="stable")]
    order = order[np.argsort(src_sizes[order], kind="stable")]
    sizes = np.maximum(src_sizes, tgt_sizes)[order].tolist()
    longest_allowed = max(sizes, default=0)
    if longest_allowed > max_tokens:
        raise DataError(f"a sentence of {longest_allowed} tokens exceeds max_tokens {max_tokens}")
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for i, size in enumerate(sizes):
        count = i - start
        longest_with = max(longest, size)
        if count and (count + 1) * longest_with > max_tokens:
            keep = max(batch_multiple * (count // batch_multiple), count % batch_multiple)
            batches.append(order[start : start + keep])
            start += keep
            longest = max(sizes[start:i], default=0)
        longest = max(longest, size)
    if start < n:
        batches.append(order[start:])
    return batches


class EpochOrder:
    """Which batches rank ``rank`` trains on at each update of an epoch (module docstring)."""

    def __init__(
        self,
        batches: list[np.ndarray],
        *,
        seed: int,
        update_freq: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if update_freq < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad update_freq {update_freq} / rank {rank} of {world_size}")
        self.batches, self.seed = batches, seed
        self.update_freq, self.rank, self.world_size = update_freq, rank, world_size

    def updates_per_epoch(self) -> int:
        return len(self.batches) // (self.update_freq * self.world_size)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))

    def updates(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[int, list[np.ndarray], list[np.ndarray]]]:
        """``(update index, this rank's micro-batches, every rank's batches of the update)``
        for updates ``start`` … of ``epoch`` (every rank knows them all: the loss of an update
        is normalised by its target tokens over all ranks without a collective)."""
        order, w, f = self.order(epoch), self.world_size, self.update_freq
        for u in range(start, self.updates_per_epoch()):
            group = [self.batches[i] for i in order[u * w * f : (u + 1) * w * f]]
            yield u, [group[i * w + self.rank] for i in range(f)], group
