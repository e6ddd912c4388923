"""Training tokens/s of nmt.train's real loop against a bare forward+backward+step.

::

    python -m benchmarks.nmt_step [--models base,demo] [--device cpu|cuda] [--amp none|bf16]
        [--updates K] [--rounds R] [--max-tokens N] [--threads T]
    python -m benchmarks.nmt_step --device cuda --amp bf16 --updates 20 --rounds 3   # a GPU

Both sides train the same model (Transformer-base from ``configs/wmt14.yaml``, and the small
one of ``configs/nmt_demo.yaml``) with the same optimizer (the Apollo row) on the same batches
of a synthetic corpus in the real on-disk format (random ids, sentence lengths 5-60):

- **loop**: ``nmt.train.train_epoch`` inside a real run directory (``engine.run``): batches
  gathered from the memory-mapped arrays, moved to the device, autocast, label-smoothed loss,
  gradient accumulation bookkeeping, clipping, the schedule, the metrics meter;
- **bare**: the same micro-batches collated and put on the device beforehand, then only
  ``model(src, prev)`` → loss → ``backward`` → ``clip_grad_norm_`` → ``step`` → ``zero_grad``.

After one untimed round each (allocation, kernel choice), the two take turns for ``--rounds``
rounds of ``--updates`` updates (a shared CPU slows both alike), and the medians are compared.
Goal: the loop adds at most 10% to the bare step. Checkpoints, validation and logging are off:
they happen at epoch ends and every N updates, not per update.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine import amp, cli, distributed
from engine import config as cfg
from engine import run as runs
from nmt import train
from nmt.data import FORMAT, FORMAT_VERSION, ParallelData, array_paths, write_meta
from nmt.dictionary import Dictionary
from nmt.model import label_smoothed_loss

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"base": ("configs/wmt14.yaml", 40_960), "demo": ("configs/nmt_demo.yaml", 3_144)}
GOAL = 0.10


def synthetic_data(root: Path, vocab_size: int, pairs: int, preprocess: dict, seed: int = 0):
    """A data directory in nmt.preprocess's layout with random sentences (train and valid)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    d = Dictionary([f"w{i}" for i in range(vocab_size - 4)], [1] * (vocab_size - 4))
    d.save(root / "dict.txt")
    splits = {}
    for split, n in (("train", pairs), ("valid", 8)):
        for lang in ("en", "de"):
            lengths = rng.integers(5, 61, n)
            tokens = rng.integers(4, vocab_size, int(lengths.sum())).astype(np.int32)
            tokens_path, offsets_path = array_paths(root, split, lang)
            np.save(tokens_path, tokens)
            np.save(offsets_path, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        splits[split] = {"sentences": n}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source_lang": "en",
        "target_lang": "de",
        "vocab_size": len(d),
        "preprocess": preprocess,
        "splits": splits,
        "fingerprint": "synthetic",
    }
    write_meta(root, meta)
    return ParallelData(root)


