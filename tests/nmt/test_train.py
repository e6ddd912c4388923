"""nmt.train and nmt.evaluate end to end on the tiny corpus: resume, accumulation, DDP, BLEU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
import torch

import engine.checkpoint
from engine import cli
from nmt import evaluate, train
from nmt.score import tokenized_bleu
from tests.helpers import TrainedRun, history, output_dtypes, trained, two_ranks, unmoved
from tests.helpers import fails as one_error_line
from tests.nmt.conftest import CONFIG, SMALL
from tests.nmt.conftest import train_small as _run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> TrainedRun:
    """8 updates (an epoch of 5, then 3) of the Apollo row on the tiny corpus."""
    out = tmp_path_factory.mktemp("nmt_runs") / "a"
    return trained(lambda: _run(data_dir, out, "--max-updates", "8", "checkpoint_every=3"), out)


def test_training_lowers_the_loss_and_moves_every_weight(uninterrupted):
    """Train and valid loss fall from the first epoch to the second; every weight moves but
    the attention keys' biases, whose gradient is zero (a shift common to every key's score
    leaves the softmax unchanged)."""
    h = history(uninterrupted.out)
    assert h[0]["train_loss"] > h[1]["train_loss"] and h[0]["valid_loss"] > h[1]["valid_loss"]
    trained_model = engine.checkpoint.load(uninterrupted.out / "checkpoint.pt")["model"]
    still = unmoved(uninterrupted.initial, trained_model)
    assert still and all(k.endswith("attn.k_proj.bias") for k in still), still


@pytest.mark.slow
def test_resume_mid_epoch_is_bit_exact(data_dir, tmp_path, uninterrupted, monkeypatch):
    real_save = engine.checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if state["update"] == 3:
            raise KeyboardInterrupt  # killed right after the checkpoint of update 3

    monkeypatch.setattr(engine.checkpoint, "save", save_then_die)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        _run(data_dir, out, "--max-updates", "8", "checkpoint_every=3")
    monkeypatch.setattr(engine.checkpoint, "save", real_save)
    state = engine.checkpoint.load(out / "checkpoint.pt")
    assert (state["epoch"], state["update"], state["position"]) == (0, 3, 3)
    results = _run(data_dir, out, "--max-updates", "8", "checkpoint_every=3")
    assert "resuming epoch 1 at step 3" in (out / "train.log").read_text()
    assert results["finished"] and results["updates_completed"] == 8
    assert history(out) == history(uninterrupted.out)  # train and valid numbers, exactly
    assert [r["update"] for r in history(out)] == [5, 8]  # 5 updates an epoch, then 3
    a = engine.checkpoint.load(uninterrupted.out / "checkpoint.pt")["model"]
    b = engine.checkpoint.load(out / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in out.glob("checkpoint_epoch*.pt")) == [
        "checkpoint_epoch1.pt",
        "checkpoint_epoch2.pt",
    ]


def test_every_update_sees_max_tokens_times_update_freq(data_dir, tmp_path):
    config = {"config": "c", "tokens_per_update": 65536, "max_tokens": 8192, "update_freq": 1}
    assert [train.update_freq(config, w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ValueError, match="not a multiple of max_tokens 8192 x 3 GPU"):
        train.update_freq(config, 3)
    with pytest.raises(ValueError, match="not both"):
        train.update_freq({**config, "update_freq": 2}, 1)
    assert train.update_freq({**config, "tokens_per_update": None, "update_freq": 3}, 2) == 3


@pytest.mark.slow
def test_evaluate_averages_the_last_checkpoints_and_reports_both_bleus(
    data_dir, uninterrupted, tmp_path, capsys
):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted.out, run_dir)
    cli.main(evaluate.main, ["--run-dir", str(tmp_path), "--device", "cpu", "--average-last", "2"])
    assert "test BLEU" in capsys.readouterr().out
    results = json.loads((run_dir / "results.json").read_text())
    ev = results["evaluation"]
    assert ev["checkpoints"] == ["checkpoint_epoch1.pt", "checkpoint_epoch2.pt"]
    assert ev["options"] == {"beam": 4, "lenpen": 0.6, "max_len_a": 0.0, "max_len_b": 8}
    hyps = (run_dir / "test.paper.hyp.txt").read_text().splitlines()
    refs = (data_dir / "test.de.tok.txt").read_text().splitlines()
    assert len(hyps) == len(refs) == 4
    assert ev["bleu"] == tokenized_bleu(hyps, refs, split_compounds=True).score
    detok = (run_dir / "test.paper.detok.txt").read_text().splitlines()
    raw = (data_dir / "test.de.raw.txt").read_text().splitlines()
    assert ev["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(detok, [raw]).score)
    assert ev["sacrebleu_signature"].startswith("nrefs:1|")
    assert results["metric"] == "bleu" and results["final"]["bleu"] == ev["bleu"]
    assert results["final"]["update"] == 8 and results["best"]["sacrebleu"] == ev["sacrebleu"]
    # the average of the two epoch checkpoints decodes what evaluate wrote
    avg = engine.checkpoint.average([run_dir / n for n in ev["checkpoints"]])["model"]
    first = engine.checkpoint.load(run_dir / "checkpoint_epoch1.pt")["model"]
    last = engine.checkpoint.load(run_dir / "checkpoint_epoch2.pt")["model"]
    for k in avg:
        torch.testing.assert_close(avg[k], (first[k] + last[k]) / 2)
    cli.main(evaluate.main, ["--run-dir", str(run_dir), "--device", "cpu", "--average-last", "2"])
    assert "evaluated already" in capsys.readouterr().out
    # the report puts the run beside the paper's number
    from scripts import report

    table = report.report([str(run_dir)], tmp_path / "report", plots=False)["markdown"]
    assert "Transformer-base on WMT-14" in table and "28.34 (0.10)" in table


@pytest.mark.parametrize("problem", ["missing", "not_prepared", "other_preprocessing"])
def test_bad_data_dir_is_one_line_and_exit_2(data_dir, tmp_path, capsys, problem):
    data = tmp_path / "data"
    extra = []
    if problem == "not_prepared":
        data.mkdir()
    if problem == "other_preprocessing":
        data = data_dir
        extra = ["preprocess.bpe_merges=300"]
    out = tmp_path / "o"
    argv = ["--config", CONFIG, "--row", "Adam", "--data-dir", str(data), "--out-dir", str(out)]
    err = one_error_line(train.main, [*argv, "--device", "cpu", *SMALL, *extra], capsys)
    assert str(data) in err
    if problem == "other_preprocessing":
        assert "bpe_merges=200 (config: 300)" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["model.heads=3"], "model: embed_dim 16 is not a multiple of heads 3"),
        (["model.dropout=1.5"], "model.dropout must be in [0, 1), got 1.5"),
        (["optimizer.lr=-1"], "optimizer 'apollo': Apollo: invalid lr=-1.0"),
        (
            ["max_tokens=4", "tokens_per_update=8"],
            "train: a sentence of 20 tokens exceeds max_tokens 4",
        ),
    ],
)
def test_bad_model_optimizer_or_batch_values_write_nothing(
    data_dir, tmp_path, capsys, bad, message
):
    """Found while the run is built, before its directory opens: no .lock, config.json, tb/."""
    out = tmp_path / "o"
    argv = ["--config", CONFIG, "--row", "Apollo", "--data-dir", str(data_dir)]
    err = one_error_line(
        train.main, [*argv, "--out-dir", str(out), "--device", "cpu", *SMALL, *bad], capsys
    )
    assert message in err
    assert err.startswith(f"error: {CONFIG}: ") or str(data_dir) in err
    assert not out.exists()


@pytest.mark.slow
def test_two_ranks_equal_one_rank_accumulating(data_dir, tmp_path):
    """1 process x 2 micro-batches and 2 processes x 1 see the same sentences per update."""
    args = [
        "--max-updates",
        "3",
        "model.dropout=0.0",
        "model.attention_dropout=0.0",
        "model.activation_dropout=0.0",
        "generation=paper",
        "valid_generation=none",
        "keep_last=0",
    ]
    one = _run(data_dir, tmp_path / "one", *args, row="Adam")
    out = tmp_path / "ddp"
    argv = ["--config", CONFIG, "--row", "Adam", "--data-dir", str(data_dir), "--out-dir"]
    two = two_ranks("nmt.train", [*argv, str(out), "--device", "cpu", *SMALL, *args], out)
    assert json.loads((out / "config.json").read_text())["update_freq"] == 1
    for key in ("train_loss", "train_nll_loss", "valid_loss"):
        assert two["final"][key] == pytest.approx(one["final"][key], rel=1e-5)
    assert two["final"]["train_tokens"] == one["final"]["train_tokens"]
    a = engine.checkpoint.load(tmp_path / "one" / "checkpoint.pt")["model"]
    b = engine.checkpoint.load(out / "checkpoint.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_trains(data_dir, tmp_path, mode, monkeypatch):
    """The projections really run in the autocast dtype; the weights stay float32."""
    linears = output_dtypes(monkeypatch, torch.nn.Linear)
    results = _run(
        data_dir,
        tmp_path / mode,
        "--max-updates",
        "2",
        "--amp",
        mode,
        "valid_generation=none",
        "keep_last=0",
    )
    final = results["final"]
    assert results["finished"] and final["update"] == 2
    assert 0 < final["train_loss"] < 20 and 0 < final["valid_loss"] < 20
    state = engine.checkpoint.load(tmp_path / mode / "checkpoint.pt")
    assert (state["scaler"] is not None) == (mode == "fp16")  # fp16 scales its loss
    assert all(v.dtype == torch.float32 for v in state["model"].values())
    assert set(linears) == {torch.bfloat16 if mode == "bf16" else torch.float16}


def test_a_diverging_learning_rate_stops_the_run(data_dir, tmp_path):
    """Adam at lr 1e6 after one warmup update: the first non-finite loss is recorded, no
    validation or decoding of the diverged model follows, and the command ends normally."""
    args = ["--max-updates", "6", "optimizer.lr=1e6", "schedule.warmup=1", "keep_last=0"]
    results = _run(data_dir, tmp_path, *args, row="Adam")
    assert not results["finished"] and 1 <= results["diverged"]["update"] <= 6


def test_progress_is_logged_and_drawn_on_the_update_axis(data_dir, tmp_path):
    """A run counted in updates: log points every 2 updates (with Apollo's applied warmup lr,
    not the group's 0.1) and the epoch records, all at their update in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["--max-updates", "7", "log_every=2", "valid_generation=none", "keep_last=0"]
    _run(data_dir, tmp_path, *args)
    log = (tmp_path / "train.log").read_text()
    assert "epoch 1 step 2/5 (update 2) | loss " in log and " tokens/s | elapsed " in log
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    lr = [(e.step, e.value) for e in events.Scalars("train/lr")]
    assert [step for step, _ in lr] == [2, 4, 7]  # 5 updates in epoch 1, then 2
    assert lr[0][1] == pytest.approx(1e-5 + (0.1 - 1e-5) * 1 / 1000)  # the warmup's 2nd step
    assert [e.step for e in events.Scalars("valid_loss")] == [5, 7]
    assert [e.step for e in events.Scalars("train/grad_norm")] == [2, 4, 7]
