"""CIFAR pickles and ImageFolder read from the real layouts; bad data is one clear error."""

from __future__ import annotations

import io
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from classification import data
from tests.classification.conftest import write_cifar

AUG = {
    "style": "cifar",
    "crop": 32,
    "padding": 4,
    "hflip": True,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
}


def config(root: Path, dataset: str = "cifar10", num_classes: int = 10, **aug) -> dict:
    return {
        "dataset": dataset,
        "data_dir": str(root),
        "num_classes": num_classes,
        "augmentation": {**AUG, **aug},
    }


def test_cifar_pickles_round_trip(cifar_dir: Path) -> None:
    images, labels = data.read_cifar(cifar_dir, "cifar10", train=True)
    assert images.shape == (45, 32, 32, 3) and images.dtype == np.uint8  # 5 files x 9
    with open(cifar_dir / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    # row-major (3, 32, 32) planes -> HWC: pixel (0, 1) of the green plane is element 1024 + 1
    assert images[0, 0, 1, 1] == first[b"data"][0][1024 + 1]
    assert labels[:9].tolist() == first[b"labels"]
    # the folder itself works too, and no checksum is asked of a subset
    same, _ = data.read_cifar(cifar_dir / "cifar-10-batches-py", "cifar10", train=True)
    assert np.array_equal(same, images)


def test_cifar100_layout(tmp_path: Path) -> None:
    root = write_cifar(tmp_path, "cifar100", n_train=12, n_test=6, num_classes=100)
    train_set, test_set = data.build_datasets(config(root, "cifar100", 100))
    assert (len(train_set), len(test_set)) == (12, 6)
    x, y = train_set[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 100


def test_eval_transform_is_normalize_only(cifar_dir: Path) -> None:
    _, test_set = data.build_datasets(config(cifar_dir))
    x, _ = test_set[0]
    raw = torch.from_numpy(test_set.images[0]).permute(2, 0, 1).float() / 255
    assert torch.allclose(x, (raw - 0.5) / 0.25)


def test_imagefolder(imagenet_dir: Path) -> None:
    cfg = config(imagenet_dir, "imagenet", 3, style="imagenet", crop=16, resize=18)
    train_set, val_set = data.build_datasets(cfg)
    assert (len(train_set), len(val_set)) == (12, 12)
    assert train_set[0][0].shape == val_set[0][0].shape == (3, 16, 16)
    with pytest.raises(data.DataError, match=r"has 3 class folders but num_classes is 1000"):
        data.build_datasets({**cfg, "num_classes": 1000})


def test_bad_data_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match=r"data directory .*nowhere does not exist"):
        data.build_datasets(config(tmp_path / "nowhere"))
    with pytest.raises(
        data.DataError,
        match=r"no cifar10 data in .*expected .*data_batch_1.*"
        r"where to get it and the layout: docs/data\.md",
    ):
        data.build_datasets(config(tmp_path))
    root = write_cifar(tmp_path / "short")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match=r"missing cifar10 file .*data_batch_3"):
        data.build_datasets(config(root))
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(data.DataError, match=r"malformed cifar10 file .*data_batch_3.*3072"):
        data.build_datasets(config(root))
    with pytest.raises(data.DataError, match=r"labels in .* outside num_classes 5"):
        data.build_datasets(config(write_cifar(tmp_path / "labels"), num_classes=5))
    with pytest.raises(data.DataError, match=r"bad ImageNet folder .*train"):
        data.build_datasets(config(tmp_path / "labels", "imagenet", style="imagenet", resize=36))


def py2_cifar_pickle(data: np.ndarray, labels: list[int], label_key: bytes = b"labels") -> bytes:
    """A batch as Python 2's cPickle wrote the real files (protocol 2, str as BINSTRING, the
    array via ``numpy.core.multiarray._reconstruct``), opcode by opcode; Python 3's pickler
    cannot write this form (it pickles bytes through ``_codecs.encode``)."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(n: int) -> bytes:  # BININT1 / BININT
        return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)

    shape = b"(" + b"".join(i(n) for n in data.shape) + b"t"
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + i(0)
        + b"\x85"
        + s(b"b")
        + b"\x87R("
        + i(1)
        + shape
        + b"cnumpy\ndtype\n"
        + s(b"u1")
        + i(0)
        + i(1)
        + b"\x87R("
        + i(3)
        + s(b"|")
        + b"NNN"
        + i(-1)
        + i(-1)
        + i(0)
        + b"tb\x89"
        + s(data.tobytes())
        + b"tb"
    )
    names = b"](" + b"".join(s(b"i%d.png" % k) for k in labels) + b"e"
    targets = b"](" + b"".join(i(n) for n in labels) + b"e"
    items = [
        (b"batch_label", s(b"training batch 1 of 5")),
        (b"data", array),
        (label_key, targets),
        (b"filenames", names),
    ]
    return b"\x80\x02}(" + b"".join(s(k) + v for k, v in items) + b"u."


def test_python2_pickles_of_the_real_format_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    raw = py2_cifar_pickle(pixels, [3, 1, 4])
    plain = pickle.loads(raw, encoding="bytes")  # what the real files give the stock unpickler
    assert plain[b"batch_label"] == b"training batch 1 of 5" and plain[b"labels"] == [3, 1, 4]
    (tmp_path / "data_batch_1").write_bytes(raw)
    batch = data.load_cifar_batch(tmp_path / "data_batch_1")
    assert sorted(batch) == ["batch_label", "data", "filenames", "labels"]
    assert batch["data"].dtype == np.uint8 and np.array_equal(batch["data"], pixels)
    assert batch["filenames"] == [b"i3.png", b"i1.png", b"i4.png"]
    # a copy rebuilt with Python 3 (protocols 2 to 5) loads too
    for protocol in (2, 4, 5):
        batch = {b"data": pixels, b"labels": [3, 1, 4]}
        (tmp_path / "p3").write_bytes(pickle.dumps(batch, protocol=protocol))
        if protocol == 2:  # Python 3 writes bytes through _codecs.encode: not the format
            with pytest.raises(pickle.UnpicklingError, match=r"_codecs\.encode"):
                data.load_cifar_batch(tmp_path / "p3")
            continue
        assert np.array_equal(data.load_cifar_batch(tmp_path / "p3")["data"], pixels)


class _Payload:
    """Unpickles as a call of ``exec``: what a poisoned download would carry."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('ran')"

    def __reduce__(self):
        return exec, (self.code,)


