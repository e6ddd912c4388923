"""Atomic checkpoints that ``torch.load(weights_only=True)`` can read, and RNG capture.

A checkpoint is a dict of tensors and plain Python values. :func:`save` writes a temporary
file in the same directory, fsyncs it and renames it over the target, so a crash leaves the
previous checkpoint intact. :func:`load` turns an unreadable file into one
:class:`CheckpointError` line naming the path.

What a resumable run stores (the task decides the keys; these are the conventions)::

    {"epoch": completed epochs, "step": optimizer updates so far,
     "model": ..., "optimizer": ..., "schedule": ..., "scaler": ... or None,
     "rng": rng_state() (one per rank, see engine.distributed.gather_objects),
     "sampler": sampler.state_dict(), "best": {...}}

The data order needs no state beyond ``epoch`` when the sampler is seeded per epoch
(:class:`engine.distributed.EpochSampler`); a mid-epoch position is its ``start`` offset.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the path."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the rest of a team
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; :class:`CheckpointError` if unreadable."""
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
    if not isinstance(state, dict):
        raise CheckpointError(f"corrupt checkpoint {path}: expected a dict, got {type(state)}")
    return state


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
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


#: Config keys a resumed run may change (how long, where, on what); all else must match.
RESUMABLE_CHANGES = (
    "config", "epochs", "max_steps_per_epoch", "device", "workers", "data_dir", "out_dir",
    "plugins",
)  # fmt: skip


def check_resumable(
    saved: Mapping[str, Any],
    config: Mapping[str, Any],
    path: str | Path,
    also_allowed: Iterable[str] = (),
) -> None:
    """Refuse to resume a run directory that holds a different experiment."""
    allowed = set(RESUMABLE_CHANGES) | set(also_allowed)
    diffs = [
        f"{k}: {saved.get(k)!r} -> {config.get(k)!r}"
        for k in sorted(set(saved) | set(config))
        if k not in allowed and saved.get(k) != config.get(k)
    ]
    if diffs:
        raise ValueError(
            f"{path} holds a run with another config ({'; '.join(diffs)}); "
            "pick another --out-dir or move it away"
        )
