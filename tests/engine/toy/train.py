"""A toy task on the engine's run structure, as a task tree's ``train.py`` uses it: the vehicle
of tests/engine's run-directory tests (a run takes a fraction of a second).

::

    python -m tests.engine.toy.train --config tests/engine/toy/toy.yaml --row SGD \
        --schedule cosine [--out-dir O] [--epochs N] [--max-updates N] [key=value ...]

A 2-layer MLP with dropout fits a noisy linear map of ``features`` inputs (``samples`` training
pairs, 32 test pairs, fixed data). Each epoch visits the pairs in an order drawn from (seed,
epoch), ``batch_size`` per update in ``update_freq`` micro-batches; mid-epoch checkpoints
(``checkpoint_every``) carry the partial sums, so a resume continues any update exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from engine import amp, cli, distributed, metrics
from engine import run as runs
from engine.optimization import build_training

SCHEMA = {"samples": int, "features": int, "hidden": int, "dropout": float, "batch_size": int}
TEST_SAMPLES = 32


def make_data(config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Inputs and targets, the same for every seed (the seed varies the model and the order)."""
    g = torch.Generator().manual_seed(1234)
    n, d = config["samples"] + TEST_SAMPLES, config["features"]
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    cut = config["samples"]
    return {"x": x[:cut], "y": y[:cut], "test_x": x[cut:], "test_y": y[cut:]}


def make_model(config: Mapping[str, Any]) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(config["features"], config["hidden"]),
        torch.nn.Tanh(),
        torch.nn.Dropout(config["dropout"]),
        torch.nn.Linear(config["hidden"], 1),
    )


def train_one_epoch(
    ddp_model: torch.nn.Module,
    data: Mapping[str, torch.Tensor],
    create_graph: bool,
    run: runs.Run,
    resume: Mapping[str, Any],
) -> dict[str, float]:
    """Updates ``run.position`` … of the epoch; ``resume`` holds this rank's partial sums."""
    ctx, config = run.ctx, run.config
    batch = config["batch_size"]
    g = torch.Generator().manual_seed(config["seed"] * 1000 + run.epoch)
    order = torch.randperm(config["samples"], generator=g)[ctx.rank :: ctx.world_size]
    n = run.epoch_updates(len(order) // batch)
    meter = metrics.Meter(ctx.device, resume.get("sums"))
    ddp_model.train()
    for u in range(run.position, n):
        run.optimizer.zero_grad(set_to_none=True)
        micro = order[u * batch : (u + 1) * batch].split(batch // config["update_freq"])
        losses = []
        for j, index in enumerate(micro):
            with distributed.no_sync(ddp_model, skip_sync=create_graph or j < len(micro) - 1):
                with amp.autocast(ctx.device, config["amp"]):
                    loss = F.mse_loss(ddp_model(data["x"][index]), data["y"][index])
                amp.backward(loss * len(index) / batch, run.scaler, create_graph=create_graph)
            meter.add(loss=loss.detach() * len(index), count=len(index))
            losses.append(loss.detach())
        norm = amp.grad_norm(ddp_model.parameters(), run.scaler) if run.log_next() else None
        amp.step(run.optimizer, run.scaler)
        run.update_done(losses)
        if run.log_due():  # the updates since the last log point
            w = meter.read_window(ctx)
            run.log_progress(
                n, loss=w["loss"] / w["count"], samples=w["count"], unit="samples", grad_norm=norm
            )
        if run.checkpoint_due(n):
            run.snapshot(sums=meter.local())
        if run.diverged:
            break
    s = meter.read(ctx)
    return {
        "train_loss": s.get("loss", 0.0) / max(s.get("count", 0.0), 1.0),
        "train_samples": int(s.get("count", 0)),
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Mapping[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    return {"test_loss": float(F.mse_loss(model(data["test_x"]), data["test_y"]))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The entry point; returns ``results.json``'s content on rank 0."""
    config, print_only = cli.parse_run_args(
        "python -m tests.engine.toy.train", __doc__, SCHEMA, argv
    )
    if print_only:
        cli.print_config(config)
        return None
    if config["batch_size"] % config["update_freq"]:
        raise ValueError(f"{config['config']}: batch_size must split into update_freq parts")
    with distributed.process_group(config["device"]) as ctx:
        data = make_data(config)
        training = build_training(config, ctx.rank, ctx.device, lambda: make_model(config))
        with runs.start(config, ctx, metric="test_loss", mode="min") as run:
            resume = run.restore(training)
            ddp_model = distributed.wrap(training.model, ctx)
            run.log_start("toy task")
            while not run.finished:
                stats = train_one_epoch(
                    ddp_model, data, training.spec.needs_create_graph, run, resume
                )
                resume = {}
                if run.check_divergence():
                    break
                record = run.epoch_done({**stats, **evaluate(training.model, data)})
                run.snapshot()
                run.record(
                    f"{run.progress_label()} | train loss {record['train_loss']:.4f} | "
                    f"test loss {record['test_loss']:.4f}"
                )
            return run.finish(training.model)


if __name__ == "__main__":
    cli.main(main)
