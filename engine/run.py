"""The run structure every task's ``train.py`` shares: one writer per run directory, one
checkpoint layout, resume, records and the finished test; the loop stays in the task.
docs/run_directory.md describes the directory, its rules and a loop's calls in order.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

import apollo_optim as optim

from . import checkpoint, metrics, preemption
from .config import LATER_KEYS
from .distributed import Context, barrier, check_same, gather_objects, get_logger
from .lock import RunDirLock
from .optimization import Training, applied_lr, restore_schedule

T = TypeVar("T")

#: Config keys a resumed run may change: where and how it executes, how long (see above).
RESUMABLE_CHANGES = (
    "config",
    "epochs",
    "max_updates",
    "max_steps_per_epoch",
    "device",
    "workers",
    "data_dir",
    "out_dir",
    "plugins",
    "checkpoint_every",
    "log_every",
    "keep_last",
    "compile",
    "dist_timeout",
)
#: Config keys that may differ between a directory's finished results and a new run there.
WHERE_KEYS = (
    "config",
    "device",
    "workers",
    "data_dir",
    "out_dir",
    "plugins",
    "compile",
    "dist_timeout",
)
#: Offset between the seeds of successive epochs when ranks are reseeded (a large prime).
_EPOCH_SEED_STRIDE = 1_000_003


def start(
    config: dict[str, Any],
    ctx: Context,
    *,
    metric: str,
    mode: str = "max",
    packages: Sequence[str] = (),
    also_resumable: Iterable[str] = (),
) -> contextlib.AbstractContextManager[Run]:
    """Open the run directory for this run (docs/run_directory.md): lock, checks, resume
    state, ``config.json`` (provenance lists ``packages``' versions), logger, TensorBoard.

    ``metric`` (``mode`` "max" or "min") is what ``results.json`` ranks epochs by;
    ``also_resumable`` names task keys a resume may change besides :data:`RESUMABLE_CHANGES`.
    """
    return _start(config, ctx, metric, mode, tuple(packages), tuple(also_resumable))


@contextlib.contextmanager
def _start(config, ctx, metric, mode, packages, also_resumable) -> Iterator[Run]:
    out_dir = Path(config["out_dir"])
    lock = RunDirLock(out_dir)
    takeover = _on_main(ctx, lock.acquire)
    preemption.install()
    try:
        run = Run(config, ctx, metric, mode)
        try:
            run._open(packages, also_resumable, takeover)
            with warnings.catch_warnings():
                # A run steps the schedule while Apollo's/AdaHessian's own warmup still runs
                # (500 updates > one CIFAR epoch): the paper's rule, reproduced on purpose, so
                # the warning meant for other training stacks is silent while a run trains.
                warnings.filterwarnings("ignore", category=optim.WarmupLRWarning)
                yield run
        except BaseException:
            run._close(quiet=True)  # the error that stopped the run is the one to report
            raise
        run._close()
    finally:
        preemption.uninstall()
        if ctx.is_main:
            lock.release()


@contextlib.contextmanager
def held_log(name: str) -> Iterator[list[logging.LogRecord]]:
    """Hold what logger ``name`` (a task's package) says while a run is built, before the run
    directory and its log exist; :meth:`Run.log_held` writes the records there afterwards."""
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    logger, handler = logging.getLogger(name), Hold()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield held
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class Run:
    """A run directory while its run trains; made by :func:`start`, not directly."""

    def __init__(self, config: dict[str, Any], ctx: Context, metric: str, mode: str) -> None:
        self.config, self.ctx, self.metric, self.mode = config, ctx, metric, mode
        self.out_dir = Path(config["out_dir"])
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        self.update = 0  # optimizer updates
        self.position = 0  # updates into the current epoch
        self.state: dict[str, Any] | None = None  # the checkpoint resumed from
        self.stopping = False  # a stop signal was agreed on (engine.preemption)
        self._epoch_lr: float | None = None  # see epoch_lr()
        # what restore() was given, for snapshot() and the loop
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.log = get_logger(ctx, None)
        self.writer: Any = metrics.NullWriter()
        #: ``{"epoch", "update"}`` of the first non-finite training loss, once one was seen
        self.diverged: dict[str, int] | None = None
        self._watch: metrics.FiniteWatch | None = None
        self._watch_from = 0  # the update count when the watch started
        # for log points: (time, update) when this process started training, and when the
        # current window of updates (since the last log point) started
        self._began = self._window = (time.perf_counter(), 0)

    # -- opening --------------------------------------------------------------------------
    def _open(
        self, packages: tuple[str, ...], also_resumable: tuple[str, ...], takeover: str | None
    ) -> None:
        error = None
        try:
            self._read_state(also_resumable)
            self.diverged = self._earlier_divergence(also_resumable)
        except ValueError as exc:  # every rank learns of it below: none waits in a collective
            if not self.ctx.distributed:
                raise
            error = " ".join(str(exc).split())
        self._agree(error)
        self.log = get_logger(self.ctx, self.out_dir)
        if takeover:
            self.log.warning(takeover)
        if self.ctx.is_main:
            metrics.write_config(self.out_dir, self.config, self.ctx, packages)
            metrics.write_metrics(self.out_dir, self.history)  # the checkpoint's, after a crash
        self.writer = metrics.tensorboard(self.out_dir, self.ctx)

    def _read_state(self, also_resumable: tuple[str, ...]) -> None:
        if not self.checkpoint_path.exists():
            self._check_foreign_results()
            return
        state = checkpoint.load(self.checkpoint_path)
        check_resumable(state["config"], self.config, self.checkpoint_path, also_resumable)
        self._check_length(state)
        ranks = len(state["ranks"])
        if state["position"] and ranks != self.ctx.world_size:
            raise ValueError(
                f"{self.checkpoint_path}: stopped mid-epoch with {ranks} rank(s); resume "
                f"it with the same number, not {self.ctx.world_size}"
            )
        self.state = state
        self.history = list(state["history"])
        self.epoch, self.update = int(state["epoch"]), int(state["update"])
        self.position = int(state["position"])
        self._epoch_lr = state.get("epoch_lr") if self.position else None

    def _agree(self, error: str | None) -> None:
        """Before anything is written, at every start: all ranks found the same run (config,
        data fingerprint, checkpoint) in the run directory, which must therefore be shared."""
        if not self.ctx.distributed:
            return
        errors = gather_objects(error, self.ctx)
        failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
        if failed:
            rank, message = failed[0]
            raise ValueError(message if rank == 0 else f"rank {rank}: {message}")
        state = self.state
        found = (
            "no checkpoint"
            if state is None
            else f"checkpoint at epoch {state['epoch']} update {state['update']}, model sha256 "
            f"{checkpoint.state_digest(state['model'])[:12]}"
        )
        check_same(
            {
                **{f"config.{k}": v for k, v in self.config.items()},
                "run directory": found,
                "diverged before": self.diverged,
                "stop signals": preemption.installed(),
            },
            self.ctx,
            f"{self.out_dir} (the run directory must be on a filesystem every node shares, and "
            "every rank started with the same command)",
        )

    def _check_length(self, state: Mapping[str, Any]) -> None:
        """A resume may lengthen or shorten the run only where that changes nothing done."""
        saved, path = state["config"], self.checkpoint_path
        sized_by = schedule_sized_by(saved)
        for key, done, unit in (
            ("epochs", state["epoch"], "epochs"),
            ("max_updates", state["update"], "updates"),
        ):
            old, new = saved.get(key), self.config.get(key)
            if old == new:
                continue
            if new is not None and done > new:
                raise ValueError(
                    f"{path} has trained {done} {unit}, more than {key}={new}; pick another "
                    "--out-dir or move it away"
                )
            if sized_by == key:
                raise ValueError(
                    f"{path} holds a run of {key}={old} whose {saved['schedule']['kind']} "
                    f"schedule is sized by it; {key}={new} would not continue it (its first "
                    f"{unit} would differ): pick another --out-dir, move it away, or set "
                    "schedule.total_steps"
                )

    def _check_foreign_results(self) -> None:
        """Without a checkpoint, finished results in the directory must be this run's."""
        results = self.out_dir / "results.json"
        if not results.exists():
            return
        try:
            saved = metrics.read_json(self.out_dir / "config.json")
        except (OSError, ValueError):
            raise ValueError(
                f"{self.out_dir} holds results.json but no readable config.json; pick another "
                "--out-dir or move it away"
            ) from None
        saved = {k: v for k, v in saved.items() if k not in ("provenance", "earlier_starts")}
        diffs = config_diffs(saved, self.config, WHERE_KEYS)
        if diffs:
            raise ValueError(
                f"{self.out_dir} holds the results of another run ({'; '.join(diffs)}) and no "
                "checkpoint to resume; pick another --out-dir or move it away"
            )

    def _earlier_divergence(self, also_resumable: tuple[str, ...]) -> dict[str, int] | None:
        """What ``results.json`` says this very run (same config and length) diverged at: it
        would again, so it is over; None when it did not or when that is another run."""
        try:
            results = metrics.read_json(self.out_dir / "results.json")
            saved = metrics.read_json(self.out_dir / "config.json")
        except (OSError, ValueError):
            return None
        if not isinstance(results, dict) or not results.get("diverged"):
            return None
        allowed = set(RESUMABLE_CHANGES) | set(also_resumable) | {"provenance", "earlier_starts"}
        allowed -= {"epochs", "max_updates", "max_steps_per_epoch"}
        return None if config_diffs(saved, self.config, allowed) else dict(results["diverged"])

    def _close(self, quiet: bool = False) -> None:
        """Close TensorBoard's writer and the log files (a worker runs many runs: no open file
        is left). A failed write (a full disk) is a WriteError, unless ``quiet`` (closing after
        another error, the one to report)."""
        closers = [self.writer.close]
        for handler in list(self.log.handlers):
            self.log.removeHandler(handler)
            closers.append(handler.close)
        failed: OSError | None = None
        for close in closers:
            try:
                close()
            except OSError as exc:
                failed = failed or exc
        if failed is not None and not quiet:
            raise checkpoint.WriteError(
                f"cannot write to {self.out_dir}: {failed.strerror or failed}"
            ) from None

    # -- resume ---------------------------------------------------------------------------
    def restore(self, training: Training) -> dict[str, Any]:
        """Load the checkpoint into ``training``'s objects (kept for :meth:`snapshot` and the
        loop: ``run.optimizer``, ``run.scaler``) and set this rank's generators; returns this
        rank's task state when resuming mid-epoch, else {}."""
        t = training
        self.model, self.optimizer, self.schedule, self.scaler = (
            t.model,
            t.optimizer,
            t.schedule,
            t.scaler,
        )
        model, optimizer, schedule, scaler = self._parts()
        self._watch, self._watch_from = metrics.FiniteWatch(self.ctx.device), self.update
        self._began = self._window = (time.perf_counter(), self.update)
        state = self.state
        if state is None:
            return {}
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_schedule(schedule, state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ranks = state["ranks"]
        if len(ranks) != self.ctx.world_size:  # at an epoch end (mid-epoch is refused above)
            checkpoint.seed_everything(
                self.config["seed"] + self.ctx.rank + _EPOCH_SEED_STRIDE * self.epoch
            )
            self.log.warning(
                f"checkpoint written by {len(ranks)} rank(s), resuming on "
                f"{self.ctx.world_size}: same global batch, different random draws"
            )
            return {}
        mine = ranks[self.ctx.rank]
        checkpoint.set_rng_state(mine["rng"])
        return {k: v for k, v in mine.items() if k != "rng"} if self.position else {}

    def log_held(self, records: Iterable[logging.LogRecord]) -> None:
        """Write what :func:`held_log` held to this run's log (rank 0; the others stay quiet)."""
        if self.ctx.is_main:
            for record in records:
                self.log.handle(record)

    def log_start(self, *details: str) -> None:
        """The run's first log line: what, from where, how long, on what."""
        c = self.config
        if self.diverged:
            where = f"diverged at update {self.diverged['update']} before: nothing to train"
        elif self.position:
            where = f"resuming epoch {self.epoch + 1} at step {self.position}"
        elif self.epoch:
            where = f"resuming after epoch {self.epoch}"
        else:
            where = "starting"
        bounds = [
            f"{c[k]} {unit}"
            for k, unit in (("epochs", "epochs"), ("max_updates", "updates"))
            if c.get(k) is not None
        ]
        length = " or ".join(bounds) + (" (whichever comes first)" if len(bounds) > 1 else "")
        parts = [
            f"{c['row']} / {c['schedule']['name']} / seed {c['seed']}: {where}",
            length,
            *details,
            f"{self.ctx.world_size} rank(s) on {self.ctx.device.type} -> {self.out_dir}",
        ]
        self.log.info(", ".join(parts))

    # -- progress -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """The loop is over: ``epochs`` epochs or ``max_updates`` updates reached (whichever is
        set and first), or the training loss diverged (:meth:`check_divergence`)."""
        return self.diverged is not None or self.reached_length

    @property
    def reached_length(self) -> bool:
        """``epochs`` epochs or ``max_updates`` updates done: ``finished`` in results.json."""
        return is_finished(self.config, self.epoch, self.update)

    def epoch_updates(self, available: int) -> int:
        """How many updates this epoch has: ``available`` (what the data holds), capped by
        ``max_steps_per_epoch`` and by the updates left before ``max_updates``."""
        self._window = (time.perf_counter(), self.update)  # an epoch's training starts
        n = available
        if self.config.get("max_steps_per_epoch"):
            n = min(n, self.config["max_steps_per_epoch"])
        if self.config.get("max_updates") is not None:
            n = min(n, self.position + self.config["max_updates"] - self.update)
        return n

    def update_done(self, loss: torch.Tensor | Sequence[torch.Tensor] | None = None) -> None:
        """One optimizer update happened: count it; step a per-update schedule. ``loss`` (this
        update's training loss, or its micro-batches' losses, on the device) is watched for a
        non-finite value on the device, without waiting for it; :meth:`check_divergence` reads
        what was seen. Then a stop signal (:mod:`engine.preemption`): once the ranks agree on
        one, the loop's next :meth:`checkpoint_due` is True, and a loop that does not
        checkpoint mid-epoch stops at its next update."""
        if loss is not None:
            self._restored()._watch.add(loss)
        self.update += 1
        self.position += 1
        if self.config["schedule"]["unit"] == "update":
            self._restored().schedule.step()
        if self.stopping:  # agreed one update ago and no checkpoint followed: keep the last one
            self._stop(f"the last checkpoint (epoch {self.epoch}) is kept")
        self.stopping = preemption.agreed(self.ctx, self.update)

    def check_divergence(self) -> bool:
        """Whether a training loss given to :meth:`update_done` was not finite (NaN, inf) on any
        rank; the first such update is then recorded in :attr:`diverged` and logged. A host
        read (and a collective under DDP): call it where the loop reads anyway, at log points
        and epoch ends (:meth:`snapshot` calls it before it writes). The loop then stops:
        :attr:`finished` is true, and :meth:`finish` writes ``results.json`` with ``diverged``.
        A step that fp16's GradScaler skipped because its gradients overflowed has a finite
        loss: it is not divergence. Call it before :meth:`epoch_done` (the diverged epoch is
        not recorded)."""
        if self.diverged is not None:
            return True
        if self._watch is None:
            return False
        first = self._watch.first_bad(self.ctx)
        if first is None:
            return False
        update = self._watch_from + first + 1
        self.diverged = {"epoch": self.epoch + 1, "update": update}
        self.log.warning(
            f"diverged: the training loss was not finite at update {update} (epoch "
            f"{self.epoch + 1}); stopping at update {self.update}"
        )
        return True

    def log_due(self) -> bool:
        """Every ``log_every`` updates into the epoch (never when it is 0): a log point, where
        reading the device's running sums is fine."""
        every = self.config.get("log_every") or 0
        return every > 0 and self.position % every == 0

    def log_next(self) -> bool:
        """Whether the update being made ends at a log point: before its step, a loop can
        measure there what it logs after it (the gradient norm)."""
        every = self.config.get("log_every") or 0
        return every > 0 and (self.position + 1) % every == 0

    def log_progress(
        self,
        epoch_updates: int,
        *,
        loss: float,
        samples: float,
        unit: str,
        grad_norm: torch.Tensor | float | None = None,
        **values: float,
    ) -> None:
        """A log point (see docs/run_directory.md, "Watching a run"): the training ``loss``
        over the updates since the previous log point and the task's ``values`` (accuracy,
        perplexity), the lr the optimizer applied (:func:`engine.optimization.applied_lr`),
        the gradient norm, the throughput (``samples`` ``unit`` in that time, every rank's),
        elapsed time and ETA, as one log line and as TensorBoard scalars ``train/...`` at this
        update; then :meth:`check_divergence`."""
        now = time.perf_counter()
        (tic, first), self._window = self._window, (now, self.update)
        seconds = max(now - tic, 1e-9)
        per_update = seconds / max(self.update - first, 1)  # this window's pace
        norm = None if grad_norm is None else float(grad_norm)
        scalars = {
            "loss": loss,
            **values,
            "lr": applied_lr(self.optimizer),
            "grad_norm": norm,
            f"{unit}_per_s": samples / seconds,
        }
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"train/{name}", value, self.update)
        began, updates_then = self._began
        done = self.update - updates_then
        overall = (now - began) / done if done else per_update  # evaluations included
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        self.log.info(
            f"{self.step_label(epoch_updates)} (update {self.update}) | loss {loss:.4f}"
            f"{' ' + shown if shown else ''} | lr {scalars['lr']:.3g}"
            + (f" | grad norm {norm:.4g}" if norm is not None else "")
            + f" | {scalars[f'{unit}_per_s']:,.0f} {unit}/s | elapsed {_clock(now - began)}, "
            f"ETA epoch {_clock((epoch_updates - self.position) * per_update)}, run "
            f"{_clock(self._updates_left(epoch_updates) * overall)}"
        )
        self.check_divergence()

    def _updates_left(self, epoch_updates: int) -> int:
        """Updates until the run's end, if later epochs are as long as this one."""
        c, left = self.config, epoch_updates - self.position
        if c.get("epochs") is not None:
            left += max(c["epochs"] - self.epoch - 1, 0) * epoch_updates
            if c.get("max_updates") is not None:
                left = min(left, c["max_updates"] - self.update)
        elif c.get("max_updates") is not None:
            left = c["max_updates"] - self.update
        return max(left, 0)

    def step_label(self, epoch_updates: int) -> str:
        """``epoch 2 step 300/1000``: where a progress line is."""
        return f"epoch {self.epoch + 1} step {self.position}/{epoch_updates}"

    def checkpoint_due(self, epoch_updates: int) -> bool:
        """Every ``checkpoint_every`` updates, and when a stop was agreed, except at the
        epoch's end (snapshotted anyway)."""
        every = self.config.get("checkpoint_every") or 0
        due = self.stopping or (every > 0 and self.update % every == 0)
        return due and self.position < epoch_updates

    def epoch_done(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The epoch ended (at ``max_updates`` too): count it, step a per-epoch schedule, and
        append ``{"epoch", "update", **record}`` to the history; returns that record."""
        self.epoch += 1
        self.position = 0
        if self.config["schedule"]["unit"] == "epoch":
            self._restored().schedule.step()
        entry = {"epoch": self.epoch, "update": self.update, **record}
        self.history.append(entry)
        return entry

    def progress_label(self) -> str:
        """``epoch 3/15``, or ``epoch 3 update 700/1000`` for an update-bounded run."""
        c = self.config
        if c.get("max_updates") is not None:
            return f"epoch {self.epoch} update {self.update}/{c['max_updates']}"
        return f"epoch {self.epoch}/{c['epochs']}"

    def _parts(self) -> tuple[Any, Any, Any, Any]:
        return self.model, self.optimizer, self.schedule, self.scaler

    def epoch_lr(self) -> float:
        """The lr the current epoch's first update applies: the schedule's, or Apollo's and
        AdaHessian's own warmup while it lasts (:func:`engine.optimization.applied_lr`). Read
        when the epoch starts; a mid-epoch checkpoint keeps it for the resume."""
        if self.position == 0 or self._epoch_lr is None:
            self._epoch_lr = applied_lr(self._restored().optimizer, upcoming=True)
        return self._epoch_lr

    def _restored(self) -> Run:
        if self.model is None:
            raise RuntimeError("Run.restore(training) comes first")
        return self

    # -- writing --------------------------------------------------------------------------
    def snapshot(self, **rank_state: Any) -> None:
        """Write the checkpoint (every rank calls it; each passes its own ``rank_state``).

        At an epoch end with ``keep_last`` N > 0 the checkpoint is written as
        ``checkpoint_epoch<E>.pt``, ``checkpoint.pt`` is linked to it, and epoch checkpoints
        beyond the last N are deleted after that (never the one just written).
        """
        if self.check_divergence():  # never a diverged model over the last good checkpoint
            return
        model, optimizer, schedule, scaler = self._restored()._parts()
        ranks = gather_objects({"rng": checkpoint.rng_state(), **rank_state}, self.ctx)

        def write() -> None:
            state = {
                "config": self.config,
                "epoch": self.epoch,
                "update": self.update,
                "position": self.position,
                "epoch_lr": self._epoch_lr,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ranks": ranks,
                "history": self.history,
            }
            keep = self.config.get("keep_last") or 0
            if keep and self.position == 0:
                path = checkpoint.epoch_path(self.out_dir, self.epoch)
                checkpoint.save(path, state)
                checkpoint.link_or_copy(path, self.checkpoint_path)
                checkpoint.prune(self.out_dir, keep, newest=path)
            else:
                checkpoint.save(self.checkpoint_path, state)

        _on_main(self.ctx, write)
        if self.stopping:
            self._stop(f"checkpoint written at epoch {self.epoch} update {self.update}")

    def _stop(self, what: str) -> None:
        cause = preemption.requested() or "another rank's signal"
        self.log.warning(
            f"stopped on {cause} at update {self.update}: {what}; the same command resumes"
        )
        raise preemption.Stopped()

    def record(self, line: str) -> None:
        """Publish the history: ``metrics.jsonl``, ``results.json``, the last record's
        TensorBoard scalars (at its epoch), and ``line`` in the log; then a barrier."""

        def write() -> None:
            metrics.write_metrics(self.out_dir, self.history)
            metrics.write_results(
                self.out_dir,
                self.config,
                self.history,
                metric=self.metric,
                mode=self.mode,
                finished=self.reached_length,
            )
            last = self.history[-1]
            # a run counted in updates (translation) is drawn on the update axis; "lr" is the
            # schedule's at the epoch's start: the applied one is train/lr, per log point
            x = last["update"] if self.config.get("epochs") is None else last["epoch"]
            metrics.log_scalars(self.writer, last, x, skip=("epoch", "update", "lr"))

        _on_main(self.ctx, write)
        self.log.info(line)
        barrier(self.ctx)

    def finish(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """The end of a run, on every rank: see :func:`engine.metrics.finish`."""
        return metrics.finish(
            self.out_dir,
            self.config,
            self.history,
            model,
            self.ctx,
            self.log,
            metric=self.metric,
            mode=self.mode,
            finished=self.reached_length,
            diverged=self.diverged,
        )


# -- helpers a train.py or the scripts use --------------------------------------------------
def micro_batches(batches: Iterable[T], update_freq: int) -> Iterator[list[T]]:
    """Consecutive groups of ``update_freq`` batches: the micro-batches of one update each
    (the last group may be shorter)."""
    it = iter(batches)
    while group := list(itertools.islice(it, update_freq)):
        yield group


def is_finished(config: Mapping[str, Any], epochs_done: int, updates_done: int) -> bool:
    """The finished test: ``epochs`` or ``max_updates`` reached (whichever is set)."""
    epochs, updates = config.get("epochs"), config.get("max_updates")
    return (epochs is not None and epochs_done >= epochs) or (
        updates is not None and updates_done >= updates
    )


def finished_results(out_dir: str | Path, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """``results.json`` of ``out_dir`` if it is a run of exactly ``config``'s length that
    finished or diverged (what a sweep skips: it is over); None for an unfinished, unreadable
    or differently sized run."""
    try:
        results = metrics.read_json(Path(out_dir) / "results.json")
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict):
        return None
    if not (results.get("finished") or results.get("diverged")):
        return None
    if results.get("epochs") != config.get("epochs"):
        return None
    if results.get("max_updates") != config.get("max_updates"):
        return None
    return results


def schedule_sized_by(config: Mapping[str, Any]) -> str | None:
    """The length key (``epochs`` or ``max_updates``) a schedule's shape depends on, if any."""
    sched = config["schedule"]
    if sched.get("kind") == "cosine" and sched.get("total_steps") is None:
        return "max_updates" if sched.get("unit") == "update" else "epochs"
    return None


def config_diffs(
    saved: Mapping[str, Any], config: Mapping[str, Any], allowed: Iterable[str]
) -> list[str]:
    """``key: old -> new`` for every key outside ``allowed`` that differs (a key ``saved``
    lacks that :data:`engine.config.LATER_KEYS` names compares as its value there)."""
    allowed = set(allowed)
    saved = {**{k: v for k, v in LATER_KEYS.items() if k in config}, **saved}
    return [
        f"{k}: {saved.get(k)!r} -> {config.get(k)!r}"
        for k in sorted(set(saved) | set(config))
        if k not in allowed and saved.get(k) != config.get(k)
    ]


def check_resumable(
    saved: Mapping[str, Any],
    config: Mapping[str, Any],
    path: str | Path,
    also_allowed: Iterable[str] = (),
) -> None:
    """Refuse to resume a checkpoint that holds a different experiment."""
    diffs = config_diffs(saved, config, (*RESUMABLE_CHANGES, *also_allowed))
    if diffs:
        raise ValueError(
            f"{path} holds a run with another config ({'; '.join(diffs)}); "
            "pick another --out-dir or move it away"
        )


def _clock(seconds: float) -> str:
    """``1:02:03`` (``2 days, 1:02:03`` past a day)."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def _on_main(ctx: Context, fn: Any) -> Any:
    """``fn()`` on rank 0; a user error there is raised on every rank (no rank left waiting
    in a collective). Returns rank 0's result on rank 0, None elsewhere."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except ValueError as exc:  # WriteError, RunDirBusy, ... : one line for the user
            if not ctx.distributed:
                raise
            error = str(exc)
    if ctx.distributed:
        error = gather_objects(error, ctx)[0]
        if error is not None:
            raise ValueError(error)
    return result
