"""A tiny One Billion Words corpus in the benchmark's real on-disk layout."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = [f"w{i}" for i in range(40)] + ["the", "a", ",", ".", "Ünïcode"]
OOV = ["zebra", "qux", "Zoë"]  # never in the vocabulary: encoded as <UNK>


def make_corpus(root: Path, *, train_shards: int = 3, sentences: int = 40, seed: int = 0) -> dict:
    """Write shards, one heldout shard and a vocabulary file; returns their paths."""
    rng = random.Random(seed)
    train = root / "training-monolingual.tokenized.shuffled"
    heldout = root / "heldout-monolingual.tokenized.shuffled"
    train.mkdir(parents=True)
    heldout.mkdir(parents=True)

    def sentence() -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), rng.choice(OOV))
        return " ".join(words)

    for i in range(1, train_shards + 1):
        lines = [sentence() for _ in range(sentences)]
        (train / f"news.en-{i:05d}-of-00100").write_text("\n".join(lines) + "\n", "utf-8")
    lines = [sentence() for _ in range(sentences // 2)]
    (heldout / "news.en.heldout-00000-of-00050").write_text("\n".join(lines) + "\n", "utf-8")
    vocab = root / "1b_word_vocab.txt"
    entries = ["<S> 1000", "</S> 1000", "<UNK> 100"]
    entries += [f"{w} {50 - i}" for i, w in enumerate(WORDS)]
    vocab.write_text("\n".join(entries) + "\n", "utf-8")
    return {"train_dir": train, "heldout_dir": heldout, "vocab": vocab}


@pytest.fixture
def corpus_files(tmp_path: Path) -> dict:
    return make_corpus(tmp_path / "raw")


@pytest.fixture(scope="session")
def lmdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preprocessed tiny corpus shared (read-only) by the reader and training tests."""
    from language_model.preprocess import preprocess

    root = tmp_path_factory.mktemp("lm")
    files = make_corpus(root / "raw")
    path, _ = preprocess(
        files["train_dir"], files["heldout_dir"], files["vocab"], root / "db", workers=1
    )
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny LSTM steps are ~30x slower with 2 OpenMP threads on a shared 2-core CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
