"""Train one row of the paper's image table (ResNet-110 on CIFAR, ResNeXt-50 on ImageNet).

::

    python -m classification.train --config configs/cifar10.yaml --row Apollo --schedule cosine \
        --data-dir data/cifar10 [--out-dir O] [--seed N] [--epochs N] [--max-steps-per-epoch K] \
        [--device {cpu,cuda}] [--amp {none,fp16,bf16}] [--print-config] [key=value ...]
    torchrun --standalone --nproc_per_node=8 -m classification.train ...   # same, on 8 GPUs

Each epoch: train (``loss.backward(create_graph=spec.needs_create_graph)``, the optimizer's
own warmup for Apollo/AdaHessian), evaluate top-1/top-5 on the test (val) set, step the
epoch-based schedule, then write ``metrics.jsonl``, ``results.json`` and the checkpoint
(see ``engine.metrics``). Re-running the same command resumes from the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine import amp, checkpoint, cli, distributed, metrics
from engine.optimization import build_optimizer, build_schedule, restore_schedule

from .data import build_loaders
from .models import build_model

#: This task's config keys (the engine adds seed, epochs, optimizer, schedule, ...).
SCHEMA = {
    "dataset": str,
    "num_classes": int,
    "model": str,
    "batch_size": int,
    "eval_batch_size": int,
    "augmentation": dict,
}
METRIC = "test_acc1"


def train_one_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    create_graph: bool,
    scaler: torch.amp.GradScaler | None,
    config: Mapping[str, Any],
    ctx: distributed.Context,
    epoch: int,
) -> dict[str, float]:
    """One pass over the training set (or ``max_steps_per_epoch`` batches of it)."""
    model.train()
    meter = metrics.Meter()
    limit = config["max_steps_per_epoch"]
    total = min(len(loader), limit) if limit else len(loader)
    bar = metrics.progress(loader, ctx, total=total, desc=f"epoch {epoch + 1}")
    for i, (images, target) in enumerate(bar):
        if limit is not None and i >= limit:
            break
        images = images.to(ctx.device, non_blocking=True)
        target = target.to(ctx.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        # DDP cannot all-reduce a create_graph backward (pytorch#63812); second-order
        # optimizers average gradients and Hessian estimates over ranks themselves.
        with distributed.no_sync(model, skip_sync=create_graph):
            with amp.autocast(ctx.device, config["amp"]):
                logits = model(images)
                loss = F.cross_entropy(logits, target)
            amp.backward(loss, scaler, create_graph=create_graph)
        amp.step(optimizer, scaler)
        (c1,) = metrics.correct_topk(logits.float(), target, ks=(1,))
        n = target.numel()
        meter.add(loss=loss.item() * n, correct1=c1, count=n)
    optimizer.zero_grad(set_to_none=True)  # frees the graph create_graph kept alive
    sums = distributed.all_reduce_sums(meter.sums, ctx)
    n = max(sums.get("count", 0.0), 1.0)
    return {
        "train_loss": sums.get("loss", 0.0) / n,
        "train_acc1": 100.0 * sums.get("correct1", 0.0) / n,
        "train_samples": int(sums.get("count", 0)),
    }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, amp_mode: str,
    ctx: distributed.Context,
) -> dict[str, float]:  # fmt: skip
    """Loss and top-1/top-5 accuracy (%) over every rank's slice of the eval set."""
    model.eval()
    meter = metrics.Meter()
    for images, target in loader:
        images, target = images.to(ctx.device), target.to(ctx.device)
        with amp.autocast(ctx.device, amp_mode):
            logits = model(images).float()
        c1, c5 = metrics.correct_topk(logits, target, ks=(1, 5))
        n = target.numel()
        meter.add(
            loss=F.cross_entropy(logits, target, reduction="sum").item(), c1=c1, c5=c5, count=n
        )
    sums = distributed.all_reduce_sums(meter.sums, ctx)
    n = max(sums.get("count", 0.0), 1.0)
    return {
        "test_loss": sums.get("loss", 0.0) / n,
        "test_acc1": 100.0 * sums.get("c1", 0.0) / n,
        "test_acc5": 100.0 * sums.get("c5", 0.0) / n,
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The entry point; returns ``results.json``'s content on rank 0."""
    config, print_only = cli.parse_run_args(
        "python -m classification.train", __doc__.split("\n")[0], SCHEMA, argv
    )
    if print_only:
        cli.print_config(config)
        return None
    with distributed.process_group(config["device"]) as ctx:
        torch.backends.cudnn.benchmark = ctx.device.type == "cuda"  # fixed input sizes: autotune
        return _train(config, ctx)


def _train(config: dict[str, Any], ctx: distributed.Context) -> dict[str, Any] | None:
    out_dir = Path(config["out_dir"])
    ckpt_path = out_dir / "checkpoint.pt"
    state = checkpoint.load(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        checkpoint.check_resumable(state["config"], config, ckpt_path)
    checkpoint.seed_everything(config["seed"])  # identical initial weights on every rank
    model = build_model(config["model"], config["num_classes"]).to(ctx.device)
    optimizer, spec = build_optimizer(model.parameters(), config["optimizer"])
    if config["amp"] == "fp16" and spec.needs_create_graph:
        amp.batchnorm_in_float32(model)  # else every Hessian estimate is NaN (see engine.amp)
    schedule = build_schedule(optimizer, config["schedule"], config["epochs"])
    scaler = amp.grad_scaler(ctx.device, config["amp"])
    checkpoint.seed_everything(config["seed"] + ctx.rank)  # but different augmentation draws
    train_loader, eval_loader, sampler = build_loaders(config, ctx)  # all before writing a file
    history: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_schedule(schedule, state["schedule"], optimizer)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == ctx.world_size:
            checkpoint.set_rng_state(state["rng"][ctx.rank])
        else:  # resumed on another number of ranks: a valid run, no longer bit-exact
            checkpoint.seed_everything(
                config["seed"] + ctx.rank + 1_000_003 * len(state["history"])
            )
        history = list(state["history"])
    ddp_model = distributed.wrap(model, ctx)

    log = distributed.get_logger(ctx, out_dir)
    if ctx.is_main:
        metrics.write_config(out_dir, config, ctx)
        metrics.write_metrics(out_dir, history)  # the checkpoint's epochs, even after a crash
    writer = metrics.tensorboard(out_dir, ctx)
    start = len(history)
    if state is not None and len(state["rng"]) != ctx.world_size:
        log.warning(f"checkpoint written by {len(state['rng'])} rank(s), resuming on "
                    f"{ctx.world_size}: same global batch, different random draws")  # fmt: skip
    log.info(
        f"{config['row']} / {config['schedule']['name']} / seed {config['seed']}: "
        f"{'resuming after epoch ' + str(start) if start else 'starting'}, "
        f"{config['epochs']} epochs, {ctx.world_size} rank(s) on {ctx.device.type} -> {out_dir}"
    )
    for epoch in range(start, config["epochs"]):
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        tic = time.perf_counter()
        train_stats = train_one_epoch(
            ddp_model, train_loader, optimizer, spec.needs_create_graph, scaler, config, ctx, epoch
        )
        train_time = time.perf_counter() - tic
        distributed.broadcast_buffers(model, ctx)  # evaluate and save rank 0's BN statistics
        # the plain module: no DDP collectives, so uneven eval shards cannot hang a rank
        eval_stats = evaluate(model, eval_loader, config["amp"], ctx)
        schedule.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **train_stats,
            **eval_stats,
            "images_per_s": train_stats["train_samples"] / max(train_time, 1e-9),
            "epoch_time_s": time.perf_counter() - tic,
        }
        history.append(record)
        rng = distributed.gather_objects(checkpoint.rng_state(), ctx)
        if ctx.is_main:
            checkpoint.save(ckpt_path, {
                "epoch": epoch + 1, "config": config, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng, "history": history,
            })  # fmt: skip
            metrics.write_metrics(out_dir, history)
            metrics.write_results(out_dir, config, history, metric=METRIC,
                                  finished=epoch + 1 == config["epochs"])  # fmt: skip
            metrics.log_scalars(writer, record, epoch + 1, skip=("epoch",))
        log.info(
            f"epoch {epoch + 1}/{config['epochs']} lr {lr:.3g} | train loss "
            f"{record['train_loss']:.4f} acc {record['train_acc1']:.2f} | test loss "
            f"{record['test_loss']:.4f} acc1 {record['test_acc1']:.2f} acc5 "
            f"{record['test_acc5']:.2f} | {record['images_per_s']:.0f} img/s"
        )
        distributed.barrier(ctx)
    writer.close()
    return metrics.finish(out_dir, config, history, model, ctx, log, metric=METRIC)


if __name__ == "__main__":
    cli.main(run)
