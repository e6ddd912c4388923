"""Token batches, the order of an epoch, and reading the binarized data directory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nmt.data import DataError, EpochOrder, ParallelData, token_batches
from nmt.dictionary import Dictionary
from nmt.text import remove_bpe


def _sizes(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(2, 30, n)
    return src, np.maximum(src + rng.integers(-5, 6, n), 2)


def test_batches_hold_max_tokens_and_cover_every_sentence_once():
    src, tgt = _sizes()
    batches = token_batches(src, tgt, 256, seed=1, batch_multiple=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(src)))
    for b in batches:
        assert len(b) * max(src[b].max(), tgt[b].max()) <= 256
    assert all(len(b) % 8 == 0 or len(b) < 8 for b in batches[:-1])
    # sorted by source length, then target length (ties in a seeded random order)
    keys = list(zip(src[flat], tgt[flat], strict=True))
    assert keys == sorted(keys)
    again = token_batches(src, tgt, 256, seed=1, batch_multiple=8)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = np.concatenate(token_batches(src, tgt, 256, seed=2, batch_multiple=8))
    assert not np.array_equal(flat, other)


def test_batch_sizes_are_cut_to_the_multiple_as_fairseq_does():
    sizes = np.full(20, 4)  # 10 sentences would fit 40 tokens; batches of 8 are cut instead
    assert [len(b) for b in token_batches(sizes, sizes, 40, seed=None)] == [8, 8, 4]
    assert [len(b) for b in token_batches(sizes, sizes, 40, seed=None, batch_multiple=1)] == [
        10,
        10,
    ]
    with pytest.raises(DataError, match="exceeds max_tokens 3"):
        token_batches(sizes, sizes, 3, seed=None)


def test_an_update_sees_the_same_batches_whatever_the_split_over_ranks():
    batches = [np.array([i]) for i in range(23)]
    one = EpochOrder(batches, seed=3, update_freq=4, world_size=1)
    assert one.updates_per_epoch() == 5  # 3 batches left over: fewer than an update
    per_rank = [EpochOrder(batches, seed=3, update_freq=2, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        single = [sorted(int(b[0]) for b in micro) for _, micro, _ in one.updates(epoch)]
        split = [
            sorted(int(b[0]) for order in per_rank for b in list(order.updates(epoch))[u][1])
            for u in range(5)
        ]
        assert single == split
        used = [i for u in single for i in u]
        assert len(set(used)) == 20
    orders = [one.order(e).tolist() for e in range(3)]
    assert orders[0] != orders[1] != orders[2] and orders[0] == one.order(0).tolist()
    resumed = [(u, [b.tolist() for b in m]) for u, m, _ in one.updates(1, start=3)]
    full = [(u, [b.tolist() for b in m]) for u, m, _ in one.updates(1)]
    for order in per_rank:  # every rank sees the whole update
        assert [sorted(int(b[0]) for b in g) for _, _, g in order.updates(0)] == [
            sorted(int(b[0]) for b in m) for _, m, _ in one.updates(0)
        ]
    assert resumed == full[3:]


def test_collate_builds_fairseqs_inputs(data_dir):
    data = ParallelData(data_dir)
    d = data.dictionary
    train = data.split("train")
    index = [3, 0, 7]
    batch = train.collate(index)
    for row, i in enumerate(index):
        src, tgt = train.src.sentence(i).tolist(), train.tgt.sentence(i).tolist()
        width_src, width_tgt = batch.src_tokens.shape[1], batch.target.shape[1]
        assert batch.src_tokens[row].tolist() == src + [d.eos] + [d.pad] * (
            width_src - len(src) - 1
        )
        assert batch.target[row].tolist() == tgt + [d.eos] + [d.pad] * (width_tgt - len(tgt) - 1)
        assert batch.prev_output_tokens[row].tolist() == [d.eos] + tgt + [d.pad] * (
            width_tgt - len(tgt) - 1
        )
        assert batch.src_lengths[row] == len(src) + 1
    assert batch.ntokens == sum(len(train.tgt.sentence(i)) + 1 for i in index)
    assert batch.ids.tolist() == index
    # the arrays decode back to the tokenized text the BPE was applied to
    assert remove_bpe(d.decode(train.tgt.sentence(0))) == "Das Haus ist klein ."


def test_dictionary_is_fairseqs(data_dir):
    d = Dictionary.load(data_dir / "dict.txt")
    assert d.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and len(d) % 8 == 0
    real = [
        (s, c)
        for s, c in zip(d.symbols[4:], d.counts[4:], strict=True)
        if not s.startswith("madeupword")
    ]
    assert real == sorted(real, key=lambda sc: (-sc[1], sc[0]))
    assert d.encode("Haus xyzzy") == [d.index["Haus"], d.unk]
    assert d.decode([d.index["Haus"], d.eos, d.index["ist"]]) == "Haus"


@pytest.mark.parametrize("problem", ["missing", "no_meta", "old_format", "short_offsets"])
def test_a_directory_that_is_not_prepared_data_is_refused(data_dir, tmp_path, problem):
    import shutil

    path = tmp_path / "d"
    if problem != "missing":
        shutil.copytree(data_dir, path)
    if problem == "no_meta":
        (path / "meta.json").unlink()
    if problem == "old_format":
        meta = json.loads((path / "meta.json").read_text())
        (path / "meta.json").write_text(json.dumps({**meta, "format_version": 0}))
    if problem == "short_offsets":
        np.save(path / "train.de.offsets.npy", np.array([0, 1]))
    with pytest.raises(DataError, match=str(path)):
        ParallelData(path).split("train")
