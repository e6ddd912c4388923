"""classification.train with the GPU-speed options, on the CPU: data_pipeline=device, --compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classification import train
from engine import checkpoint, compiling
from tests.classification.conftest import QUICKSTART, train_tiny
from tests.helpers import history

DEVICE_DATA = ["data_pipeline=device"]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(out / "checkpoint.pt")["model"]


def test_device_pipeline_trains_and_resumes_bit_exactly(cifar_dir: Path, tmp_path: Path) -> None:
    """2 epochs straight == 1 epoch, then the same command with --epochs 2 (the draws of an
    epoch come from (seed, rank, epoch), not from what ran before)."""
    straight = train_tiny(tmp_path / "a", cifar_dir, "SGD", *DEVICE_DATA)
    train_tiny(tmp_path / "b", cifar_dir, "SGD", *DEVICE_DATA, epochs=1)
    resumed = train_tiny(tmp_path / "b", cifar_dir, "SGD", *DEVICE_DATA)
    assert straight["finished"] and resumed["finished"]
    assert straight["model_sha256_by_rank"] == resumed["model_sha256_by_rank"]
    assert history(tmp_path / "a")[1]["train_samples"] == 16
    log = (tmp_path / "a" / "train.log").read_text()
    assert "data pipeline device, compile none, NCHW" in log
    # a resume may switch pipelines (how the run executes, like --device)
    more = train_tiny(tmp_path / "b", cifar_dir, "SGD", "data_pipeline=loader", epochs=3)
    assert more["epochs_completed"] == 3


def test_compiled_run_equals_eager_within_rounding(tmp_path: Path, monkeypatch) -> None:
    """--compile default against eager. Inductor's C++ compile of even a tiny CNN takes
    40-130 s on a busy 2-core CPU, so this test compiles with AOTAutograd and the eager
    backend (the graphs Inductor would get, run as ATen ops); Inductor itself and CUDA
    graphs are checked on a GPU by benchmarks/gpu_train_check.sh."""
    real = torch.compile
    monkeypatch.setattr(
        torch,
        "compile",
        lambda model, mode, dynamic: real(model, backend="aot_eager", dynamic=dynamic),
    )

    def digits(out: Path, *extra: str) -> dict:  # the quickstart's 3-layer CNN: quick to trace
        return train.main(
            [
                "--config",
                QUICKSTART,
                "--row",
                "Apollo",
                "--schedule",
                "cosine",
                "--out-dir",
                str(out),
                "--epochs",
                "1",
                "--max-steps-per-epoch",
                "3",
                "--device",
                "cpu",
                "batch_size=16",
                *extra,
            ]
        )

    eager = digits(tmp_path / "eager")
    compiled = digits(tmp_path / "compiled", "--compile", "default")
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), rtol=1e-4, atol=1e-6), name
    assert compiled["final"]["train_loss"] == pytest.approx(eager["final"]["train_loss"], 1e-5)
    record = history(tmp_path / "compiled")[0]
    assert record["compile_s"] > 0 and "compile_s" not in history(tmp_path / "eager")[0]
    assert "(compiling: " in (tmp_path / "compiled" / "train.log").read_text()


def test_compile_falls_back_to_eager_for_second_order(cifar_dir: Path, tmp_path: Path) -> None:
    results = train_tiny(
        tmp_path, cifar_dir, "AdaHessian", "--compile", "reduce-overhead", epochs=1
    )
    assert results["finished"]
    log = (tmp_path / "train.log").read_text()
    assert "compile=reduce-overhead ignored: torch.compile has no double backward" in log
    assert "compile none" in log


def test_compiled_counts_compile_time_per_new_shape(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, mode, dynamic: calls.append(mode) or model)
    model = torch.nn.Linear(3, 2)
    step = compiling.Compiled(model, "default")
    assert calls == ["default"] and compiling.Compiled(model).take_seconds() == 0.0
    step(torch.ones(4, 3))
    assert step.take_seconds() > 0  # the first call of a shape
    step(torch.ones(4, 3))
    assert step.take_seconds() == 0.0  # seen: not counted
    step(torch.ones(2, 3))  # the last, partial batch: compiles again
    assert step.take_seconds() > 0
    step.eval()
    step(torch.ones(2, 3))  # another mode is another graph
    assert step.take_seconds() > 0 and not model.training
    with pytest.raises(ValueError, match="compile must be one of none, default, reduce-overhead"):
        compiling.Compiled(model, "max-autotune")
    assert train.memory_format(torch.device("cpu"), "bf16") == torch.contiguous_format
    assert train.memory_format(torch.device("cuda"), "bf16") == torch.channels_last
    assert train.memory_format(torch.device("cuda"), "none") == torch.contiguous_format


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA device syncs")
@pytest.mark.parametrize("row", ["SGD", "Apollo"])  # the loop alone; with Apollo's step
def test_no_device_sync_per_update_on_cuda_with_cifar_on_the_gpu(
    row: str, cifar_dir: Path, tmp_path: Path, sync_counts: list[int]
) -> None:
    """The device pipeline (what --device cuda picks for CIFAR), bf16 and channels_last add no
    sync per update: an epoch of 5 updates makes as many synchronizing calls as one of 2 (after
    a warm-up run; all batches full, so cuDNN autotunes one shape)."""
    for steps in (1, 2, 5):
        args = ["--device", "cuda", "--max-steps-per-epoch", str(steps), "--amp", "bf16"]
        results = train_tiny(tmp_path / f"s{steps}", cifar_dir, row, *args, epochs=1)
        log = (tmp_path / f"s{steps}" / "train.log").read_text()
        assert "data pipeline device, compile none, channels_last" in log
        assert results["final"]["train_samples"] == 8 * steps
    assert sync_counts[1] == sync_counts[2], sync_counts


def test_tasks_that_run_eagerly_refuse_compile() -> None:
    config = {"config": "configs/lm1b.yaml", "compile": "default"}
    with pytest.raises(ValueError, match=r"lm1b\.yaml: compile=default is for the image .*because"):
        compiling.refuse(config, "because")
    compiling.refuse({**config, "compile": "none"}, "because")