def measure(model_name: str, args: argparse.Namespace, tmp: Path) -> dict:
    table_file, vocab = MODELS[model_name]
    table = cfg.load_table(ROOT / table_file)
    overrides = [
        "valid_generation=none",
        "checkpoint_every=0",
        "keep_last=0",
        "log_every=0",
        f"max_updates={args.updates}",
    ]
    if args.max_tokens:
        overrides += [f"max_tokens={args.max_tokens}", f"tokens_per_update={args.max_tokens}"]
    config = cfg.resolve(
        table,
        "Apollo",
        "recipe",
        schema=train.SCHEMA,
        flags={"device": args.device, "amp": args.amp},
        overrides=overrides,
    )
    tokens = (args.rounds + 1) * 2 * args.updates * config["tokens_per_update"]
    data = synthetic_data(
        tmp / f"data_{model_name}", vocab, max(tokens // 30, 2000), config["preprocess"]
    )
    config.update(
        out_dir=str(tmp / f"run_{model_name}"),
        data_dir=str(data.path),
        data_fingerprint=data.fingerprint(),
    )
    ctx = distributed.setup(args.device)
    p = train.build(config, ctx, data)
    with runs.start(config, ctx, metric="valid_loss", mode="min") as run:
        run.log.handlers.clear()  # the benchmark prints its own table
        run.restore(p.training)
        model = p.training.model
        order = p.order.order(0)
        per_update = config["update_freq"]
        pad, eps = data.dictionary.pad, config["label_smoothing"]
        sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)

        def loop() -> tuple[float, int]:
            start_update = run.update
            config["max_updates"] = run.update + args.updates
            sync()
            tic = time.perf_counter()
            train.train_epoch(model, model, p.train, p.order, False, run, {})
            sync()
            seconds = time.perf_counter() - tic
            done = order[start_update * per_update : run.update * per_update]
            return seconds, sum(int(p.train.tgt_sizes[p.order.batches[i]].sum()) for i in done)

        def bare() -> tuple[float, int]:
            # the batches the loop's last round trained on (shapes the device has seen, so
            # neither side pays first-shape costs the other does not), collated and moved
            # beforehand
            start = ((run.update - args.updates) * per_update) % len(order)
            idx = [
                p.order.batches[order[(start + k) % len(order)]]
                for k in range(args.updates * per_update)
            ]
            batches = [p.train.collate(i).to(ctx.device) for i in idx]
            optimizer = run.optimizer
            model.train()
            sync()
            tic = time.perf_counter()
            for k, b in enumerate(batches):
                with amp.autocast(ctx.device, config["amp"]):
                    logits = model(b.src_tokens, b.prev_output_tokens)
                loss, _ = label_smoothed_loss(logits, b.target, eps, pad)
                (loss / b.ntokens).backward()
                if (k + 1) % per_update == 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            sync()
            return time.perf_counter() - tic, sum(b.ntokens for b in batches)

        loop(), bare()  # untimed: allocation, kernel choice
        rates: dict[str, list[float]] = {"loop": [], "bare": []}
        for _ in range(args.rounds):
            for name, fn in (("loop", loop), ("bare", bare)):
                seconds, n = fn()
                rates[name].append(n / seconds)
        params = sum(t.numel() for t in model.parameters())
    loop_rate, bare_rate = (statistics.median(rates[k]) for k in ("loop", "bare"))
    return {
        "model": model_name,
        "params": params,
        "tokens_per_update": config["tokens_per_update"],
        "loop": loop_rate,
        "bare": bare_rate,
        "overhead": bare_rate / loop_rate - 1,
    }


def main() -> None:
    p = cli.ArgumentParser(prog="python -m benchmarks.nmt_step", description=__doc__)
    p.add_argument("--models", default="demo,base", help="comma-separated: base, demo")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    p.add_argument(
        "--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision"
    )
    p.add_argument("--updates", type=int, default=3, help="updates per timed round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per side")
    p.add_argument(
        "--max-tokens",
        type=int,
        help="tokens per update (default: the config's; CPU default 1024 for base)",
    )
    p.add_argument("--threads", type=int, help="torch threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"nmt_step on {args.device} ({where}), amp {args.amp}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.rounds} rounds of {args.updates} updates "
        "each side"
    )
    print("| model | parameters | tokens/update | loop tokens/s | bare tokens/s | loop overhead |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            saved = args.max_tokens
            if args.max_tokens is None and name == "base" and args.device == "cpu":
                args.max_tokens = 1024  # 8,192 tokens of Transformer-base take minutes on a CPU
            r = measure(name, args, Path(tmp))
            args.max_tokens = saved
            ok = "ok" if r["overhead"] <= GOAL else "over the 10% goal"
            print(
                f"| {r['model']} | {r['params']:,} | {r['tokens_per_update']:,} | "
                f"{r['loop']:,.0f} | {r['bare']:,.0f} | {100 * r['overhead']:+.1f}% ({ok}) |"
            )


if __name__ == "__main__":
    main()
