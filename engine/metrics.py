"""The run directory's files, accuracy counting, TensorBoard and tqdm.

A run directory holds (written by rank 0 only)::

    config.json     the resolved run config + "provenance" (git commit, versions, hardware, argv)
    metrics.jsonl   one JSON object per completed epoch (rewritten from the checkpoint on resume)
    results.json    {"finished", "epochs_completed", "epochs", "metric", "mode", "final", "best",
                     plus the run's identity: table, paper_version, row, schedule, seed, optimizer}
    checkpoint.pt   see engine.checkpoint
    train.log       the log lines; tb/ TensorBoard events

Every JSON file is written atomically, so a reader (``scripts/report.py``) never sees half a file.
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
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write, state_digest
from .distributed import Context, gather_objects

_REPO = Path(__file__).resolve().parent.parent


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def provenance(ctx: Context) -> dict[str, Any]:
    """Everything a citation needs besides the config: code version, libraries, hardware."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for dist_name, key in (("torchvision", "torchvision"), ("numpy", "numpy"),
                           ("scikit-learn", "scikit_learn"), ("lmdb", "lmdb"),
                           ("apollo-optim", "apollo_optim")):  # fmt: skip
        try:
            versions[key] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            versions[key] = None
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
            out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True,
                                 timeout=10, check=True)  # fmt: skip
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")  # untracked files (a plugin, a config) count too
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def write_config(out_dir: str | Path, config: Mapping[str, Any], ctx: Context) -> None:
    """``config.json``: the resolved config plus ``provenance``; earlier starts are kept."""
    path = Path(out_dir) / "config.json"
    history: list[Any] = []
    if path.exists():
        try:
            old = read_json(path)
            history = [*old.get("earlier_starts", []), old.get("provenance")]
        except (OSError, ValueError):
            history = []
    record = provenance(ctx)
    # a plugin file is code outside the repository: record what exactly ran
    record["plugin_sha256"] = {
        spec: hashlib.sha256(Path(spec).read_bytes()).hexdigest()
        for spec in config.get("plugins", [])
        if Path(spec).is_file()
    }
    write_json(path, {**config, "provenance": record, "earlier_starts": history})


def write_metrics(out_dir: str | Path, history: Sequence[Mapping[str, Any]]) -> None:
    """``metrics.jsonl``, one line per epoch, rewritten whole to match the checkpoint."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write(Path(out_dir) / "metrics.jsonl", lambda f: f.write(text.encode("utf-8")))


def best_record(
    history: Sequence[Mapping[str, Any]], metric: str, mode: str = "max"
) -> dict[str, Any] | None:
    """The epoch record with the best ``metric`` (the earliest on ties)."""
    scored = [r for r in history if r.get(metric) is not None]
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
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``results.json``: the final and the best epoch, whether the run finished, and ``extra``
    (classification adds ``model_sha256_by_rank``: DDP ranks must end with one digest)."""
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
        "finished": finished,
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
) -> dict[str, Any] | None:
    """The end of a run, on every rank: gather each rank's model digest (DDP ranks must end
    bit-identical), then rank 0 writes the final ``results.json`` and logs the best epoch."""
    digests = gather_objects(state_digest(model.state_dict()), ctx)
    if not ctx.is_main:
        return None
    results = write_results(out_dir, config, history, metric=metric, mode=mode,
                            finished=len(history) >= config["epochs"],
                            extra={"model_sha256_by_rank": digests})  # fmt: skip
    best = results["best"] or {}
    log.info(f"done: best {metric} {best.get(metric, float('nan')):.2f} at epoch "
             f"{best.get('epoch')}")  # fmt: skip
    return results


def perplexity(nll_sum: float, count: float) -> float:
    """exp(mean negative log-likelihood per predicted token); inf when it overflows a float."""
    if count <= 0:
        return float("nan")
    try:
        return math.exp(nll_sum / count)
    except OverflowError:
        return float("inf")


class Meter:
    """Running sums of named values and a count (sum-then-divide, so ranks all-reduce exactly)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def means(self, count_key: str = "count") -> dict[str, float]:
        n = self.sums.get(count_key, 0.0) or 1.0
        return {k: v / n for k, v in self.sums.items() if k != count_key}


@torch.no_grad()
def correct_topk(
    logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int] = (1, 5)
) -> list[int]:
    """How many rows have the target among their top-k logits, for each k (capped at #classes)."""
    ks = list(ks)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(target.unsqueeze(1))
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


class NullWriter:
    """Stands in for a SummaryWriter on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def tensorboard(out_dir: str | Path, ctx: Context) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``out_dir/tb`` for rank 0, a no-op writer elsewhere."""
    if not ctx.is_main:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter  # slow import: only when a run starts

    return SummaryWriter(log_dir=str(Path(out_dir) / "tb"))


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
