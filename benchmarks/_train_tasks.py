"""What ``benchmarks.train_step`` times for each task: the task's real training loop, fed
synthetic data of the real shapes, and the bare step on one batch already on the device."""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from engine import amp, checkpoint, compiling
from engine import config as cfg
from engine import run as runs
from engine.distributed import Context
from engine.optimization import Training, build_optimizer, build_schedule

#: The 1B Words vocabulary (``1b_word_vocab.txt``, with <S>, </S> and <UNK>).
LM1B_VOCAB = 793_471


def schema(task: str) -> cfg.Schema:
    """The task's config schema (``<task>.schema.SCHEMA``)."""
    return importlib.import_module(f"{task}.schema").SCHEMA


class Task:
    """Built before the run directory opens; :meth:`attach` hands it the open run."""

    metric = "test_acc1"
    run: runs.Run

    def __init__(self, config: dict[str, Any], ctx: Context) -> None:
        self.config, self.ctx, self.device = config, ctx, ctx.device
        checkpoint.seed_everything(config["seed"])

    def _optimizer(self, model: torch.nn.Module) -> None:
        self.model = model
        self.optimizer, self.spec = build_optimizer(model.parameters(), self.config["optimizer"])
        self.schedule = build_schedule(self.optimizer, self.config)
        self.scaler = amp.grad_scaler(self.device, self.config["amp"])

    def attach(self, run: runs.Run) -> None:
        self.run = run
        run.restore(Training(self.model, self.optimizer, self.spec, self.schedule, self.scaler))

    def _backward_step(self, loss: torch.Tensor) -> None:
        amp.backward(loss, self.scaler, create_graph=self.spec.needs_create_graph)
        amp.step(self.optimizer, self.scaler)  # optimizer.step() (through the scaler for fp16)
        self.optimizer.zero_grad(set_to_none=True)

    def _loop(self, n: int, fn: Any) -> None:
        """``n`` updates of the task's own epoch function; then the next call starts an epoch
        again (the position reset, as at an epoch's end, without stepping the schedule)."""
        self.run.config["max_steps_per_epoch"] = n
        fn()
        self.run.position = 0

    def compare_compiled(self) -> dict[str, float | None]:
        """How far the compiled model is from eager (none: not compiled)."""
        return {"logits_rel_diff": None, "grads_rel_diff": None}

    def describe(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.model.parameters())
        return {
            "amp": self.config["amp"],
            "batch": self.config["batch_size"],
            "what": f"{self.name}, {params:,} parameters",
        }


class ImageTask(Task):
    """classification: ``train_one_epoch`` over the pipeline ``train.py`` would pick."""

    def __init__(
        self, config: dict[str, Any], ctx: Context, args: argparse.Namespace, shared: dict
    ) -> None:
        from classification import data, device_data
        from classification import train as task
        from classification.models import build_model

        super().__init__(config, ctx)
        self.task, self.name = task, config["model"]
        self.fmt = task.memory_format(self.device, config["amp"])
        model = build_model(config["model"], config["num_classes"]).to(
            self.device, memory_format=self.fmt
        )
        # One model per compile mode, its weights reset for each row: a row after the first
        # reuses the compiled graphs (compiling ResNet-110 takes minutes) and the CUDA graphs'
        # parameter addresses stay valid (load_state_dict copies in place).
        key = (config["model"], config["num_classes"], config["compile"], self.fmt)
        if key in shared:
            shared[key].module.load_state_dict(model.state_dict())
            model = shared[key].module
        self._optimizer(model)
        mode, note = compiling.compile_mode(config["compile"], self.spec.needs_create_graph)
        if note:
            raise ValueError(note)
        if key not in shared:
            shared[key] = _Shared(model, compiling.Compiled(model, mode))
        self.forward = shared[key].forward
        self.pipeline = data.pipeline(config, self.device)
        aug, batch, classes = config["augmentation"], config["batch_size"], config["num_classes"]
        crop = aug.get("crop") or 8  # digits: 8x8, no augmentation
        channels = 1 if config["dataset"] == "digits" else 3
        n = batch * max(args.steps, args.warmup)
        g = torch.Generator(self.device).manual_seed(config["seed"])
        labels = torch.randint(0, classes, (n,), generator=g, device=self.device)
        if self.pipeline == "device":  # CIFAR-sized uint8 images, augmented as in training
            images = torch.randint(
                0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g, device=self.device
            )
            sampler = DistributedSampler(range(n), num_replicas=1, rank=0, seed=config["seed"])
            self.loader: Any = device_data.DeviceImages(
                images,
                labels,
                sampler,
                batch_size=batch,
                device=self.device,
                aug=aug,
                train=True,
                seed=config["seed"],
                memory_format=self.fmt,
            )
            layout = self.fmt
        else:  # what a DataLoader hands over: a float batch in (pinned) host memory
            x = torch.randn(batch, channels, crop, crop)
            self.loader = Repeat(
                x.pin_memory() if self.device.type == "cuda" else x,
                labels[:batch].cpu(),
                math.ceil(n / batch),
            )
            layout = torch.contiguous_format
        # the bare step's batch, in the loop's layout: one compiled graph serves both
        x = torch.randn((batch, channels, crop, crop), generator=g, device=self.device)
        self.x = x.contiguous(memory_format=layout)
        self.y = labels[:batch]

    def bare(self, n: int) -> None:
        for _ in range(n):
            with amp.autocast(self.device, self.config["amp"]):
                loss = F.cross_entropy(self.forward(self.x), self.y)
            self._backward_step(loss)

    def loop(self, n: int) -> None:
        create_graph = self.spec.needs_create_graph
        self._loop(
            n,
            lambda: self.task.train_one_epoch(
                self.model, self.loader, create_graph, self.run, self.forward
            ),
        )

    def compare_compiled(self) -> dict[str, float | None]:
        """Logits and gradients of the compiled model against eager on the bare step's batch,
        same weights: the relative 2-norm of the difference (gradients: the largest)."""
        if self.forward.mode == "none":
            return super().compare_compiled()
        outputs = []
        for fn in (self.model, self.forward):
            self.optimizer.zero_grad(set_to_none=True)
            with amp.autocast(self.device, self.config["amp"]):
                logits = fn(self.x)
            F.cross_entropy(logits.float(), self.y).backward()
            grads = [p.grad.detach().float().clone() for p in self.model.parameters()]
            outputs.append((logits.detach().float().clone(), grads))
        self.optimizer.zero_grad(set_to_none=True)
        (le, ge), (lc, gc) = outputs

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).norm() / b.norm().clamp(min=1e-30))

        return {
            "logits_rel_diff": rel(lc, le),
            "grads_rel_diff": max(rel(c, e) for c, e in zip(gc, ge, strict=True)),
        }

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "dataset": self.config["dataset"],
            "unit": "img",
            "samples_per_step": self.config["batch_size"],
            "pipeline": self.pipeline,
            "channels_last": self.fmt == torch.channels_last,
        }


