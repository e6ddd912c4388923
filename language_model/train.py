"""Train one row of the paper's One Billion Words table (2-layer LSTM, adaptive softmax).

::

    python -m language_model.train --config configs/lm1b.yaml --row Apollo \
        --data-dir data/lm1b.lmdb [--out-dir O] [--seed N] [--epochs N] [--max-steps-per-epoch K] \
        [--device {cpu,cuda}] [--amp {none,fp16,bf16}] [--print-config] [key=value ...]
    torchrun --standalone --nproc_per_node=8 -m language_model.train ...   # same, on 8 GPUs

The data is the LMDB written by ``language_model.preprocess``, streamed one shard at a time
(``language_model.data``). Each epoch: BPTT windows with the hidden state carried across them
(detached), ``loss.backward(create_graph=spec.needs_create_graph)``, gradient-norm clipping
(``clip``), the optimizer's own warmup for Apollo; then test perplexity on the heldout split,
one step of the epoch-based schedule, and the run directory's files (``engine.metrics``).
A checkpoint is also written every ``checkpoint_every`` updates with the data position and
hidden state, so an interrupted epoch resumes where it stopped: re-run the same command.
``--max-steps-per-epoch K`` also caps evaluation at K windows (``test_tokens`` says how many
tokens the perplexity covers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from engine import amp, checkpoint, cli, distributed, metrics
from engine.optimization import build_optimizer, build_schedule, restore_schedule

from .corpus import Corpus
from .data import TokenStream
from .model import Hidden, LSTMLanguageModel

#: This task's config keys (the engine adds seed, epochs, optimizer, schedule, ...).
SCHEMA = {
    "batch_size": int,
    "eval_batch_size": int,
    "eval_bptt": int,
    "bptt": int,
    "clip": (float, type(None)),
    "checkpoint_every": int,
    "log_every": int,
    "model": dict,
}
MODEL_KEYS = ("embed_dim", "hidden_size", "num_layers", "dropout", "cutoffs", "div_value")
METRIC = "test_ppl"
#: Keys a resumed run may change besides engine.checkpoint.RESUMABLE_CHANGES.
RESUMABLE_CHANGES = ("checkpoint_every", "log_every")


def build_model(config: Mapping[str, Any], vocab_size: int) -> LSTMLanguageModel:
    section = config["model"]
    wrong = sorted(set(section) ^ set(MODEL_KEYS))
    if wrong:
        raise ValueError(
            f"{config['config']}: model keys must be {', '.join(MODEL_KEYS)}; "
            f"unknown or missing: {', '.join(wrong)}"
        )
    return LSTMLanguageModel(vocab_size, **section)


def _detach(hidden: Hidden) -> Hidden:
    return hidden[0].detach(), hidden[1].detach()


def train_one_epoch(
    model: torch.nn.Module,
    ddp_model: torch.nn.Module,
    stream: TokenStream,
    optimizer: torch.optim.Optimizer,
    create_graph: bool,
    scaler: torch.amp.GradScaler | None,
    config: Mapping[str, Any],
    ctx: distributed.Context,
    epoch: int,
    resume: Mapping[str, Any],
    save: Callable[[int, Hidden, dict[str, float]], None],
    log: Any,
) -> dict[str, float]:
    """Windows ``resume['step']`` … of ``epoch`` (at most ``max_steps_per_epoch`` in all)."""
    model.train()
    limit = config["max_steps_per_epoch"]
    n = min(stream.steps_per_epoch(), limit) if limit else stream.steps_per_epoch()
    hidden: Hidden | None = resume.get("hidden")
    if hidden is not None:
        hidden = (hidden[0].to(ctx.device), hidden[1].to(ctx.device))
    base = dict(resume.get("sums") or {"nll": 0.0, "count": 0.0})
    nll = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    tic = time.perf_counter()
    start = resume.get("step", 0)
    bar = metrics.progress(
        stream.batches(epoch, start), ctx, total=n - start, desc=f"epoch {epoch + 1}"
    )
    for batch in bar:
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
            amp.backward(batch_nll / batch_count.clamp(min=1), scaler, create_graph=create_graph)
        amp.step(optimizer, scaler, clip_norm=config["clip"], parameters=model.parameters())
        optimizer.zero_grad(set_to_none=True)
        nll += batch_nll.detach().double()
        count += batch_count
        done = batch.step + 1
        if config["log_every"] and done % config["log_every"] == 0:
            s = distributed.all_reduce_sums({"nll": float(nll), "count": float(count)}, ctx)
            log.info(
                f"epoch {epoch + 1} step {done}/{n} train ppl "
                f"{metrics.perplexity(s['nll'], s['count']):.2f} lr "
                f"{optimizer.param_groups[0]['lr']:.3g} "
                f"{s['count'] / (time.perf_counter() - tic):.0f} tokens/s"
            )
        if config["checkpoint_every"] and done % config["checkpoint_every"] == 0 and done < n:
            sums = {"nll": base["nll"] + float(nll), "count": base["count"] + float(count)}
            save(done, _detach(hidden), sums)
    seconds = time.perf_counter() - tic
    local = {"nll": float(nll), "count": float(count)}
    this_run = distributed.all_reduce_sums(local, ctx)
    total = distributed.all_reduce_sums({k: base[k] + local[k] for k in local}, ctx)
    return {
        "train_loss": total["nll"] / max(total["count"], 1.0),
        "train_ppl": metrics.perplexity(total["nll"], total["count"]),
        "train_tokens": int(total["count"]),
        "tokens_per_s": this_run["count"] / max(seconds, 1e-9),
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
        "test_ppl": metrics.perplexity(total, n),
        "test_tokens": int(n),
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The entry point; returns ``results.json``'s content on rank 0."""
    config, print_only = cli.parse_run_args(
        "python -m language_model.train", __doc__.split("\n")[0], SCHEMA, argv
    )
    if print_only:
        cli.print_config(config)
        return None
    if config["data_dir"] is None:
        raise ValueError("--data-dir: required (the LMDB written by language_model.preprocess)")
    corpus = Corpus(config["data_dir"])  # bad data fails before the run directory is touched
    try:
        with distributed.process_group(config["device"]) as ctx:
            return _train(config, ctx, corpus)
    finally:
        corpus.close()