@pytest.mark.parametrize("protocol", [4, 5, "python2"])
def test_a_pickle_carrying_code_is_refused_without_running_it(tmp_path, protocol) -> None:
    root = write_cifar(tmp_path / "d")
    marker = tmp_path / "payload_ran"
    path = root / "cifar-10-batches-py" / "data_batch_1"
    if protocol == "python2":  # {'x': __builtin__.eval(code)} as Python 2 would write it
        code = _Payload(marker).code.encode()
        path.write_bytes(
            b"\x80\x02}(U\x01xc__builtin__\neval\nU" + bytes([len(code)]) + code + b"\x85Ru."
        )
        name = r"__builtin__\.eval"
    else:
        batch = {b"data": np.zeros((9, 3072), np.uint8), b"labels": [0] * 9, b"x": _Payload(marker)}
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
        name = r"builtins\.exec"
    with pytest.raises(data.DataError, match=rf"data_batch_1: .*{name}.*not loaded"):
        data.build_datasets(config(root))
    assert not marker.exists()


def test_empty_and_malformed_batches_are_refused(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    test_batch = root / "cifar-10-batches-py" / "test_batch"
    test_batch.write_bytes(py2_cifar_pickle(np.zeros((0, 3072), np.uint8), []))
    with pytest.raises(data.DataError, match=r"test_batch: it holds no images"):
        data.build_datasets(config(root))
    test_batch.write_bytes(b"")
    with pytest.raises(data.DataError, match=r"malformed cifar10 file .*test_batch: EOFError"):
        data.build_datasets(config(root))
    test_batch.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(data.DataError, match=r"test_batch: ValueError: expected a dict, got list"):
        data.build_datasets(config(root))
    test_batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072)), b"labels": [0, 1]}))
    with pytest.raises(data.DataError, match=r"test_batch: data is not a uint8 array"):
        data.build_datasets(config(root))


def test_a_file_as_data_directory_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(data.DataError, match=r"data directory .*f is a file, not a folder"):
        data.build_datasets(config(tmp_path / "f"))


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_one_line_naming_it(imagenet_dir, tmp_path, workers) -> None:
    """Also from a DataLoader worker, whose error reaches the trainer as a whole traceback."""
    from torch.utils.data import DataLoader

    root = tmp_path / "in"
    shutil.copytree(imagenet_dir, root)
    bad = root / "train" / "n00000001" / "img_2.JPEG"
    good = bad.read_bytes()
    cfg = config(root, "imagenet", 3, style="imagenet", crop=16, resize=18)
    for content, reason in [(b"not a jpeg", "not an image format"), (good[:300], "runcated")]:
        bad.write_bytes(content)
        train_set, _ = data.build_datasets(cfg)
        with pytest.raises(data.DataError) as caught:
            list(DataLoader(train_set, batch_size=4, num_workers=workers))
        message = str(caught.value)
        assert message.startswith(f"unreadable image {bad} (") and reason in message
        assert "\n" not in message and "Traceback" not in message


class _Response(io.BytesIO):
    """What ``urllib.request.urlopen`` returns, serving ``body`` from ``url``."""

    def __init__(self, body: bytes, url: str) -> None:
        super().__init__(body)
        self.url, self.length = url, len(body)


