"""Train one row of the paper's One Billion Words table (2-layer LSTM, adaptive softmax).

::

    python -m language_model.train --config configs/lm1b.yaml --row Apollo \
        --data-dir data/lm1b.lmdb [--out-dir O] [--seed N] [--epochs N] [--max-steps-per-epoch K] \
        [--device {cpu,cuda}] [--amp {none,fp16,bf16}] [--print-config] [key=value ...]
    torchrun --standalone --nproc_per_node=8 -m language_model.train ...   # same, on 8 GPUs

The data is the LMDB written by ``language_model.preprocess``, streamed one shard at a time
(``language_model.data``). Each update is one BPTT window, with the hidden state carried across
windows (detached), ``loss.backward(create_graph=spec.needs_create_graph)``, gradient-norm
clipping (``clip``) and the optimizer's own warmup for Apollo; each epoch ends with the test
perplexity on the heldout split, one step of the epoch-based schedule and the run directory's
files (``engine.run``). A checkpoint is also written every ``checkpoint_every`` updates with
each rank's data position, hidden state and partial sums, so an interrupted epoch resumes where
it stopped: re-run the same command. ``--max-steps-per-epoch K`` also caps evaluation at K
windows (``test_tokens`` says how many tokens the perplexity covers). The corpus's identity
(its vocabulary's size and SHA-256, and a digest of every shard's recorded counts and CRC-32s)
is the run's ``data_fingerprint``: a resume on another vocabulary, even one of the same size, or
on a corpus encoded from other text, is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engine import amp, cli, compiling, distributed, metrics
from engine import run as runs
from engine.optimization import build_training

from .corpus import Corpus
from .data import TokenStream
from .model import Hidden, LSTMLanguageModel
from .schema import MODEL_KEYS, SCHEMA

METRIC = "test_ppl"
#: Distributions whose versions config.json records (torch and numpy always are).
PACKAGES = ("lmdb",)


def perplexity(nll_sum: float, count: float) -> float:
    """exp(mean negative log-likelihood per predicted token); inf when it overflows a float."""
    if count <= 0:
        return float("nan")
    try:
        return math.exp(nll_sum / count)
    except OverflowError:
        return float("inf")


def check_model_section(config: Mapping[str, Any]) -> None:
    wrong = sorted(set(config["model"]) ^ set(MODEL_KEYS))
    if wrong:
        raise ValueError(
            f"{config['config']}: model keys must be {', '.join(MODEL_KEYS)}; "
            f"unknown or missing: {', '.join(wrong)}"
        )


def build_model(config: Mapping[str, Any], vocab_size: int) -> LSTMLanguageModel:
    check_model_section(config)
    return LSTMLanguageModel(vocab_size, **config["model"])


def data_fingerprint(corpus: Corpus) -> dict[str, Any]:
    """What a resume must find unchanged in the data (see engine.run: ``data_fingerprint``): what
    the token ids mean and which token streams the epochs walk (:meth:`Corpus.fingerprint`,
    from the metadata: nothing is re-read at start)."""
    return corpus.fingerprint()


def _detach(hidden: Hidden) -> Hidden:
    return hidden[0].detach(), hidden[1].detach()


def train_one_epoch(
    model: LSTMLanguageModel,
    ddp_model: torch.nn.Module,
    stream: TokenStream,
    create_graph: bool,
    run: runs.Run,
    resume: Mapping[str, Any],
) -> dict[str, float]:
    """Windows ``run.position`` … of the epoch (``run.epoch_updates`` in all); ``resume`` is
    this rank's mid-epoch state from the checkpoint (hidden state, partial sums) or {}."""
    ctx, config = run.ctx, run.config
    model.train()
    n = run.epoch_updates(stream.steps_per_epoch())
    hidden: Hidden | None = resume.get("hidden")
    if hidden is not None:
        hidden = (hidden[0].to(ctx.device), hidden[1].to(ctx.device))
    base = dict(resume.get("sums") or {"nll": 0.0, "count": 0.0})
    meter = metrics.Meter(ctx.device)
    tic = time.perf_counter()
    windows = stream.batches(run.epoch, run.position)
    for batch in metrics.progress(
        windows, ctx, total=n - run.position, desc=f"epoch {run.epoch + 1}"
    ):
        if batch.step >= n:
            break
        x = torch.from_numpy(batch.inputs).to(ctx.device, non_blocking=True)
        y = torch.from_numpy(batch.targets).to(ctx.device, non_blocking=True)
        if batch.new_stream or hidden is None:  # rows of a new shard continue nothing
            hidden = model.init_hidden(x.shape[0], ctx.device)
        else:
            hidden = _detach(hidden)  # truncated BPTT: no gradient into earlier windows
        # DDP cannot all-reduce a create_graph backward (pytorch#63812); second-order
        # optimizers average gradients and Hessian estimates over ranks themselves.
        with distributed.no_sync(ddp_model, skip_sync=create_graph):
            with amp.autocast(ctx.device, config["amp"]):
                batch_nll, batch_count, hidden = ddp_model(x, y, hidden)
            amp.backward(
                batch_nll / batch_count.clamp(min=1), run.scaler, create_graph=create_graph
            )
        norm = amp.step(
            run.optimizer, run.scaler, clip_norm=config["clip"], parameters=model.parameters()
        )
        run.optimizer.zero_grad(set_to_none=True)
        meter.add(nll=batch_nll, count=batch_count)
        run.update_done(batch_nll)
        if run.log_due():  # the windows since the last log point
            w = meter.read_window(ctx)
            loss = w["nll"] / max(w["count"], 1.0)
            run.log_progress(
                n,
                loss=loss,
                samples=w["count"],
                unit="tokens",
                grad_norm=norm,
                ppl=perplexity(w["nll"], w["count"]),
            )
        if run.checkpoint_due(n):
            sums = {k: base[k] + v for k, v in meter.local().items()}
            run.snapshot(hidden=(hidden[0].cpu(), hidden[1].cpu()), sums=sums)
        if run.diverged:
            break
    seconds = time.perf_counter() - tic
    this_run = meter.read(ctx)
    local = meter.local() or {"nll": 0.0, "count": 0.0}
    total = metrics.Meter(ctx.device, {k: base[k] + local[k] for k in local}).read(ctx)
    return {
        "train_loss": total["nll"] / max(total["count"], 1.0),
        "train_ppl": perplexity(total["nll"], total["count"]),
        "train_tokens": int(total["count"]),
        "tokens_per_s": this_run.get("count", 0.0) / max(seconds, 1e-9),
    }


