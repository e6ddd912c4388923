"""The run directory's files, metrics kept on the device, TensorBoard and tqdm.

What each file holds is in docs/run_directory.md; :mod:`engine.run` decides when they are
written (rank 0 only). Every JSON file is written atomically, so a reader
(``scripts/report.py``) never sees half a file, and is strict JSON: a non-finite number (an
overflowed perplexity) is written as ``null``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .checkpoint import WriteError, atomic_write, state_digest
from .distributed import Context, gather_objects

_REPO = Path(__file__).resolve().parent.parent


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (non-finite floats as ``null``)."""
    text = json.dumps(finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def read_json(path: str | Path) -> Any:
    """Parse a JSON file (OSError / ValueError for a missing or malformed one)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def provenance(ctx: Context, packages: Iterable[str] = ()) -> dict[str, Any]:
    """Everything a citation needs besides the config: code version, libraries, hardware.

    ``packages`` are the distributions the task depends on besides torch and numpy (the
    classification task: torchvision and scikit-learn); their versions are recorded under
    their names with ``-`` spelt ``_``.
    """
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for dist_name in ("numpy", *packages, "apollo-optim"):
        try:
            versions[dist_name.replace("-", "_")] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            versions[dist_name.replace("-", "_")] = None
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    hardware = {
        "device": ctx.device.type,
        "world_size": ctx.world_size,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if ctx.device.type == "cuda"
        else [],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),  # CPU results depend on it
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
    return {
        "git": _git_info(),
        "versions": versions,
        "hardware": hardware,
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is often just the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")  # untracked files (a plugin, a config) count too
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def write_config(
    out_dir: str | Path, config: Mapping[str, Any], ctx: Context, packages: Iterable[str] = ()
) -> None:
    """``config.json``: the resolved config plus ``provenance`` (see :func:`provenance` for
    ``packages``); the provenance of earlier starts is kept."""
    path = Path(out_dir) / "config.json"
    history: list[Any] = []
    if path.exists():
        try:
            old = read_json(path)
            history = [*old.get("earlier_starts", []), old.get("provenance")]
        except (OSError, ValueError):
            history = []
    record = provenance(ctx, packages)
    # a plugin file is code outside the repository: record what exactly ran
    record["plugin_sha256"] = {
        spec: hashlib.sha256(Path(spec).read_bytes()).hexdigest()
        for spec in config.get("plugins", [])
        if Path(spec).is_file()
    }
    write_json(path, {**config, "provenance": record, "earlier_starts": history})


def write_metrics(out_dir: str | Path, history: Sequence[Mapping[str, Any]]) -> None:
    """``metrics.jsonl``, one line per epoch, rewritten whole to match the checkpoint."""
    text = "".join(json.dumps(finite(record), allow_nan=False) + "\n" for record in history)
    atomic_write(Path(out_dir) / "metrics.jsonl", lambda f: f.write(text.encode("utf-8")))


def best_record(
    history: Sequence[Mapping[str, Any]], metric: str, mode: str = "max"
) -> dict[str, Any] | None:
    """The epoch record with the best finite ``metric`` (the earliest on ties)."""
    scored = [
        r for r in history if isinstance(r.get(metric), int | float) and math.isfinite(r[metric])
    ]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return dict(pick(scored, key=lambda r: r[metric]))


def write_results(
    out_dir: str | Path,
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    *,
    metric: str,
    mode: str = "max",
    finished: bool,
    diverged: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``results.json``: the final and the best epoch, whether the run finished (reached its
    length) or ``diverged`` (``{"epoch", "update"}`` of its first non-finite training loss, else
    None), and ``extra`` (:func:`finish` adds ``model_sha256_by_rank``)."""
    results = {
        "table": config.get("table"),
        "paper_version": config.get("paper_version"),
        "row": config.get("row"),
        "schedule": config["schedule"]["name"],
        "seed": config.get("seed"),
        "optimizer": config["optimizer"]["name"],
        "metric": metric,
        "mode": mode,
        "epochs": config["epochs"],
        "epochs_completed": len(history),
        "max_updates": config.get("max_updates"),
        "updates_completed": history[-1].get("update") if history else 0,
        "finished": finished,
        "diverged": dict(diverged) if diverged else None,
        "final": dict(history[-1]) if history else None,
        "best": best_record(history, metric, mode),
        **(extra or {}),
    }
    write_json(Path(out_dir) / "results.json", results)
    return results


def finish(
    out_dir: str | Path,
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    model: torch.nn.Module,
    ctx: Context,
    log: Any,
    *,
    metric: str,
    mode: str = "max",
    finished: bool,
    diverged: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The end of a run, on every rank: gather each rank's model digest (DDP ranks must end
    bit-identical), then rank 0 writes the final ``results.json`` and logs the best epoch."""
    digests = gather_objects(state_digest(model.state_dict()), ctx)
    if not ctx.is_main:
        return None
    results = write_results(
        out_dir,
        config,
        history,
        metric=metric,
        mode=mode,
        finished=finished,
        diverged=diverged,
        extra={"model_sha256_by_rank": digests},
    )
    best = results["best"]
    if diverged:
        log.info(
            f"done: diverged at update {diverged['update']} (epoch {diverged['epoch']}); "
            "results.json records it; checkpoint.pt, if any, is the last one before it"
        )
    elif best is None:
        log.info(f"done: no epoch has a finite {metric}")
    else:
        log.info(f"done: best {metric} {best[metric]:.2f} at epoch {best.get('epoch')}")
    return results


class Meter:
    """Running sums of named values kept on the device: adding never waits for the device;
    :meth:`read` is the one host transfer (and all-reduce over ranks), for log points and
    epoch ends. Sums are float64, so counts stay exact and ranks add up exactly."""

    def __init__(self, device: torch.device, initial: Mapping[str, float] | None = None) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        for k, v in (initial or {}).items():
            self.sums[k] = torch.tensor(float(v), dtype=torch.float64, device=device)
        self._initial = {k: v.clone() for k, v in self.sums.items()}
        self._last: dict[str, float] | None = None  # the sums at the last read_window

    def add(self, **values: torch.Tensor | float) -> None:
        for k, v in values.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().to(torch.float64)
            if k not in self.sums:
                self.sums[k] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.sums[k] += v

    def read(self, ctx: Context) -> dict[str, float]:
        """The sums over every rank, as Python floats (one device-to-host copy)."""
        if not self.sums:
            return {}
        return dict(zip(self.sums, self._reduced(list(self.sums.values()), ctx), strict=True))

    def read_window(self, ctx: Context) -> dict[str, float]:
        """What was added since the previous :meth:`read_window` (the first time: since the
        meter was made, its ``initial`` sums left out), over every rank; one host copy."""
        keys = list(self.sums)
        if self._last is None:  # the initial sums, reduced over the ranks with the first read
            base = [self._initial.get(k, torch.zeros_like(self.sums[k])) for k in keys]
            values = self._reduced([*self.sums.values(), *base], ctx)
            now, before = values[: len(keys)], dict(zip(keys, values[len(keys) :], strict=True))
        else:
            now, before = self._reduced(list(self.sums.values()), ctx), self._last
        self._last = dict(zip(keys, now, strict=True))
        return {k: v - before.get(k, 0.0) for k, v in self._last.items()}

    @staticmethod
    def _reduced(tensors: list[torch.Tensor], ctx: Context) -> list[float]:
        if not tensors:
            return []
        stacked = torch.stack(tensors)
        if ctx.distributed:
            stacked = stacked.to(ctx.device if ctx.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(stacked)
        return stacked.tolist()

    def local(self) -> dict[str, float]:
        """This rank's sums as Python floats (what a mid-epoch checkpoint stores)."""
        return {k: float(v) for k, v in self.sums.items()}


class FiniteWatch:
    """Whether every training loss so far was finite, and how many updates came before the
    first that was not, kept on the device: :meth:`add` never waits for it (no device sync per
    update); :meth:`first_bad` is one host transfer, made where the loop reads anyway."""

    def __init__(self, device: torch.device) -> None:
        self.ok = torch.ones((), dtype=torch.int64, device=device)  # 1 while all were finite
        self.clean = torch.zeros((), dtype=torch.int64, device=device)  # updates before then

    def add(self, loss: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """One update's training loss (any scale), or the losses of its micro-batches."""
        if not isinstance(loss, torch.Tensor):
            loss = torch.stack([x.detach().reshape(-1).sum() for x in loss])
        self.ok.mul_(torch.isfinite(loss.detach()).all())
        self.clean.add_(self.ok)

    def first_bad(self, ctx: Context) -> int | None:
        """The 0-based index, among the updates added, of the first whose loss was not finite
        on any rank; None while all were finite."""
        both = torch.stack([self.ok, self.clean])
        if ctx.distributed:
            both = both.to(ctx.device if ctx.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MIN)
        ok, clean = both.tolist()
        return None if ok else int(clean)


class NullWriter:
    """Stands in for a SummaryWriter on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class EventWriter:
    """TensorBoard's ``SummaryWriter`` on a run's ``tb/`` folder, whose failed writes (a full
    disk) are one :class:`WriteError` naming the folder.

    The SummaryWriter writes from a thread of its own, which hands a write's OSError to the
    run's next call (raised here as the WriteError) and also prints it as a traceback; while
    the writer is open, that print is left out (``threading.excepthook``, for those threads'
    OSErrors only).
    """

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when a run starts

        self.folder = folder
        self._hook = threading.excepthook
        threading.excepthook = _quiet_writer_threads(self._hook)
        self._writer = self._call(SummaryWriter, log_dir=str(folder))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise WriteError(f"cannot write {self.folder}: {exc.strerror or exc}") from None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._call(self._writer.add_scalar, tag, value, step)

    def flush(self) -> None:
        self._call(self._writer.flush)

    def close(self) -> None:
        try:
            self._call(self._writer.close)
        finally:
            threading.excepthook = self._hook


def _quiet_writer_threads(previous: Any) -> Any:
    def hook(args: Any) -> None:
        if (
            isinstance(args.exc_value, OSError)
            and type(args.thread).__name__ == "_AsyncWriterThread"
        ):
            return  # the run reports it
        previous(args)

    return hook


def tensorboard(out_dir: str | Path, ctx: Context) -> Any:
    """An :class:`EventWriter` on ``out_dir/tb`` for rank 0, a no-op writer elsewhere."""
    if not ctx.is_main:
        return NullWriter()
    return EventWriter(Path(out_dir) / "tb")


def log_scalars(
    writer: Any, record: Mapping[str, Any], step: int, skip: Iterable[str] = ()
) -> None:
    """Every numeric entry of ``record`` as a scalar at ``step``."""
    skip = set(skip)
    for k, v in record.items():
        if k not in skip and isinstance(v, int | float) and not isinstance(v, bool):
            writer.add_scalar(k, v, step)
    writer.flush()


def progress(iterable: Iterable, ctx: Context, total: int | None = None, desc: str = "") -> Any:
    """tqdm on rank 0 when stderr is a terminal; the plain iterable otherwise."""
    if not ctx.is_main or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
