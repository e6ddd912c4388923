"""Train one row of the paper's WMT-14 En→De table: Transformer-base, the authors' fairseq recipe.

::

    python -m nmt.train --config configs/wmt14.yaml --row Apollo --data-dir data/wmt14_en_de \\
        [--out-dir O] [--seed N] [--max-updates N] [--device {cpu,cuda}] [--amp {none,fp16,bf16}] \\
        [--print-config] [key=value ...]
    torchrun --standalone --nproc_per_node=8 -m nmt.train ...   # the same run on 8 GPUs

The data is a directory written by ``nmt.preprocess`` with the config's ``preprocess`` section.
Batches hold up to ``max_tokens`` tokens per GPU; an update accumulates micro-batches until it
holds ``tokens_per_update`` (65,536 = 8 GPUs × 8,192), whatever the number of GPUs, and sees
the same sentences either way (``nmt.data``). The loss is label-smoothed cross entropy summed
over the update's target tokens and divided by their number; the total gradient norm is
clipped (``clip``); the schedule steps after every update (``schedule.unit: update``), with
Apollo's warmup inside the optimizer. After each epoch: valid loss, and tokenized BLEU of the
valid set decoded with ``valid_generation``; a checkpoint at every epoch end (the last
``keep_last`` epoch checkpoints are kept for averaging, see ``nmt.evaluate``) and every
``checkpoint_every`` updates, so re-running the same command resumes, mid-epoch included.
``--max-steps-per-epoch K`` cuts each epoch and the validation to K batches (smoke tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine import amp, cli, compiling, distributed, metrics
from engine import run as runs
from engine.optimization import Training, build_training

from .data import EpochOrder, ParallelData, Split, token_batches
from .model import build_model, label_smoothed_loss
from .schema import SCHEMA
from .score import tokenized_bleu
from .search import generation_options, translate
from .text import remove_bpe

NO_BLEU = "none"  # valid_generation that turns the valid BLEU off
PACKAGES = ("numpy", "sacremoses", "subword-nmt", "sacrebleu")


def perplexity(nll_sum: float, count: float) -> float:
    """exp(mean negative log-likelihood per target token); inf when it overflows."""
    try:
        return math.exp(nll_sum / max(count, 1.0))
    except OverflowError:
        return float("inf")


def update_freq(config: Mapping[str, Any], world_size: int) -> int:
    """Micro-batches per update so that one update holds ``tokens_per_update`` tokens."""
    per_update = config["tokens_per_update"]
    if per_update is None:
        return config["update_freq"]
    if config["update_freq"] != 1:
        raise ValueError(f"{config['config']}: set tokens_per_update or update_freq, not both")
    per_step = config["max_tokens"] * world_size
    if per_update % per_step:
        raise ValueError(
            f"{config['config']}: tokens_per_update {per_update} is not a multiple of "
            f"max_tokens {config['max_tokens']} x {world_size} GPU(s); change max_tokens or the "
            "number of GPUs"
        )
    return per_update // per_step


def check_data(config: Mapping[str, Any], data: ParallelData) -> None:
    """The data directory must be prepared as the config's ``preprocess`` section says."""
    if data.meta["preprocess"] != config["preprocess"]:
        diffs = [
            f"{k}={data.meta['preprocess'].get(k)!r} (config: {v!r})"
            for k, v in config["preprocess"].items()
            if data.meta["preprocess"].get(k) != v
        ]
        raise ValueError(
            f"--data-dir {data.path} was prepared with {', '.join(diffs) or 'other options'}; "
            "prepare it with this config, or pass the same preprocess.KEY=VALUE overrides"
        )


