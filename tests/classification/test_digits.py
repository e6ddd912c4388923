"""The quickstart's digits: cached once in a plain .npz, read back exactly, no sklearn later."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classification import digits

CONFIG = {"augmentation": {"style": "none"}, "num_classes": 10}


def test_digits_are_cached_once_and_read_back_exactly(tmp_path, monkeypatch) -> None:
    from sklearn.datasets import load_digits

    train, test = digits.build_datasets({**CONFIG, "data_dir": str(tmp_path)})
    images, labels = digits.load_digits(tmp_path)
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    # the same tensors as standardising scikit-learn's arrays directly (order and values)
    x = reference.images.astype(np.float32) / 16.0
    mean, std = float(x[:1437].mean()), float(x[:1437].std())
    assert np.array_equal(test.tensors[0].numpy()[:, 0], (x[1437:] - mean) / std)
    assert test.tensors[1].tolist() == reference.target[1437:].tolist()
    assert len(train) == 1437
    # once written, scikit-learn is never asked again
    monkeypatch.setattr("sklearn.datasets.load_digits", lambda: pytest.fail("sklearn used"))
    assert np.array_equal(digits.load_digits(tmp_path)[0], images)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left


def test_a_damaged_digits_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "digits.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"unreadable digits file .*digits\.npz.*delete it"):
        digits.load_digits(tmp_path)
    np.savez(path, images=np.zeros((10, 8, 8), np.uint8), labels=np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match=r"digits\.npz does not hold scikit-learn's digits"):
        digits.load_digits(tmp_path)


def test_a_file_as_data_directory_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"data directory .*f is a file, not a folder"):
        digits.load_digits(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"
