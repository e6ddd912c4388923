"""Streaming BPTT batches from the encoded corpus, one shard in memory at a time.

An epoch visits the shards in an order drawn from ``(seed, epoch)``; each shard's sentences are
shuffled by a generator seeded with ``(seed, epoch, shard)`` and concatenated into one token
stream (as the paper's code does per shard). The stream's next-token pairs
``(stream[j], stream[j + 1])`` are laid out row-major as ``world_size * batch_size`` contiguous
rows of equal length; rank ``r`` owns rows ``r*B … (r+1)*B - 1`` and walks them in windows of
``bptt`` columns. The last row is padded, with target ``-1`` (no prediction), up to fewer than
``world_size * batch_size`` pairs per shard, so every token but each shard's leading ``<S>`` is
predicted exactly once per epoch, and every rank takes the same number of steps.

A position is ``(epoch, step)``: window counts follow from the token counts in the metadata, so
``batches(epoch, start_step=k)`` resumes at window ``k`` without reading the shards before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np

PAD = -1  # target of a padded position; its input is replaced by token 0


class ShardSource(Protocol):
    """Where shards come from: the LMDB corpus, or arrays in memory (the benchmark's baseline)."""

    def shards(self, split: str) -> list[dict]: ...

    def shard(
        self, split: str, index: int
    ) -> AbstractContextManager[tuple[np.ndarray, np.ndarray]]: ...


class InMemorySource:
    """A ShardSource over ``{split: [(tokens, offsets), ...]}`` arrays already in memory."""

    def __init__(self, splits: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> None:
        self.splits = splits

    def shards(self, split: str) -> list[dict]:
        return [{"tokens": len(t), "sentences": len(o) - 1} for t, o in self.splits[split]]

    def shard(self, split: str, index: int) -> AbstractContextManager:
        return nullcontext(self.splits[split][index])


@dataclass
class Batch:
    """One BPTT window: ``inputs``/``targets`` int64 of shape (batch, ≤ bptt)."""

    inputs: np.ndarray
    targets: np.ndarray
    step: int  # index of this window in the epoch; the position to resume after it is step + 1
    new_stream: bool  # first window of a shard: its rows do not continue the previous ones


def shuffled_stream(
    tokens: np.ndarray, offsets: np.ndarray, rng: np.random.Generator | None
) -> np.ndarray:
    """The shard's sentences concatenated in a random order (stored order when ``rng`` is None)."""
    if rng is None:
        return np.asarray(tokens)
    order = rng.permutation(len(offsets) - 1)
    starts, lengths = offsets[:-1][order], np.diff(offsets)[order]
    new_starts = np.cumsum(lengths) - lengths
    # Gather index of output position p in sentence k: starts[k] + (p - new_starts[k]).
    index = np.repeat(starts - new_starts, lengths)
    index += np.arange(len(index), dtype=index.dtype)
    return np.take(tokens, index)


class TokenStream:
    """BPTT windows over one split of a ShardSource for one rank (see the module docstring)."""

    def __init__(
        self,
        source: ShardSource,
        split: str,
        batch_size: int,
        bptt: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or bptt < 1:
            raise ValueError(f"batch_size and bptt must be >= 1, got {batch_size} and {bptt}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.source, self.split = source, split
        self.batch_size, self.bptt = batch_size, bptt
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.shard_tokens = [int(s["tokens"]) for s in source.shards(split)]

    def _row_length(self, tokens: int) -> int:
        rows = self.world_size * self.batch_size
        return -(-max(tokens - 1, 0) // rows)

    def _windows(self, tokens: int) -> int:
        return -(-self._row_length(tokens) // self.bptt)

    def steps_per_epoch(self) -> int:
        """Windows per epoch (identical on every rank)."""
        return sum(self._windows(n) for n in self.shard_tokens)

    def shard_order(self, epoch: int) -> np.ndarray:
        n = len(self.shard_tokens)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Windows of ``epoch`` from ``start_step`` on (0 = the whole epoch)."""
        step = 0
        b = self.batch_size
        for shard in self.shard_order(epoch):
            n_windows = self._windows(self.shard_tokens[shard])
            if step + n_windows <= start_step:  # skip whole shards without reading them
                step += n_windows
                continue
            m = self._row_length(self.shard_tokens[shard])
            rng = np.random.default_rng([self.seed, epoch, int(shard)]) if self.shuffle else None
            # buf[j] -> buf[j + 1] are the pairs; PAD past the stream's end.
            buf = np.full(self.world_size * b * m + 1, PAD, dtype=np.int64)
            with self.source.shard(self.split, int(shard)) as (tokens, offsets):
                # Copy inside: the LMDB views are valid only within their transaction.
                stream = shuffled_stream(tokens, offsets, rng)
                buf[: len(stream)] = stream
                del stream
            rows = slice(self.rank * b, (self.rank + 1) * b)
            inputs = buf[:-1].reshape(-1, m)[rows]
            targets = buf[1:].reshape(-1, m)[rows]
            for w in range(max(start_step - step, 0), n_windows):
                cols = slice(w * self.bptt, min((w + 1) * self.bptt, m))
                x = np.maximum(inputs[:, cols], 0)  # a padded input is never predicted from
                yield Batch(x, np.ascontiguousarray(targets[:, cols]), step + w, w == 0)
            step += n_windows