def _serve(monkeypatch: pytest.MonkeyPatch, body: bytes | None) -> list[str]:
    """Replace the network: ``body`` for every URL, or no network at all when None."""
    import urllib.error
    import urllib.request

    asked: list[str] = []

    def urlopen(request, *args, **kwargs):
        url = getattr(request, "full_url", request)
        asked.append(url)
        if body is None:
            raise urllib.error.URLError(OSError(-2, "Name or service not known"))
        return _Response(body, url)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def _fake_cifar_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A cifar-10-python.tar.gz of a small real-layout copy; torchvision's MD5s made its own."""
    import hashlib
    import tarfile

    from torchvision.datasets import CIFAR10

    src = write_cifar(tmp_path / "src") / "cifar-10-batches-py"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    body = buf.getvalue()

    def md5(b: bytes) -> str:
        return hashlib.md5(b).hexdigest()

    files = [[n, md5((src / n).read_bytes())] for n, _ in CIFAR10.train_list + CIFAR10.test_list]
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(body))
    monkeypatch.setattr(CIFAR10, "train_list", files[:5])
    monkeypatch.setattr(CIFAR10, "test_list", files[5:])
    return body


def _download(argv: list[str], capsys) -> tuple[int, str, str]:
    from engine import cli

    try:
        cli.main(data.main, argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("existing", [False, True])
def test_a_download_without_network_is_one_line_and_leaves_the_folder_as_it_was(
    tmp_path, monkeypatch, capsys, existing
) -> None:
    root = tmp_path / "data" / "cifar10"
    if existing:
        root.mkdir(parents=True)
    asked = _serve(monkeypatch, None)
    code, _, err = _download(["cifar10", str(root)], capsys)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert code == 2 and asked and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: could not download {url} (") and "docs/data.md" in err
    assert "c58f30108f718f92721af3b95e74349a" in err and f"unpack it in {root}" in err
    # nothing created, nothing left behind: not the folder, not a partial archive
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == (
        [Path("data"), Path("data/cifar10")] if existing else []
    )


def test_a_download_puts_only_the_complete_verified_folder_in_place(
    tmp_path, monkeypatch, capsys
) -> None:
    body = _fake_cifar_archive(tmp_path / "fake", monkeypatch)
    root = tmp_path / "out" / "cifar10"
    # a damaged transfer: refused by its MD5, nothing left
    _serve(monkeypatch, body[:-10] + b"0123456789")
    code, _, err = _download(["cifar10", str(root)], capsys)
    # (above the error line: torchvision's progress bar of the transfer)
    assert code == 2 and "does not have the MD5" in err.splitlines()[-1]
    assert err.count("error:") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake"]  # no hidden staging folder
    # a full disk while unpacking: one line, nothing left
    import torchvision.datasets.utils as tv_utils

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    _serve(monkeypatch, body)
    with monkeypatch.context() as m:
        m.setattr(tv_utils, "extract_archive", full_disk)
        code, _, err = _download(["cifar10", str(root)], capsys)
    assert code == 2 and "could not unpack" in err and "No space left" in err.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake"]
    # what a SIGKILLed download leaves (a partial archive, half the files) is not used
    killed = tmp_path / ".cifar10-download"
    (killed / "cifar-10-batches-py").mkdir(parents=True)
    (killed / "cifar-10-batches-py" / "stray").write_text("x")
    (killed / "cifar-10-python.tar.gz").write_bytes(body[:100])
    # the real thing: the folder, and nothing else
    code, out, _ = _download(["cifar10", str(root)], capsys)
    assert code == 0 and out.strip() == str(root / "cifar-10-batches-py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cifar10"]
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-py"]
    assert not (root / "cifar-10-batches-py" / "stray").exists()
    assert len(data.read_cifar(root, "cifar10", train=True)[1]) == 45
    # run again without a network: the verified folder is kept, nothing fetched
    asked = _serve(monkeypatch, None)
    assert _download(["cifar10", str(root)], capsys)[:2] == (0, f"{root / 'cifar-10-batches-py'}\n")
    assert asked == []
    # ... unless a file in it is not the published one
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"x")
    code, _, err = _download(["cifar10", str(root)], capsys)
    assert code == 2 and "test_batch in it are missing or not the published files" in err


def test_download_help_names_the_command_and_keeps_the_example(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        data.main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and out.startswith("usage: python -m classification.data ")
    assert "\n    python -m classification.data cifar10 data/cifar10\n" in out
    assert "``" not in out and ":class:" not in out
    assert "which data set to download" in out and "the folder to put it in" in out


def test_val_classes_other_than_train_classes_are_refused(imagenet_dir, tmp_path) -> None:
    """Same count, another name: every index past it would silently name another class."""
    root = tmp_path / "in"
    shutil.copytree(imagenet_dir, root)
    (root / "val" / "n00000001").rename(root / "val" / "n00000009")
    cfg = config(root, "imagenet", 3, style="imagenet", crop=16, resize=18)
    with pytest.raises(
        data.DataError,
        match=r"val and .*train hold different class folders \(n00000001, n00000009 in only",
    ):
        data.build_datasets(cfg)


def test_an_interrupted_download_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.utils as tv_utils

    def interrupted(url, root, *args, **kwargs):
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"part of it")
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM (turned into it while downloading)

    monkeypatch.setattr(tv_utils, "download_url", interrupted)
    root = tmp_path / "c10"
    with pytest.raises(SystemExit) as exited:
        data.main(["cifar10", str(root)])
    assert exited.value.code == 130
    assert capsys.readouterr().err == f"interrupted: {root} is as it was\n"
    assert list(tmp_path.iterdir()) == []
