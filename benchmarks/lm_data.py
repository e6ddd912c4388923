"""LMDB token-stream reader throughput vs the same token ids held in memory.

    python -m benchmarks.lm_data [--data-dir LMDB] [--shards 4] [--tokens-per-shard 2000000]

Goal: the reader is never the bottleneck, i.e. at least 10M tokens/s on one core (the
process pins itself to one CPU). Both sides run the same ``TokenStream`` (per-shard sentence
shuffle, padding, BPTT windows of batch x bptt); only the shard source differs: the LMDB
environment (zero-copy views into its memory map, each shard's records checked against their
recorded lengths and CRC-32s as training reads them) or NumPy arrays already in memory. Without
``--data-dir`` a synthetic corpus with 1B-Words-like sentence lengths is written through
``language_model.preprocess.write_corpus`` into a temporary directory. Figures are medians
over ``--repeats`` epochs, the two sources taking turns (the CPU may be shared).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from engine import cli
from language_model.corpus import BOS, EOS, UNK, Corpus
from language_model.data import InMemorySource, ShardSource, TokenStream
from language_model.preprocess import write_corpus

GOAL = 10e6  # tokens/s on one core


def synthetic_corpus(path: Path, shards: int, tokens_per_shard: int, vocab: int) -> Path:
    """Sentences of 1B-Words-like length (mean ~27 tokens) over a Zipf-distributed vocabulary."""
    rng = np.random.default_rng(0)
    words = [BOS.encode(), EOS.encode(), UNK.encode()] + [b"w%d" % i for i in range(vocab - 3)]

    def shard(i: int) -> tuple[str, np.ndarray, np.ndarray]:
        lengths = rng.integers(5, 50, size=tokens_per_shard // 27 + 1)
        lengths = lengths[: np.searchsorted(np.cumsum(lengths), tokens_per_shard) + 1]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tokens = np.minimum(rng.zipf(1.2, size=offsets[-1]) + 2, vocab - 1).astype(np.int32)
        tokens[offsets[:-1]], tokens[offsets[1:] - 1] = 0, 1  # <S> … </S>
        return f"news.en-{i + 1:05d}-of-00100", tokens, offsets

    items = [("train", shard(i)) for i in range(shards)]
    size = 8 * shards * tokens_per_shard + (64 << 20)
    return write_corpus(path, words, items, map_size=size)


def epoch_rate(stream: TokenStream, epoch: int) -> tuple[float, int]:
    """Tokens/s of one epoch (batch x window tokens handed out), and how many tokens."""
    tokens = 0
    start = time.perf_counter()
    for b in stream.batches(epoch):
        tokens += b.inputs.size
    return tokens / (time.perf_counter() - start), tokens


def measure(
    sources: dict[str, ShardSource], batch: int, bptt: int, repeats: int
) -> tuple[dict[str, float], int]:
    """Median tokens/s per source over ``repeats`` epochs (different shuffles).

    The sources take turns epoch by epoch, so a change in the machine's load hits both alike.
    """
    streams = {k: TokenStream(s, "train", batch, bptt, seed=1) for k, s in sources.items()}
    rates: dict[str, list[float]] = {k: [] for k in sources}
    tokens = 0
    for epoch in range(repeats):
        for name, stream in streams.items():
            rate, tokens = epoch_rate(stream, epoch)
            rates[name].append(rate)
    return {k: statistics.median(v) for k, v in rates.items()}, tokens


def main(argv: list[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m benchmarks.lm_data", description=__doc__)
    p.add_argument("--data-dir", help="a preprocessed corpus (default: a synthetic one)")
    p.add_argument("--shards", type=int, default=4, help="synthetic corpus: shards")
    p.add_argument(
        "--tokens-per-shard", type=int, default=2_000_000, help="synthetic corpus: tokens per shard"
    )
    p.add_argument("--vocab", type=int, default=793_471, help="synthetic vocabulary size")
    p.add_argument("--batch-size", type=int, default=128, help="streams read side by side")
    p.add_argument("--bptt", type=int, default=20, help="tokens per stream and batch")
    p.add_argument("--repeats", type=int, default=7, help="timed passes (median reported)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    args = p.parse_args(argv)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        print(f"pinned to CPU {cpu}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.data_dir) if args.data_dir else None
        if path is None:
            print(f"writing a synthetic corpus: {args.shards} x {args.tokens_per_shard} tokens")
            path = synthetic_corpus(
                Path(tmp) / "db", args.shards, args.tokens_per_shard, args.vocab
            )
        corpus = Corpus(path)
        arrays = []
        for i in range(len(corpus.shards("train"))):
            with corpus.shard("train", i) as (tokens, offsets):
                arrays.append((np.array(tokens), np.array(offsets)))
        memory = InMemorySource({"train": arrays})
        rates, n = measure(
            {"lmdb": corpus, "memory": memory}, args.batch_size, args.bptt, args.repeats
        )
        lm_rate, mem_rate = rates["lmdb"], rates["memory"]
        corpus.close()
    print(
        f"batch {args.batch_size} x bptt {args.bptt}, {n:,} tokens per epoch, "
        f"median of {args.repeats} epochs"
    )
    print(f"LMDB reader      {lm_rate / 1e6:8.1f} M tokens/s")
    print(f"in-memory NumPy  {mem_rate / 1e6:8.1f} M tokens/s")
    print(f"LMDB / in-memory {lm_rate / mem_rate:8.2f}")
    verdict = "met" if lm_rate >= GOAL else "NOT met"
    print(f"goal >= {GOAL / 1e6:.0f}M tokens/s on one core: {verdict}")


if __name__ == "__main__":
    main()
