"""engine.checkpoint: atomic weights_only checkpoints, RNG capture, clean errors."""

from __future__ import annotations

import errno
import os
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


def test_a_flipped_byte_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 3, "w": torch.full((1000,), 1.5), "opt": {"lr": 0.1}})
    data = bytearray(path.read_bytes())
    at = data.find(torch.full((4,), 1.5).numpy().tobytes()) + 2000  # inside the tensor's bytes
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself reads the damaged file without a word
    with pytest.raises(checkpoint.CheckpointError, match=rf"damaged checkpoint {path}"):
        checkpoint.load(path)


def test_a_foreign_dict_or_tensor_is_refused_by_name(tmp_path: Path) -> None:
    for i, obj in enumerate([{"model": {}, "epoch": 1}, torch.ones(2)]):
        path = tmp_path / f"other{i}.pt"
        torch.save(obj, path)
        with pytest.raises(checkpoint.CheckpointError, match=rf"{path} is not a checkpoint of"):
            checkpoint.load(path)


def test_a_failed_write_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(checkpoint.WriteError, match=rf"cannot write {path}: No space left"):
        checkpoint.save(path, {"epoch": 2})
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_orphan_temp_files_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"")  # killed between mkstemp and write
    (tmp_path / ".results.json.x1.tmp").write_bytes(b"{")
    (tmp_path / "results.json").write_text("{}")
    removed = checkpoint.clean_temp_files(tmp_path)
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _epochs(folder: Path) -> list[str]:
    return [p.name for p in checkpoint.epoch_paths(folder)]


def test_prune_keeps_the_last_n_and_never_the_newest(tmp_path: Path) -> None:
    for e in (1, 2, 3, 10):
        checkpoint.save(checkpoint.epoch_path(tmp_path, e), {"epoch": e})
    newest = checkpoint.epoch_path(tmp_path, 10)
    assert [p.name for p in checkpoint.prune(tmp_path, 2, newest)] == [
        "checkpoint_epoch1.pt",
        "checkpoint_epoch2.pt",
    ]
    assert _epochs(tmp_path) == ["checkpoint_epoch3.pt", "checkpoint_epoch10.pt"]
    # the file just written survives even when older files sort after it
    checkpoint.save(checkpoint.epoch_path(tmp_path, 4), {"epoch": 4})
    checkpoint.prune(tmp_path, 1, checkpoint.epoch_path(tmp_path, 4))
    assert _epochs(tmp_path) == ["checkpoint_epoch4.pt"]


def test_average_equals_a_hand_computation(tmp_path: Path) -> None:
    paths = []
    for i, (w, n) in enumerate([(1.0, 3), (2.0, 4), (4.5, 6)]):
        model = {
            "w": torch.full((2, 2), w),
            "h": torch.tensor([w], dtype=torch.float16),
            "num_batches_tracked": torch.tensor(n),
        }
        paths.append(tmp_path / f"checkpoint_epoch{i + 1}.pt")
        checkpoint.save(
            paths[-1],
            {"epoch": i + 1, "update": 10 * (i + 1), "model": model, "optimizer": {"tag": i}},
        )
    avg = checkpoint.average([paths[2], paths[0], paths[1]])  # order does not matter
    assert torch.equal(avg["model"]["w"], torch.full((2, 2), 7.5 / 3))
    assert avg["model"]["h"].dtype == torch.float32 and float(avg["model"]["h"]) == 2.5
    assert int(avg["model"]["num_batches_tracked"]) == 13 // 3  # integers floor-divided
    assert avg["optimizer"] == {"tag": 2} and avg["epoch"] == 3  # the rest: the newest's
