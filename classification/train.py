"""Train one row of the paper's image table (ResNet-110 on CIFAR, ResNeXt-50 on ImageNet).

::

    python -m classification.train --config configs/cifar10.yaml --row Apollo --schedule cosine \
        --data-dir data/cifar10 [--out-dir O] [--seed N] [--epochs N] [--max-steps-per-epoch K] \
        [--device {cpu,cuda}] [--amp {none,fp16,bf16}] [--compile {none,default,reduce-overhead}]
        [--print-config] [key=value ...]
    torchrun --standalone --nproc_per_node=8 -m classification.train ...   # same, on 8 GPUs

Each epoch: train (``loss.backward(create_graph=spec.needs_create_graph)``, the optimizer's
own warmup for Apollo/AdaHessian; ``update_freq`` micro-batches per update), evaluate
top-1/top-5 on the test (val) set, step the epoch-based schedule, then write the checkpoint,
``metrics.jsonl`` and ``results.json`` (``engine.run``). Re-running the same command resumes
from the last checkpoint: an epoch's end, or mid-epoch (``checkpoint_every`` updates, or a stop
signal inside SLURM), to the numbers of an uninterrupted run. Metrics are summed
on the device and read at log points (every ``log_every`` updates) and epoch ends only.

Speed (docs/performance.md): on CUDA, CIFAR is held and augmented on the GPU
(``data_pipeline: auto``; ``classification.device_data``), mixed precision trains in
channels_last, and ``--compile reduce-overhead`` runs the model's forward and backward as CUDA
graphs (``engine.compiling``; ``compile_s`` in ``metrics.jsonl`` is the time it took).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

import apollo_optim as optim
from engine import amp, checkpoint, cli, compiling, distributed, metrics
from engine import run as runs
from engine.optimization import build_training

from .data import build_loaders, pipeline
from .models import build_model
from .schema import SCHEMA

METRIC = "test_acc1"
#: Distributions whose versions config.json records (torch and numpy always are).
PACKAGES = ("torchvision", "scikit-learn")


@torch.no_grad()
def correct_topk(logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int]) -> torch.Tensor:
    """How many rows have the target among their top-k logits, for each k (capped at the
    number of classes), as a tensor on the logits' device: counting never waits for it."""
    ks = list(ks)
    kmax = min(max(ks), logits.shape[1])
    hit = logits.topk(kmax, dim=1).indices.eq(target.unsqueeze(1))
    return torch.stack([hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


def train_one_epoch(
    ddp_model: torch.nn.Module,
    loader: Iterable,
    create_graph: bool,
    run: runs.Run,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    resume: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """One pass over the training set (or its first ``run.epoch_updates`` updates), each
    update ``update_freq`` micro-batches, from update ``run.position`` on; the metrics stay on
    the device until the end.

    ``loader`` yields ``(images, target)`` batches (a DataLoader, or batches already on the
    device); ``forward`` is ``ddp_model`` compiled (``engine.compiling``), default itself;
    ``resume`` is this rank's mid-epoch state from the checkpoint (the random state the epoch
    began with, the epoch's partial sums) or None."""
    ctx, config = run.ctx, run.config
    forward = forward or ddp_model
    ddp_model.train()
    resume = resume or {}
    meter = metrics.Meter(ctx.device, resume.get("sums"))
    n = run.epoch_updates(math.ceil(len(loader) / config["update_freq"]))
    groups, epoch_rng = epoch_batches(
        loader, config["update_freq"], run.position, resume.get("epoch_rng")
    )
    for i, group in enumerate(
        metrics.progress(groups, ctx, total=n - run.position, desc=f"epoch {run.epoch + 1}"),
        start=run.position,
    ):
        if i >= n:
            break
        run.optimizer.zero_grad(set_to_none=True)
        samples = sum(target.numel() for _, target in group)
        losses = []
        for j, (images, target) in enumerate(group):
            images = images.to(ctx.device, non_blocking=True)
            target = target.to(ctx.device, non_blocking=True)
            # DDP all-reduces after the last micro-batch only, and never a create_graph
            # backward (pytorch#63812): second-order optimizers average over ranks themselves.
            last = j == len(group) - 1
            with distributed.no_sync(ddp_model, skip_sync=create_graph or not last):
                with amp.autocast(ctx.device, config["amp"]):
                    logits = forward(images)
                    loss = F.cross_entropy(logits, target)
                weighted = loss if len(group) == 1 else loss * (target.numel() / samples)
                amp.backward(weighted, run.scaler, create_graph=create_graph)
            losses.append(loss.detach())
            (c1,) = correct_topk(logits.float(), target, ks=(1,))
            meter.add(
                loss=loss.detach().double() * target.numel(), correct1=c1, count=target.numel()
            )
        norm = amp.grad_norm(ddp_model.parameters(), run.scaler) if run.log_next() else None
        amp.step(run.optimizer, run.scaler)
        run.update_done(losses)
        if run.log_due():  # the updates since the last log point
            w = meter.read_window(ctx)
            run.log_progress(
                n,
                loss=w["loss"] / w["count"],
                samples=w["count"],
                unit="images",
                grad_norm=norm,
                acc=100.0 * w["correct1"] / w["count"],
            )
            if run.diverged:
                break
        if run.checkpoint_due(n):  # checkpoint_every, or a stop signal (engine.preemption)
            run.snapshot(epoch_rng=epoch_rng, sums=meter.local())
    run.optimizer.zero_grad(set_to_none=True)  # frees the graph create_graph kept alive
    sums = meter.read(ctx)
    n = max(sums.get("count", 0.0), 1.0)
    return {
        "train_loss": sums.get("loss", 0.0) / n,
        "train_acc1": 100.0 * sums.get("correct1", 0.0) / n,
        "train_samples": int(sums.get("count", 0)),
    }


def epoch_batches(
    loader: Iterable, update_freq: int, skip: int, epoch_rng: dict[str, Any] | None
) -> tuple[Iterator[list], dict[str, Any]]:
    """The epoch's updates (groups of micro-batches) from update ``skip`` on, and the random
    state the epoch began with, which a mid-epoch checkpoint stores.

    Resuming at update ``skip`` of an epoch, the loader starts again from ``epoch_rng`` (a
    DataLoader draws its workers' seeds from it; on the device the crops and flips come from
    the epoch's own generator), and the first ``skip`` updates' batches are read and dropped:
    the rest are the uninterrupted run's batches, crops and flips included. The random state
    is then the checkpoint's again."""
    groups = runs.micro_batches(loader, update_freq)
    if epoch_rng is None:  # a new epoch: its loader starts from the state now
        return groups, checkpoint.rng_state()
    now = checkpoint.rng_state()
    checkpoint.set_rng_state(epoch_rng)
    for _ in range(skip):
        next(groups, None)
    checkpoint.set_rng_state(now)
    return groups, epoch_rng


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    amp_mode: str,
    ctx: distributed.Context,
) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy (%) over every rank's slice of the eval set."""
    model.eval()
    meter = metrics.Meter(ctx.device)
    for images, target in loader:
        images, target = images.to(ctx.device), target.to(ctx.device)
        with amp.autocast(ctx.device, amp_mode):
            logits = model(images).float()
        c1, c5 = correct_topk(logits, target, ks=(1, 5))
        loss = F.cross_entropy(logits, target, reduction="sum")
        meter.add(loss=loss, c1=c1, c5=c5, count=target.numel())
    sums = meter.read(ctx)
    n = max(sums.get("count", 0.0), 1.0)
    return {
        "test_loss": sums.get("loss", 0.0) / n,
        "test_acc1": 100.0 * sums.get("c1", 0.0) / n,
        "test_acc5": 100.0 * sums.get("c5", 0.0) / n,
    }


def memory_format(device: torch.device, amp_mode: str) -> torch.memory_format:
    """channels_last for mixed precision on CUDA (cuDNN's tensor-core convolutions work in
    NHWC; NCHW would add a transpose around each), NCHW otherwise."""
    if device.type == "cuda" and amp_mode != "none":
        return torch.channels_last
    return torch.contiguous_format


def sync_batchnorm(model: torch.nn.Module, config: dict[str, Any], ctx: distributed.Context) -> str:
    """``sync_bn``: under DDP each rank normalises by its own batch's statistics (the paper's
    32 images per GPU, not 256) unless the BatchNorm layers become ``torch.nn.SyncBatchNorm``
    (in place: the optimizer's parameters stay the same objects), which needs CUDA. Returns
    what the log says."""
    if not config["sync_bn"] or not ctx.distributed:
        return "BatchNorm statistics per rank" if ctx.distributed else "BatchNorm"
    if ctx.device.type != "cuda":
        raise ValueError(
            f"{config['config']}: sync_bn=true needs --device cuda (torch's SyncBatchNorm "
            "does not run on the CPU); sync_bn=false normalises per rank"
        )
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return "SyncBatchNorm over all ranks"


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The entry point; returns ``results.json``'s content on rank 0."""
    config, print_only = cli.parse_run_args("python -m classification.train", __doc__, SCHEMA, argv)
    if print_only:
        cli.print_config(config)
        return None
    if config["batch_size"] % config["update_freq"]:
        raise ValueError(
            f"{config['config']}: batch_size {config['batch_size']} does not split "
            f"into update_freq={config['update_freq']} micro-batches"
        )
    with distributed.process_group(config["device"], config["dist_timeout"]) as ctx:
        torch.backends.cudnn.benchmark = ctx.device.type == "cuda"  # fixed input sizes: autotune
        return _train(config, ctx)


def _train(config: dict[str, Any], ctx: distributed.Context) -> dict[str, Any] | None:
    # everything is built (bad input fails) before the run directory opens
    fmt = memory_format(ctx.device, config["amp"])
    training = build_training(
        config,
        ctx.rank,
        ctx.device,
        lambda: build_model(config["model"], config["num_classes"]).to(
            ctx.device, memory_format=fmt
        ),
    )
    model, spec = training.model, training.spec
    batchnorm = sync_batchnorm(model, config, ctx)  # new layers: before any hook on them
    if config["amp"] == "fp16" and spec.needs_create_graph:
        optim.batchnorm_in_float32(model)  # else every Hessian estimate is NaN
    mode, compile_note = compiling.compile_mode(config["compile"], spec.needs_create_graph)
    micro = {**config, "batch_size": config["batch_size"] // config["update_freq"]}
    train_loader, eval_loader, sampler = build_loaders(micro, ctx, memory_format=fmt)
    with runs.start(
        config, ctx, metric=METRIC, mode="max", packages=PACKAGES, also_resumable=("data_pipeline",)
    ) as run:
        resume = run.restore(training)  # this rank's mid-epoch state, or {}
        ddp_model = distributed.wrap(model, ctx)
        forward = compiling.Compiled(ddp_model, mode)
        if compile_note:
            run.log.warning(compile_note)
        run.log_start(
            f"data pipeline {pipeline(config, ctx.device)}",
            f"compile {mode}",
            "channels_last" if fmt == torch.channels_last else "NCHW",
            batchnorm,
        )
        while not run.finished:
            sampler.set_epoch(run.epoch)
            lr = run.epoch_lr()
            tic = time.perf_counter()
            resumed_images = run.position * config["batch_size"]  # full updates before a resume
            train_stats = train_one_epoch(
                ddp_model, train_loader, spec.needs_create_graph, run, forward, resume=resume
            )
            resume = {}
            train_time = time.perf_counter() - tic
            if run.check_divergence():  # a non-finite training loss: stop, nothing recorded
                break
            if mode != "none":  # host seconds of this epoch's updates that compiled
                train_stats["compile_s"] = forward.take_seconds()
            distributed.broadcast_buffers(model, ctx)  # evaluate and save rank 0's BN statistics
            # the plain module: no DDP collectives, so uneven eval shards cannot hang a rank
            eval_stats = evaluate(model, eval_loader, config["amp"], ctx)
            record = run.epoch_done(
                {
                    "lr": lr,
                    **train_stats,
                    **eval_stats,
                    "images_per_s": (train_stats["train_samples"] - resumed_images)
                    / max(train_time, 1e-9),
                    "epoch_time_s": time.perf_counter() - tic,
                }
            )
            run.snapshot()
            run.record(
                f"{run.progress_label()} lr {lr:.3g} | train loss {record['train_loss']:.4f} acc "
                f"{record['train_acc1']:.2f} | test loss {record['test_loss']:.4f} acc1 "
                f"{record['test_acc1']:.2f} acc5 {record['test_acc5']:.2f} | "
                f"{record['images_per_s']:.0f} img/s"
                + (f" (compiling: {record['compile_s']:.1f} s)" if record.get("compile_s") else "")
            )
        return run.finish(model)


if __name__ == "__main__":
    cli.main(main)
