"""engine.checkpoint: atomic weights_only checkpoints, RNG capture, clean errors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import checkpoint


def test_save_is_atomic_and_weights_only_loadable(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1, "w": torch.ones(3), "cfg": {"a": [1, 2.0, None]}})
    checkpoint.save(path, {"epoch": 2, "w": torch.zeros(3), "cfg": {}})
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temp left
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.zeros(3))


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        checkpoint.save(path, {"epoch": 2, "bad": Unpicklable()})
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_corrupt_or_missing_checkpoint_is_one_line_naming_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match=r"corrupt .*checkpoint\.pt") as exc:
        checkpoint.load(bad)
    assert "\n" not in str(exc.value)
    assert bad.read_bytes() == b"not a checkpoint"  # nothing already written is lost
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint at .*nope\.pt"):
        checkpoint.load(tmp_path / "nope.pt")


def test_rng_state_round_trips_through_weights_only(tmp_path: Path) -> None:
    checkpoint.seed_everything(5)
    checkpoint.save(tmp_path / "c.pt", {"rng": checkpoint.rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    random.random(), np.random.rand(), torch.rand(7)  # noqa: NPY002  (move every generator on)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_state_digest_sees_one_bit() -> None:
    a = {"w": torch.ones(4), "n": torch.tensor(3)}
    b = {"w": torch.ones(4).clone(), "n": torch.tensor(3)}
    assert checkpoint.state_digest(a) == checkpoint.state_digest(b)
    b["w"][2] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert checkpoint.state_digest(a) != checkpoint.state_digest(b)