def _train(config: dict[str, Any], ctx: distributed.Context, corpus: Corpus) -> dict | None:
    out_dir = Path(config["out_dir"])
    ckpt_path = out_dir / "checkpoint.pt"
    state = checkpoint.load(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        checkpoint.check_resumable(state["config"], config, ckpt_path, RESUMABLE_CHANGES)
        if state["vocab_size"] != corpus.vocab_size:
            raise ValueError(
                f"{ckpt_path}: trained with {state['vocab_size']} words, but "
                f"{corpus.path} has {corpus.vocab_size}"
            )
    batch = distributed.split_batch(config["batch_size"], ctx)
    where = {"rank": ctx.rank, "world_size": ctx.world_size}
    train_stream = TokenStream(corpus, "train", batch, config["bptt"], seed=config["seed"], **where)
    test_stream = TokenStream(
        corpus, "test", config["eval_batch_size"], config["eval_bptt"], shuffle=False
    )

    log = distributed.get_logger(ctx, out_dir)
    # The model's warnings (dropped cutoffs) go to train.log too, once (rank 0).
    package_log = logging.getLogger("language_model")
    package_log.handlers = list(log.handlers) if ctx.is_main else [logging.NullHandler()]
    checkpoint.seed_everything(config["seed"])  # identical initial weights on every rank
    model = build_model(config, corpus.vocab_size).to(ctx.device)
    optimizer, spec = build_optimizer(model.parameters(), config["optimizer"])
    schedule = build_schedule(optimizer, config["schedule"], config["epochs"])
    scaler = amp.grad_scaler(ctx.device, config["amp"])
    checkpoint.seed_everything(config["seed"] + ctx.rank)  # but different dropout draws
    history: list[dict[str, Any]] = []
    resume: dict[str, Any] = {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_schedule(schedule, state["schedule"], optimizer)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ranks = state["ranks"]
        mine = ranks[ctx.rank] if len(ranks) == ctx.world_size else ranks[0]
        checkpoint.set_rng_state(mine["rng"])
        history = list(state["history"])
        if state["position"]:
            if len(ranks) != ctx.world_size:
                raise ValueError(
                    f"{ckpt_path}: stopped mid-epoch with {len(ranks)} ranks; "
                    f"resume it with the same number, not {ctx.world_size}"
                )
            resume = {"step": state["position"], "hidden": mine["hidden"], "sums": mine["sums"]}
    # The adaptive softmax skips tail clusters that no target of a batch falls in.
    ddp_model = distributed.wrap(model, ctx, find_unused_parameters=True)

    if ctx.is_main:
        metrics.write_config(out_dir, config, ctx)
        if state is not None:  # killed between checkpoint and metrics: the checkpoint wins
            metrics.write_metrics(out_dir, history)
    writer = metrics.tensorboard(out_dir, ctx)

    def save(epoch: int, position: int, hidden: Hidden | None, sums: dict | None) -> None:
        mine = {
            "rng": checkpoint.rng_state(),
            "sums": sums,
            "hidden": None if hidden is None else (hidden[0].cpu(), hidden[1].cpu()),
        }
        ranks = distributed.gather_objects(mine, ctx)
        if ctx.is_main:
            checkpoint.save(
                ckpt_path,
                {
                    "epoch": epoch,
                    "position": position,
                    "config": config,
                    "vocab_size": corpus.vocab_size,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "ranks": ranks,
                    "history": history,
                },
            )

    start = len(history)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        f"{config['row']} / seed {config['seed']}: "
        f"{'resuming epoch ' + str(start + 1) if start or resume else 'starting'}"
        f"{' at step ' + str(resume['step']) if resume else ''}, {config['epochs']} epochs, "
        f"{n_params:,} parameters, {train_stream.steps_per_epoch()} steps/epoch, "
        f"{ctx.world_size} rank(s) on {ctx.device.type} -> {out_dir}"
    )
    for epoch in range(start, config["epochs"]):
        lr = optimizer.param_groups[0]["lr"]
        tic = time.perf_counter()
        train_stats = train_one_epoch(
            model,
            ddp_model,
            train_stream,
            optimizer,
            spec.needs_create_graph,
            scaler,
            config,
            ctx,
            epoch,
            resume,
            lambda pos, h, s, e=epoch: save(e, pos, h, s),
            log,
        )
        resume = {}
        eval_stats = evaluate(
            model, test_stream, config["amp"], ctx, limit=config["max_steps_per_epoch"]
        )
        schedule.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **train_stats,
            **eval_stats,
            "epoch_time_s": time.perf_counter() - tic,
        }
        history.append(record)
        save(epoch + 1, 0, None, None)
        if ctx.is_main:
            metrics.write_metrics(out_dir, history)
            metrics.write_results(
                out_dir,
                config,
                history,
                metric=METRIC,
                mode="min",
                finished=epoch + 1 == config["epochs"],
            )
            metrics.log_scalars(writer, record, epoch + 1, skip=("epoch",))
        log.info(
            f"epoch {epoch + 1}/{config['epochs']} lr {lr:.3g} | train ppl "
            f"{record['train_ppl']:.2f} | test ppl {record['test_ppl']:.2f} "
            f"({record['test_tokens']} tokens) | {record['tokens_per_s']:.0f} tokens/s"
        )
        distributed.barrier(ctx)
    writer.close()
    package_log.handlers.clear()
    return metrics.finish(out_dir, config, history, model, ctx, log, metric=METRIC, mode="min")


if __name__ == "__main__":
    cli.main(run)
