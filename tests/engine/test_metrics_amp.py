"""engine.metrics (run-directory files, top-k) and engine.amp (bf16 / fp16 + GradScaler on CPU)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from engine import amp, distributed, metrics

CTX = distributed.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
CONFIG = {
    "table": "t",
    "paper_version": "current",
    "row": "A",
    "seed": 1,
    "epochs": 3,
    "schedule": {"name": "cosine"},
    "optimizer": {"name": "sgd"},
}


def test_results_pick_best_and_final(tmp_path: Path) -> None:
    history = [{"epoch": 1, "acc": 50.0}, {"epoch": 2, "acc": 70.0}, {"epoch": 3, "acc": 70.0}]
    metrics.write_metrics(tmp_path, history)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    r = metrics.write_results(tmp_path, CONFIG, history, metric="acc", finished=True)
    assert r == json.loads((tmp_path / "results.json").read_text())
    assert r["best"]["epoch"] == 2 and r["final"]["epoch"] == 3  # earliest best on ties
    assert (r["finished"], r["epochs_completed"], r["row"], r["schedule"]) == (
        True,
        3,
        "A",
        "cosine",
    )


def test_config_json_has_provenance_and_keeps_earlier_starts(tmp_path: Path) -> None:
    metrics.write_config(tmp_path, {"row": "A"}, CTX)
    metrics.write_config(tmp_path, {"row": "A"}, CTX)
    c = json.loads((tmp_path / "config.json").read_text())
    assert c["row"] == "A" and len(c["earlier_starts"]) == 1
    p = c["provenance"]
    assert set(p) >= {"git", "versions", "hardware", "argv", "started_at"}
    assert p["versions"]["torch"] == torch.__version__ and p["hardware"]["device"] == "cpu"


def test_config_json_records_what_a_citation_needs(tmp_path: Path) -> None:
    plugin = tmp_path / "my_optimizer.py"
    plugin.write_text("X = 1\n")
    metrics.write_config(
        tmp_path / "run",
        {"row": "A", "plugins": [str(plugin)]},
        CTX,
        packages=("scikit-learn", "no-such-distribution"),
    )
    p = json.loads((tmp_path / "run" / "config.json").read_text())["provenance"]
    assert p["versions"]["scikit_learn"] and p["versions"]["numpy"]
    assert p["versions"]["no_such_distribution"] is None and "lmdb" not in p["versions"]
    assert p["hardware"]["torch_threads"] == torch.get_num_threads()
    assert p["hardware"]["cpu"] and "commit" in p["git"]
    digest = hashlib.sha256(b"X = 1\n").hexdigest()
    assert p["plugin_sha256"] == {str(plugin): digest}


def test_json_files_are_strict_json(tmp_path: Path) -> None:
    """A diverged run's NaN / inf are written as null, never as the non-JSON NaN."""
    history = [{"epoch": 1, "acc": float("nan"), "loss": float("inf")}, {"epoch": 2, "acc": 5.0}]
    metrics.write_metrics(tmp_path, history)
    r = metrics.write_results(tmp_path, CONFIG, history, metric="acc", finished=False)
    strict = json.loads((tmp_path / "results.json").read_text(), parse_constant=_reject)
    assert strict["final"] == {"epoch": 2, "acc": 5.0} and r["best"]["epoch"] == 2
    first = json.loads(
        (tmp_path / "metrics.jsonl").read_text().splitlines()[0], parse_constant=_reject
    )
    assert first == {"epoch": 1, "acc": None, "loss": None}


def _reject(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def test_meter_sums_on_the_device_and_reads_once() -> None:
    meter = metrics.Meter(torch.device("cpu"), {"n": 2.0})
    meter.add(loss=torch.tensor(0.1, dtype=torch.float32) * 3, n=3)
    meter.add(loss=torch.tensor(0.2, dtype=torch.float32), n=torch.tensor(4))
    assert all(v.dtype == torch.float64 for v in meter.sums.values())
    want = float(torch.tensor(0.1, dtype=torch.float32) * 3) + float(torch.tensor(0.2))
    assert meter.read(CTX) == {"n": 9.0, "loss": want} == meter.local()


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_amp_step_on_cpu(mode: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = amp.grad_scaler(torch.device("cpu"), mode)
    assert (scaler is not None) == (mode == "fp16")
    before = model.weight.detach().clone()
    with amp.autocast(torch.device("cpu"), mode):
        out = model(torch.randn(4, 8))
    assert out.dtype == (torch.bfloat16 if mode == "bf16" else torch.float16)
    amp.backward(out.float().pow(2).mean(), scaler)
    norm = amp.step(opt, scaler, clip_norm=1.0)
    assert norm is not None and norm > 0
    assert not torch.equal(model.weight, before)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
