"""The LMDB token-stream reader: coverage, order, resume, DDP sharding."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import numpy as np
import pytest

from language_model.corpus import Corpus
from language_model.data import PAD, InMemorySource, TokenStream


@pytest.fixture(scope="module")
def corpus(lmdb_dir):
    c = Corpus(lmdb_dir)
    yield c
    c.close()


def _sentences(tokens: np.ndarray, bos: int) -> list[tuple[int, ...]]:
    cuts = [*np.flatnonzero(tokens == bos).tolist(), len(tokens)]
    return [tuple(tokens[a:b].tolist()) for a, b in pairwise(cuts)]


def _rebuild_streams(streams: list[TokenStream], epoch: int) -> list[np.ndarray]:
    """Per shard, the token stream the ranks' windows were cut from (pads removed)."""
    per_rank = [list(s.batches(epoch)) for s in streams]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    shards: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for windows in zip(*per_rank, strict=True):
        # Ranks own consecutive blocks of rows: stack them into the full (rows, cols) window.
        window = (np.vstack([w.inputs for w in windows]), np.vstack([w.targets for w in windows]))
        if windows[0].new_stream:
            shards.append([])
        shards[-1].append(window)
    out = []
    for windows in shards:
        inputs = np.hstack([x for x, _ in windows]).ravel()
        targets = np.hstack([y for _, y in windows]).ravel()
        real = targets != PAD
        # Row-major pairs: each input is the previous position's target.
        assert np.array_equal(inputs[1:][real[:-1]], targets[:-1][real[:-1]])
        out.append(np.concatenate([inputs[:1], targets[real]]))
    return out


@pytest.mark.parametrize(("batch", "bptt", "world"), [(4, 5, 1), (3, 7, 1), (2, 4, 2), (1, 50, 3)])
def test_every_sentence_is_streamed_once_per_epoch(corpus, batch, bptt, world):
    streams = [
        TokenStream(corpus, "train", batch, bptt, seed=3, rank=r, world_size=world)
        for r in range(world)
    ]
    rebuilt = _rebuild_streams(streams, epoch=0)
    shards = corpus.shards("train")
    assert len(rebuilt) == len(shards)
    got, want = Counter(), Counter()
    for i in range(len(shards)):
        with corpus.shard("train", i) as (tokens, _):
            want.update(_sentences(np.array(tokens), corpus.bos))
    for stream in rebuilt:
        got.update(_sentences(stream, corpus.bos))
    assert got == want
    n_targets = sum(int((b.targets != PAD).sum()) for s in streams for b in s.batches(0))
    assert n_targets == sum(s["tokens"] for s in shards) - len(shards)  # all but each leading <S>


def test_order_is_reproducible_and_changes_with_epoch_and_seed(corpus):
    def targets(seed: int, epoch: int) -> np.ndarray:
        s = TokenStream(corpus, "train", 4, 5, seed=seed)
        return np.concatenate([b.targets.ravel() for b in s.batches(epoch)])

    assert np.array_equal(targets(1, 0), targets(1, 0))
    assert not np.array_equal(targets(1, 0), targets(1, 1))
    assert not np.array_equal(targets(1, 0), targets(2, 0))


def test_unshuffled_stream_keeps_stored_order(corpus):
    s = TokenStream(corpus, "test", 1, 1000, shuffle=False)
    (batch,) = list(s.batches(0))
    with corpus.shard("test", 0) as (tokens, _):
        assert batch.inputs[0].tolist() == np.array(tokens[:-1]).tolist()
        assert batch.targets[0].tolist() == np.array(tokens[1:]).tolist()


@pytest.mark.parametrize("world", [1, 2])
def test_resume_position_continues_at_the_same_window(corpus, world):
    s = TokenStream(corpus, "train", 3, 4, seed=7, rank=world - 1, world_size=world)
    full = list(s.batches(2))
    assert len(full) == s.steps_per_epoch() and [b.step for b in full] == list(range(len(full)))
    boundaries = [b.step for b in full if b.new_stream]
    for k in sorted({1, 5, len(full) - 1, *boundaries, boundaries[-1] - 1}):
        resumed = list(s.batches(2, start_step=k))
        assert [b.step for b in resumed] == [b.step for b in full[k:]]
        for a, b in zip(resumed, full[k:], strict=True):
            assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert list(s.batches(2, start_step=len(full))) == []


def test_in_memory_source_yields_the_same_batches(corpus):
    arrays = []
    for i in range(len(corpus.shards("train"))):
        with corpus.shard("train", i) as (t, o):
            arrays.append((np.array(t), np.array(o)))
    a = TokenStream(corpus, "train", 4, 5, seed=9)
    b = TokenStream(InMemorySource({"train": arrays}), "train", 4, 5, seed=9)
    for x, y in zip(a.batches(1), b.batches(1), strict=True):
        assert np.array_equal(x.inputs, y.inputs) and np.array_equal(x.targets, y.targets)