def train_epoch(
    model: torch.nn.Module,
    ddp_model: torch.nn.Module,
    split: Split,
    order: EpochOrder,
    create_graph: bool,
    run: runs.Run,
    resume: Mapping[str, Any],
) -> dict[str, float]:
    """Updates ``run.position`` … of the epoch; ``resume`` holds this rank's partial sums."""
    ctx, config = run.ctx, run.config
    pad, eps = split.dictionary.pad, config["label_smoothing"]
    model.train()
    n = run.epoch_updates(order.updates_per_epoch())
    meter = metrics.Meter(ctx.device, resume.get("sums"))
    before = dict(resume.get("sums") or {}).get("tokens", 0.0)
    tic = time.perf_counter()
    updates = order.updates(run.epoch, run.position)
    for u, mine, group in metrics.progress(
        updates, ctx, total=n - run.position, desc=f"epoch {run.epoch + 1}"
    ):
        if u >= n:
            break
        # fairseq's normalisation: the gradient of the update's summed loss over its tokens
        # (all ranks); DDP averages over ranks, hence the world_size.
        scale = ctx.world_size / sum(int(split.tgt_sizes[b].sum()) for b in group)
        losses = []
        for i, index in enumerate(mine):
            batch = split.collate(index).to(ctx.device)
            skip_sync = create_graph or i < len(mine) - 1
            with distributed.no_sync(ddp_model, skip_sync=skip_sync):
                with amp.autocast(ctx.device, config["amp"]):
                    logits = ddp_model(batch.src_tokens, batch.prev_output_tokens)
                loss, nll = label_smoothed_loss(logits, batch.target, eps, pad)
                amp.backward(loss * scale, run.scaler, create_graph=create_graph)
            meter.add(loss=loss, nll=nll, tokens=batch.ntokens, sentences=len(index))
            losses.append(loss.detach())
        norm = amp.step(
            run.optimizer, run.scaler, clip_norm=config["clip"], parameters=model.parameters()
        )
        run.optimizer.zero_grad(set_to_none=True)
        run.update_done(losses)
        if run.log_due():  # the updates since the last log point
            w = meter.read_window(ctx)
            tokens = max(w["tokens"], 1.0)
            run.log_progress(
                n,
                loss=w["loss"] / tokens,
                samples=w["tokens"],
                unit="tokens",
                grad_norm=norm,
                nll=w["nll"] / tokens,
            )
        if run.checkpoint_due(n):
            run.snapshot(sums=meter.local())
        if run.diverged:
            break
    seconds = time.perf_counter() - tic
    s = meter.read(ctx)
    tokens = max(s.get("tokens", 0.0), 1.0)
    return {
        "train_loss": s.get("loss", 0.0) / tokens,
        "train_nll_loss": s.get("nll", 0.0) / tokens,
        "train_ppl": perplexity(s.get("nll", 0.0), tokens),
        "train_tokens": int(s.get("tokens", 0)),
        "tokens_per_s": (s.get("tokens", 0.0) - before * ctx.world_size) / max(seconds, 1e-9),
    }


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    split: Split,
    config: Mapping[str, Any],
    ctx: distributed.Context,
) -> dict[str, float]:
    """Valid loss over every valid pair, and tokenized BLEU of its translations (BPE removed,
    no compound splitting, as fairseq's ``--eval-tokenized-bleu``). Both are split over ranks."""
    model.eval()
    d = split.dictionary
    batches = token_batches(
        split.src_sizes,
        split.tgt_sizes,
        config["max_tokens"],
        seed=None,
        batch_multiple=config["batch_multiple"],
    )
    if config["max_steps_per_epoch"]:
        batches = batches[: config["max_steps_per_epoch"]]
    meter = metrics.Meter(ctx.device)
    for index in batches[ctx.rank :: ctx.world_size]:
        batch = split.collate(index).to(ctx.device)
        with amp.autocast(ctx.device, config["amp"]):
            logits = model(batch.src_tokens, batch.prev_output_tokens)
        loss, nll = label_smoothed_loss(logits, batch.target, config["label_smoothing"], d.pad)
        meter.add(loss=loss, nll=nll, tokens=batch.ntokens)
    s = meter.read(ctx)
    tokens = max(s.get("tokens", 0.0), 1.0)
    out = {
        "valid_loss": s.get("loss", 0.0) / tokens,
        "valid_nll_loss": s.get("nll", 0.0) / tokens,
        "valid_ppl": perplexity(s.get("nll", 0.0), tokens),
    }
    if config["valid_generation"] == NO_BLEU:
        return out
    sentences = sorted(int(i) for b in batches for i in b)
    mine = sentences[ctx.rank :: ctx.world_size]
    options = generation_options(dict(config), config["valid_generation"])
    hyps = translate(
        model,
        split,
        mine,
        options,
        batch_size=config["decode_batch_size"],
        autocast=lambda: amp.autocast(ctx.device, config["amp"]),
    )
    decoded = dict(
        pair
        for part in distributed.gather_objects(list(zip(mine, hyps, strict=True)), ctx)
        for pair in part
    )
    hyp_text = [remove_bpe(d.decode(decoded[i])) for i in sentences]
    ref_text = [remove_bpe(d.decode(split.tgt.sentence(i))) for i in sentences]
    out["valid_bleu"] = tokenized_bleu(hyp_text, ref_text, split_compounds=False).score
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The entry point; returns ``results.json``'s content on rank 0."""
    config, print_only = cli.parse_run_args("python -m nmt.train", __doc__, SCHEMA, argv)
    if print_only:
        cli.print_config(config)
        return None
    compiling.refuse(config, "translation batches change shape every update")
    if config["data_dir"] is None:
        raise ValueError("--data-dir: required (a directory written by nmt.preprocess)")
    data = ParallelData(config["data_dir"])
    check_data(config, data)
    for name in (config["generation"], config["valid_generation"]):
        if name != NO_BLEU:
            generation_options(config, name)
    config["data_fingerprint"] = data.fingerprint()  # a resume on other data is refused
    with distributed.process_group(config["device"], config["dist_timeout"]) as ctx:
        return _train(config, ctx, data)


