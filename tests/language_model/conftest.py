"""A tiny One Billion Words corpus in the benchmark's real on-disk layout, and what the tests
do with it: preprocess it, read the LMDB back, train a tiny model on it."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "lm1b.yaml")
#: A tiny model on the tiny corpus (the table's optimizers and schedule).
SMALL = [
    "batch_size=4",
    "eval_batch_size=4",
    "bptt=5",
    "model.embed_dim=8",
    "model.hidden_size=16",
    "model.cutoffs=[20]",
    "log_every=0",
]

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


def preprocess_corpus(files: dict, out: Path, **kw) -> tuple[Path, bool]:
    """``language_model.preprocess.preprocess`` on :func:`make_corpus`'s files."""
    from language_model.preprocess import preprocess

    return preprocess(files["train_dir"], files["heldout_dir"], files["vocab"], out, **kw)


def dump_lmdb(path: Path) -> dict[bytes, bytes]:
    """Every key and value of an LMDB, read with the plain lmdb package."""
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = dict(txn.cursor())
    env.close()
    return items


def copy_with_meta(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the corpus at ``src`` whose metadata ``edit`` changed in place."""
    import lmdb

    items = dump_lmdb(src)
    meta = json.loads(items[b"meta"])
    edit(meta)
    env = lmdb.open(str(dst), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, json.dumps(meta).encode() if k == b"meta" else v)
    env.close()
    return dst


def train_small(lmdb_dir: Path, out: Path, *extra: str, row: str = "Apollo") -> dict:
    """``language_model.train.main`` on the CPU with ``extra`` flags and overrides."""
    from language_model import train

    argv = ["--config", CONFIG, "--row", row, "--data-dir", str(lmdb_dir)]
    return train.main([*argv, "--out-dir", str(out), "--device", "cpu", *extra])