def evaluate(
    model: LSTMLanguageModel,
    stream: TokenStream,
    amp_mode: str,
    ctx: distributed.Context,
    limit: int | None = None,
) -> dict[str, float]:
    """Perplexity exp(Σ nll / Σ tokens) of the whole test split.

    As in the authors' evaluation, the test split is one stream (``eval_batch_size`` 1) read
    in windows of ``eval_bptt`` (128) with the hidden state carried through, so the number
    does not depend on the number of GPUs. That stream cannot be split over ranks, so every
    rank computes it whole (same weights, same number) rather than idling in a collective
    that could time out during a long evaluation.
    """
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    hidden: Hidden | None = None
    for batch in stream.batches(0):
        if limit is not None and batch.step >= limit:
            break
        x = torch.from_numpy(batch.inputs).to(ctx.device)
        y = torch.from_numpy(batch.targets).to(ctx.device)
        if batch.new_stream or hidden is None:
            hidden = model.init_hidden(x.shape[0], ctx.device)
        with torch.no_grad(), amp.autocast(ctx.device, amp_mode):
            batch_nll, batch_count, hidden = model(x, y, hidden)
        nll += batch_nll.double()
        count += batch_count
    total, n = float(nll), float(count)
    return {
        "test_loss": total / max(n, 1.0),
        "test_ppl": perplexity(total, n),
        "test_tokens": int(n),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The entry point; returns ``results.json``'s content on rank 0."""
    config, print_only = cli.parse_run_args("python -m language_model.train", __doc__, SCHEMA, argv)
    if print_only:
        cli.print_config(config)
        return None
    check_model_section(config)
    compiling.refuse(config, "the LSTM is not launch-bound (cuDNN runs a layer in one call)")
    if config["update_freq"] != 1:
        raise ValueError(
            f"{config['config']}: update_freq must be 1 for the language model "
            "(an update is one BPTT window of batch_size rows)"
        )
    if config["data_dir"] is None:
        raise ValueError("--data-dir: required (the LMDB written by language_model.preprocess)")
    corpus = Corpus(config["data_dir"])
    try:
        config["data_fingerprint"] = data_fingerprint(corpus)
        with distributed.process_group(config["device"], config["dist_timeout"]) as ctx:
            return _train(config, ctx, corpus)
    finally:
        corpus.close()


def _train(config: dict[str, Any], ctx: distributed.Context, corpus: Corpus) -> dict | None:
    # everything is built (bad input fails) before the run directory opens
    batch = distributed.split_batch(config["batch_size"], ctx)
    where = {"rank": ctx.rank, "world_size": ctx.world_size}
    train_stream = TokenStream(corpus, "train", batch, config["bptt"], seed=config["seed"], **where)
    test_stream = TokenStream(
        corpus, "test", config["eval_batch_size"], config["eval_bptt"], shuffle=False
    )
    with runs.held_log("language_model") as notes:  # the model's warnings (dropped cutoffs)
        training = build_training(
            config,
            ctx.rank,
            ctx.device,
            lambda: build_model(config, corpus.vocab_size).to(ctx.device),
        )
    model, spec = training.model, training.spec
    with runs.start(config, ctx, metric=METRIC, mode="min", packages=PACKAGES) as run:
        run.log_held(notes)
        resume = run.restore(training)
        # The adaptive softmax skips tail clusters that no target of a batch falls in.
        ddp_model = distributed.wrap(model, ctx, find_unused_parameters=True)
        run.log_start(
            f"{sum(p.numel() for p in model.parameters()):,} parameters",
            f"{train_stream.steps_per_epoch()} steps/epoch",
        )
        while not run.finished:
            lr = run.epoch_lr()
            tic = time.perf_counter()
            train_stats = train_one_epoch(
                model, ddp_model, train_stream, spec.needs_create_graph, run, resume
            )
            resume = {}
            if run.check_divergence():  # a non-finite training loss: stop, nothing recorded
                break
            eval_stats = evaluate(
                model, test_stream, config["amp"], ctx, limit=config["max_steps_per_epoch"]
            )
            record = run.epoch_done(
                {"lr": lr, **train_stats, **eval_stats, "epoch_time_s": time.perf_counter() - tic}
            )
            run.snapshot()
            run.record(
                f"{run.progress_label()} lr {lr:.3g} | train ppl {record['train_ppl']:.2f} | test "
                f"ppl {record['test_ppl']:.2f} ({record['test_tokens']} tokens) | "
                f"{record['tokens_per_s']:.0f} tokens/s"
            )
        return run.finish(model)


if __name__ == "__main__":
    cli.main(main)