class LanguageModelTask(Task):
    """language_model: ``train_one_epoch`` over a ``TokenStream`` of synthetic shards."""

    metric = "test_ppl"

    def __init__(self, config: dict[str, Any], ctx: Context, args: argparse.Namespace) -> None:
        from language_model import data
        from language_model import train as task

        super().__init__(config, ctx)
        if config["compile"] != "none":
            raise ValueError("the language model runs eagerly: --compile none")
        self.task, self.vocab = task, args.vocab_size
        self.name = f"LSTM LM, vocabulary {self.vocab:,}"
        self._optimizer(task.build_model(config, self.vocab).to(self.device))
        batch, bptt = config["batch_size"], config["bptt"]
        length = batch * bptt * (max(args.steps, args.warmup) + 1) + 1
        tokens = zipf_tokens(self.vocab, length, np.random.default_rng(config["seed"]))
        offsets = np.append(np.arange(0, length, 27), length)  # sentences of 27 tokens
        source = data.InMemorySource({"train": [(tokens, offsets)]})
        self.stream = data.TokenStream(source, "train", batch, bptt, seed=config["seed"])
        first = next(self.stream.batches(0))
        self.x = torch.from_numpy(first.inputs).to(self.device)
        self.y = torch.from_numpy(first.targets).to(self.device)
        self.hidden = self.model.init_hidden(batch, self.device)

    def bare(self, n: int) -> None:
        for _ in range(n):
            hidden = (self.hidden[0].detach(), self.hidden[1].detach())
            with amp.autocast(self.device, self.config["amp"]):
                nll, count, self.hidden = self.model(self.x, self.y, hidden)
            self._backward_step(nll / count.clamp(min=1))

    def loop(self, n: int) -> None:
        create_graph = self.spec.needs_create_graph
        self._loop(
            n,
            lambda: self.task.train_one_epoch(
                self.model, self.model, self.stream, create_graph, self.run, {}
            ),
        )

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().describe(),
            "dataset": "lm1b",
            "unit": "tok",
            "samples_per_step": c["batch_size"] * c["bptt"],
            "pipeline": "TokenStream",
            "channels_last": False,
        }


def zipf_tokens(vocab: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` token ids with P(id) ~ 1 / (id + 1): word frequencies follow Zipf's law, and the
    vocabulary is sorted by frequency, so the adaptive softmax's clusters see about the share
    of targets they see in training (most in the head, few in the 640k-word tail)."""
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1))
    return np.searchsorted(cdf / cdf[-1], rng.random(n)).clip(0, vocab - 1).astype(np.int32)


class Repeat:
    """One batch ``n`` times, with a length: a DataLoader that is never the bottleneck."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.n):
            yield self.x, self.y


class _Shared:
    """A model and its compiled form, kept across the rows of one compile mode."""

    def __init__(self, module: torch.nn.Module, forward: compiling.Compiled) -> None:
        self.module, self.forward = module, forward


def build(
    config: dict[str, Any], ctx: Context, args: argparse.Namespace, shared: dict | None = None
) -> Task:
    """The task of ``config['task']`` (``shared``: what rows may reuse, see ImageTask)."""
    if config["task"] == "classification":
        return ImageTask(config, ctx, args, {} if shared is None else shared)
    if config["task"] == "language_model":
        return LanguageModelTask(config, ctx, args)
    raise ValueError(
        f"{config['config']}: no benchmark here for task {config['task']!r} "
        "(translation: python -m benchmarks.nmt_step)"
    )
