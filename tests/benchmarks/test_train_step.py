"""benchmarks.train_step on the CPU in tiny sizes: it runs each task's real loop and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import train_step
from classification import train as image_train
from language_model import train as lm_train

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--device", "cpu", "--threads", "1", "--steps", "2", "--warmup", "1", "--rounds", "1"]
TASKS = {
    "cifar10": (image_train, ["--row", "Apollo", "--batch-size", "4", "model=cifar_resnet8"]),
    "imagenet": (
        image_train,
        [
            "--row",
            "SGD",
            "--batch-size",
            "2",
            "model=squeezenet1_1",
            "num_classes=10",
            "augmentation.crop=32",
        ],
    ),
    "lm1b": (
        lm_train,
        [
            "--row",
            "Adam",
            "--batch-size",
            "2",
            "--vocab-size",
            "300",
            "bptt=4",
            "model.hidden_size=16",
            "model.embed_dim=8",
            "model.cutoffs=[50, 100]",
        ],
    ),
}


@pytest.mark.parametrize("table", sorted(TASKS))
def test_smoke(table: str, tmp_path: Path, monkeypatch, capsys) -> None:
    module, args = TASKS[table]
    calls = []
    real = module.train_one_epoch
    monkeypatch.setattr(module, "train_one_epoch", lambda *a: calls.append(1) or real(*a))
    out = tmp_path / "figures.json"
    [result] = train_step.main(
        ["--config", str(ROOT / f"configs/{table}.yaml"), *args, *QUICK, "--json", str(out)]
    )
    assert len(calls) == 2  # the warm-up and the timed round went through the task's loop
    assert result["bare_s"] > 0 and result["loop_s"] > 0
    assert result["loop_per_s"] == pytest.approx(result["samples_per_step"] / result["loop_s"])
    schema = module.SCHEMA
    _, samples = train_step.table_samples(
        str(ROOT / f"configs/{table}.yaml"), result["dataset"], schema
    )
    assert result["table_gpu_hours"] == pytest.approx(samples / result["loop_per_s"] / 3600)
    printed = capsys.readouterr().out
    assert "overhead" in printed and f"{result['loop_per_s']:,.0f}" in printed
    assert json.loads(out.read_text())["results"][0]["row"] == result["row"]


def test_table_size_from_the_config() -> None:
    """9 rows x 7 seeds x (164 + 200 epochs) x 50,000 images; the LM: 5 rows x 7 x 20 epochs."""
    runs, samples = train_step.table_samples(
        str(ROOT / "configs/cifar10.yaml"), "cifar10", image_train.SCHEMA
    )
    assert (runs, samples) == (126, 63 * 364 * 50_000)
    runs, samples = train_step.table_samples(
        str(ROOT / "configs/lm1b.yaml"), "lm1b", lm_train.SCHEMA
    )
    assert (runs, samples) == (35, 35 * 20 * train_step.TRAIN_SIZE["lm1b"])


def test_side_by_side_rates_add_up() -> None:
    a = [{"bare_s": 0.5, "loop_s": 1.0, "row": "SGD"}]
    b = [{"bare_s": 0.25, "loop_s": 1.0, "row": "SGD"}]
    [summed] = train_step.sum_rates([a, b])
    assert 2 / summed["bare_s"] == pytest.approx(2 + 4) and 2 / summed["loop_s"] == 2
    assert a[0]["bare_s"] == 0.5  # the inputs are left alone


def test_bad_flags_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="--compile: unknown mode"):
        train_step.parse(["--config", "c", "--row", "SGD", "--compile", "max"])
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        train_step.parse(["--config", "c", "--row", "SGD", "--steps", "0"])


def test_compiled_rows_share_one_compiled_model_and_measure_its_difference(monkeypatch) -> None:
    """Rows of one compile mode reuse its compiled model (compiling ResNet-110 takes minutes),
    and the benchmark reports how far its logits and gradients are from eager. torch.compile
    is stood in for by a model whose logits are 0.1% larger, so the reported logits difference
    must be 1e-3 and the gradients' non-zero (the compiled path itself is tested in
    tests/classification/test_train_fast_paths.py)."""
    import torch

    class OffByATenthPercent(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x) * 1.001

    compiled = []
    monkeypatch.setattr(
        torch,
        "compile",
        lambda model, mode, dynamic: compiled.append(model) or OffByATenthPercent(model),
    )
    results = train_step.main(
        [
            "--config",
            str(ROOT / "configs/cifar10.yaml"),
            "--row",
            "SGD,Apollo",
            "--compile",
            "none,default",
            "--batch-size",
            "4",
            "model=cifar_resnet8",
            *QUICK,
        ]
    )
    assert len(compiled) == 1  # once, for both rows
    assert [(r["row"], r["compile"]) for r in results] == [
        ("SGD", "none"),
        ("Apollo", "none"),
        ("SGD", "default"),
        ("Apollo", "default"),
    ]
    assert results[0]["logits_rel_diff"] is None and results[1]["grads_rel_diff"] is None
    for r in results[2:]:
        assert r["logits_rel_diff"] == pytest.approx(1e-3, rel=1e-4)
        assert 0 < r["grads_rel_diff"] < 1
