"""Checksummed, atomic checkpoints that ``torch.load(weights_only=True)`` reads; keep-last; average.

:func:`save` writes a temporary file in the same directory, fsyncs it and renames it over the
target (then fsyncs the directory), so a crash leaves the previous checkpoint intact; a failed
write (full or read-only disk) is one :class:`WriteError` line naming the path. Every checkpoint
carries ``format`` (:data:`FORMAT`) and ``sha256``, a digest of its whole payload (every tensor's
bytes, every plain value); :func:`load` recomputes it, so a flipped byte is a
:class:`CheckpointError` naming the file instead of a silently damaged resume, and a dict that
this project did not write is refused by name.

The layout of a run's checkpoint is :mod:`engine.run`'s, one for every task tree
(docs/run_directory.md). Beside ``checkpoint.pt`` (the resume point), a run with ``keep_last``
N > 0 keeps its last N epoch checkpoints ``checkpoint_epoch<E>.pt`` (:func:`epoch_path`,
:func:`prune`), which :func:`average` turns into one model as fairseq's
``scripts/average_checkpoints.py`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

#: Written into every checkpoint; :func:`load` refuses dicts without it.
FORMAT = "apollo-optim run checkpoint v1"
_EPOCH_FILE = re.compile(r"^checkpoint_epoch(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, unreadable, damaged, foreign); names the path."""


class WriteError(ValueError):
    """A run file that could not be written (disk full, read-only, permissions); names the path."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never half of one; a
    temp file orphaned by a kill is named ``.<name>.<random>.tmp`` (see :func:`clean_temp_files`).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the rest of a team
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc} (nothing replaced)") from None
    except RuntimeError as exc:  # torch.save's writer: "[enforce fail at inline_container.cc..."
        cause = _os_error(exc)
        if cause is None and "inline_container" not in str(exc):
            raise
        why = (cause.strerror or str(cause)) if cause is not None else str(exc)
        raise WriteError(f"cannot write {path}: {why} (nothing replaced)") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (torch.save reports a failed write, such as a full disk, as
    a RuntimeError raised while the OSError is handled), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable before anything that relies on it (deleting older checkpoints)."""
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def clean_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files :func:`atomic_write` left behind when killed; call it only while
    holding the folder's run lock (another writer's temp file is not an orphan)."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def payload_digest(obj: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tuples, tensors and plain values.

    Types are part of the digest (``1``, ``1.0``, ``True`` and ``"1"`` differ); a tensor
    contributes its dtype, shape and bytes. Equal iff :func:`load` got back what was saved.
    """
    h = hashlib.sha256()
    _digest_into(h, obj)
    return h.hexdigest()


def _digest_into(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _digest_into(h, k)
            _digest_into(h, v)
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__}{len(obj)}:".encode())
        for v in obj:
            _digest_into(h, v)
    elif isinstance(obj, bytes):
        h.update(f"b{len(obj)}:".encode() + obj)
    else:  # None, bool, int, float (repr round-trips), str, torch.dtype, ...
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus ``format`` and ``sha256``) to ``path`` atomically."""
    state = {k: v for k, v in state.items() if k not in ("format", "sha256")}
    state = {"format": FORMAT, **state}
    state["sha256"] = payload_digest(state)
    atomic_write(path, lambda f: torch.save(state, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint; :class:`CheckpointError` (one line naming it) otherwise."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as exc:
        raise CheckpointError(
            f"corrupt or unreadable checkpoint {path} ({type(exc).__name__}); "
            "move it away to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = (
            f"a {type(state).__name__}"
            if not isinstance(state, dict)
            else (f"format {state['format']!r}" if "format" in state else "no 'format' key")
        )
        raise CheckpointError(
            f"{path} is not a checkpoint of this project ({what}; expected {FORMAT!r}); "
            "move it away to start over"
        )
    recorded = state.pop("sha256", None)
    if recorded != payload_digest(state):
        raise CheckpointError(
            f"damaged checkpoint {path}: its payload does not match the checksum written with "
            "it; move it away to start over (an epoch checkpoint beside it may be intact)"
        )
    return state


def epoch_path(folder: str | Path, epoch: int) -> Path:
    """``<folder>/checkpoint_epoch<epoch>.pt``: the checkpoint kept for a completed epoch."""
    return Path(folder) / f"checkpoint_epoch{epoch}.pt"


def epoch_paths(folder: str | Path) -> list[Path]:
    """The folder's epoch checkpoints, oldest first."""
    found = [
        (int(m.group(1)), p) for p in Path(folder).iterdir() if (m := _EPOCH_FILE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes, atomically: a hard link (no second write of a large
    file), else a copy; ``dst`` is replaced by rename either way."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {dst}: {exc.strerror or exc} (nothing replaced)") from None


def prune(folder: str | Path, keep: int, newest: Path) -> list[Path]:
    """Delete epoch checkpoints beyond the ``keep`` most recent; ``newest`` (just written, and
    therefore the run's only sure-valid one) is never deleted. Call it only after ``newest``
    is safely on disk. Returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    old = [p for p in epoch_paths(folder) if p != Path(newest)]
    doomed = old[: max(len(old) - (keep - 1), 0)]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def average(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The parameter average of checkpoints, as fairseq's ``average_checkpoints.py`` computes it.

    Every ``model`` tensor is summed over the checkpoints (float16/bfloat16 in float32, other
    floating types in their own dtype) and divided by N; integer tensors (BatchNorm's
    ``num_batches_tracked``) are floor-divided. Everything else (optimizer, schedule, history)
    comes from the newest checkpoint (the most updates, then the most epochs). Each file is
    loaded and verified by :func:`load`; the models must have the same keys and shapes.
    """
    if not paths:
        raise ValueError("average: no checkpoints given")
    total: dict[str, torch.Tensor] = {}
    newest: tuple[tuple[int, int], dict[str, Any]] | None = None
    keys: list[str] | None = None
    for path in paths:
        state = load(path)
        model = state["model"]
        if keys is None:
            keys = list(model)
        elif sorted(model) != sorted(keys):
            raise CheckpointError(f"{path}: its model's keys differ from {paths[0]}'s")
        for k, v in model.items():
            v = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
            if k in total and total[k].shape != v.shape:
                raise CheckpointError(
                    f"{path}: {k} has shape {tuple(v.shape)} but {tuple(total[k].shape)} in "
                    f"{paths[0]}; checkpoints of different models cannot be averaged"
                )
            total[k] = v.clone() if k not in total else total[k].add_(v)
        progress = (int(state.get("update", 0)), int(state.get("epoch", 0)))
        if newest is None or progress > newest[0]:
            newest = (progress, state)
    n = len(paths)
    averaged = {
        k: v.div_(n) if v.is_floating_point() else v.floor_divide_(n) for k, v in total.items()
    }
    assert newest is not None
    return {**newest[1], "model": averaged, "averaged_from": [str(p) for p in paths]}


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as weights_only-safe values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global generator is what libraries draw from)
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors (names, dtypes, shapes, bytes): equal iff bit-identical."""
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()