@dataclass
class Parts:
    """What the loop trains with, built before the run directory opens."""

    training: Training  # model, optimizer (+ its registry record), schedule, scaler
    train: Split
    valid: Split
    order: EpochOrder
    details: list[str]  # for the run's first log line


def build(config: dict[str, Any], ctx: distributed.Context, data: ParallelData) -> Parts:
    """Micro-batches per update (they depend on the number of ranks), batches, model,
    optimizer, schedule and scaler: everything, so bad input fails before anything is
    written."""
    config["update_freq"] = update_freq(config, ctx.world_size)
    train, valid = data.split("train"), data.split("valid")
    for split in (train, valid):  # (fairseq skips long training pairs; none pass preprocess)
        split.check_positions(config["model"]["max_positions"], f"--data-dir {data.path}")
    try:
        batches = token_batches(
            train.src_sizes,
            train.tgt_sizes,
            config["max_tokens"],
            seed=config["seed"],
            batch_multiple=config["batch_multiple"],
        )
    except ValueError as exc:  # a sentence longer than max_tokens
        raise ValueError(f"--data-dir {data.path}: train: {exc}") from None
    order = EpochOrder(
        batches,
        seed=config["seed"],
        update_freq=config["update_freq"],
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    if order.updates_per_epoch() == 0:
        raise ValueError(
            f"--data-dir {data.path}: {len(batches)} batches, fewer than one update needs "
            f"({config['update_freq']} x {ctx.world_size}); lower tokens_per_update"
        )
    d = data.dictionary
    training = build_training(
        config,
        ctx.rank,
        ctx.device,
        lambda: build_model(config["model"], len(d), d.pad, config["config"]).to(ctx.device),
    )
    details = [
        f"{sum(p.numel() for p in training.model.parameters()):,} parameters",
        f"{len(train):,} pairs in {len(batches):,} batches",
        f"{order.updates_per_epoch():,} updates/epoch of {config['update_freq']} "
        f"micro-batch(es) per rank",
    ]
    return Parts(training, train, valid, order, details)


def _train(config: dict[str, Any], ctx: distributed.Context, data: ParallelData) -> dict | None:
    p = build(config, ctx, data)
    model, spec = p.training.model, p.training.spec
    bleu = config["valid_generation"] != NO_BLEU
    metric, mode = ("valid_bleu", "max") if bleu else ("valid_loss", "min")
    with runs.start(
        config, ctx, metric=metric, mode=mode, packages=PACKAGES, also_resumable=("update_freq",)
    ) as run:
        resume = run.restore(p.training)
        ddp_model = distributed.wrap(model, ctx)
        run.log_start(*p.details)
        while not run.finished:
            tic = time.perf_counter()
            stats = train_epoch(
                model, ddp_model, p.train, p.order, spec.needs_create_graph, run, resume
            )
            resume = {}
            if run.check_divergence():  # a non-finite training loss: stop, nothing recorded
                break
            stats.update(validate(model, p.valid, config, ctx))
            lr = run.epoch_lr()
            record = run.epoch_done({"lr": lr, **stats, "epoch_time_s": time.perf_counter() - tic})
            run.snapshot()
            bleu_text = f" | valid BLEU {record['valid_bleu']:.2f}" if bleu else ""
            run.record(
                f"{run.progress_label()} lr {lr:.3g} | train loss {record['train_loss']:.3f} | "
                f"valid loss {record['valid_loss']:.3f} ppl {record['valid_ppl']:.2f}"
                f"{bleu_text} | {record['tokens_per_s']:.0f} tokens/s"
            )
        return run.finish(model)


if __name__ == "__main__":
    cli.main(main)
