"""language_model.train end to end on the tiny LMDB corpus: paper-size steps, resume, metrics."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import engine.checkpoint
from engine import distributed
from language_model import train
from language_model.corpus import Corpus
from language_model.data import TokenStream
from language_model.model import LSTMLanguageModel
from tests.helpers import (
    TrainedRun,
    count_host_reads,
    history,
    output_dtypes,
    per_call,
    trained,
    two_ranks,
    unmoved,
)
from tests.helpers import fails as one_error_line
from tests.language_model.conftest import CONFIG, SMALL
from tests.language_model.conftest import train_small as _run

CPU = distributed.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.mark.slow
def test_paper_size_model_trains_a_few_steps_from_lmdb(lmdb_dir, tmp_path):
    out = tmp_path / "run"
    # Plain SGD keeps no optimizer state, so the 53M-parameter checkpoint stays small.
    small = [
        "batch_size=2",
        "eval_batch_size=2",
        "bptt=2",
        "eval_bptt=2",
        "log_every=1",
        "optimizer.momentum=0.0",
        "optimizer.nesterov=false",
    ]
    results = _run(lmdb_dir, out, "--epochs", "1", "--max-steps-per-epoch", "2", *small, row="SGD")
    final = results["final"]
    assert results["finished"] and results["metric"] == "test_ppl" and results["mode"] == "min"
    assert math.isfinite(final["test_ppl"]) and final["test_ppl"] > 1.0
    assert final["train_tokens"] == 2 * 2 * 2 and final["test_tokens"] == 2 * 2 * 2
    config = json.loads((out / "config.json").read_text())
    assert config["clip"] == 1.0 and config["optimizer"]["name"] == "sgd"
    assert config["model"] == {
        "embed_dim": 300,
        "hidden_size": 2048,
        "num_layers": 2,
        "dropout": 0.1,
        "cutoffs": [60000, 100000, 640000],
        "div_value": 4.0,
    }
    state = engine.checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 1 and state["position"] == 0
    assert state["model"]["lstm.weight_hh_l1"].shape == (4 * 2048, 2048)
    log = (out / "train.log").read_text()
    assert "dropping cutoffs [60000, 100000, 640000]" in log and "step 2/2" in log
    assert any((out / "tb").iterdir())


@pytest.fixture(scope="module")
def uninterrupted(lmdb_dir, tmp_path_factory) -> TrainedRun:
    """Two whole epochs (53 updates each) of the Apollo row on the tiny corpus."""
    out = tmp_path_factory.mktemp("lm_runs") / "a"
    return trained(lambda: _run(lmdb_dir, out, "--epochs", "2", *SMALL), out)


def test_training_lowers_the_loss_and_moves_every_weight(lmdb_dir, uninterrupted):
    """The training loss falls from epoch to epoch, and the test perplexity beats a uniform
    guess over the vocabulary."""
    h = history(uninterrupted.out)
    assert h[0]["train_loss"] > h[1]["train_loss"]
    corpus = Corpus(lmdb_dir)
    assert h[1]["test_ppl"] < corpus.vocab_size
    corpus.close()
    trained = engine.checkpoint.load(uninterrupted.out / "checkpoint.pt")["model"]
    assert not unmoved(uninterrupted.initial, trained)


def _same_run(a: Path, b: Path) -> None:
    ha, hb = history(a), history(b)
    assert len(ha) == len(hb) == 2
    for ra, rb in zip(ha, hb, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-12), k
    sa = engine.checkpoint.load(a / "checkpoint.pt")["model"]
    sb = engine.checkpoint.load(b / "checkpoint.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_resume_after_an_epoch_equals_an_uninterrupted_run(lmdb_dir, tmp_path, uninterrupted):
    out = tmp_path / "b"
    first = _run(lmdb_dir, out, "--epochs", "1", *SMALL)
    assert first["finished"] and first["epochs_completed"] == 1
    second = _run(lmdb_dir, out, "--epochs", "2", *SMALL)
    assert second["finished"] and second["epochs_completed"] == 2
    assert "resuming after epoch 1" in (out / "train.log").read_text()
    _same_run(uninterrupted.out, out)


@pytest.mark.slow
def test_resume_mid_epoch_equals_an_uninterrupted_run(
    lmdb_dir, tmp_path, uninterrupted, monkeypatch
):
    real_save = engine.checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1 and state["position"] > 0:
            raise KeyboardInterrupt  # killed right after a mid-epoch checkpoint of epoch 2

    monkeypatch.setattr(engine.checkpoint, "save", save_then_die)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        _run(lmdb_dir, out, "--epochs", "2", "checkpoint_every=3", *SMALL)
    monkeypatch.setattr(engine.checkpoint, "save", real_save)
    state = engine.checkpoint.load(out / "checkpoint.pt")
    position = state["position"]
    assert state["epoch"] == 1 and position > 0 and state["ranks"][0]["hidden"]
    assert state["update"] % 3 == 0 and state["update"] == state["history"][0]["update"] + position
    _run(lmdb_dir, out, "--epochs", "2", "checkpoint_every=3", *SMALL)
    assert f"resuming epoch 2 at step {position}" in (out / "train.log").read_text()
    _same_run(uninterrupted.out, out)


def _test_targets(corpus: Corpus) -> list[int]:
    with corpus.shard("test", 0) as (tokens, _):
        return [int(t) for t in tokens[1:]]  # every token but the leading <S> is predicted


def test_perplexity_matches_a_hand_computed_adaptive_softmax(lmdb_dir):
    corpus = Corpus(lmdb_dir)
    model = LSTMLanguageModel(
        corpus.vocab_size,
        embed_dim=4,
        hidden_size=16,
        num_layers=1,
        dropout=0.0,
        cutoffs=[20],
        div_value=4.0,
    )
    with torch.no_grad():
        for p in model.softmax.parameters():
            p.zero_()
    # Zero logits: the head is uniform over 20 shortlist words + 1 cluster; the cluster is
    # uniform over its vocab - 20 words.
    tail = corpus.vocab_size - 20
    counts = Counter(t >= 20 for t in _test_targets(corpus))
    n = counts[False] + counts[True]
    want = math.exp((counts[False] * math.log(21) + counts[True] * math.log(21 * tail)) / n)
    stream = TokenStream(corpus, "test", 3, 4, shuffle=False)
    got = train.evaluate(model, stream, "none", CPU)
    assert got["test_tokens"] == n and counts[True] > 0
    assert got["test_ppl"] == pytest.approx(want, rel=1e-6)
    corpus.close()


def test_perplexity_matches_a_hand_computed_unigram_model(lmdb_dir):
    corpus = Corpus(lmdb_dir)
    model = LSTMLanguageModel(
        corpus.vocab_size,
        embed_dim=4,
        hidden_size=8,
        num_layers=2,
        dropout=0.0,
        cutoffs=[],
        div_value=4.0,
    )
    logp = torch.log_softmax(
        torch.randn(corpus.vocab_size, generator=torch.Generator().manual_seed(0)), 0
    )
    with torch.no_grad():
        model.softmax.head.weight.zero_()
        model.softmax.head.bias.copy_(logp)  # p(next word) = a fixed unigram distribution
    targets = _test_targets(corpus)
    want = math.exp(-sum(float(logp[t]) for t in targets) / len(targets))
    got = train.evaluate(model, TokenStream(corpus, "test", 5, 3, shuffle=False), "none", CPU)
    assert got["test_ppl"] == pytest.approx(want, rel=1e-6) and got["test_tokens"] == len(targets)
    corpus.close()


@pytest.mark.parametrize("problem", ["missing", "empty", "not_lmdb", "old_format"])
def test_bad_data_dir_is_one_line_and_exit_2(lmdb_dir, tmp_path, capsys, problem):
    data = tmp_path / "data"
    if problem != "missing":
        data.mkdir()
    if problem == "not_lmdb":
        (data / "data.mdb").write_text("plain text, not an LMDB environment\n" * 50)
    if problem == "old_format":
        import lmdb

        src = lmdb.open(str(lmdb_dir), readonly=True, lock=False)
        dst = lmdb.open(str(data), map_size=1 << 22)
        with src.begin() as r, dst.begin(write=True) as w:
            for k, v in r.cursor():
                if k == b"meta":
                    v = json.dumps({**json.loads(v), "format_version": 0}).encode()
                w.put(k, v)
        src.close()
        dst.close()
    argv = ["--config", CONFIG, "--row", "Adam", "--data-dir", str(data)]
    argv += ["--out-dir", str(tmp_path / "o"), "--device", "cpu"]
    assert str(data) in one_error_line(train.main, argv, capsys)
    assert not (tmp_path / "o").exists()  # nothing written for a run that cannot start


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("model.dropout=1.5", "model.dropout must be in [0, 1), got 1.5"),  # the config check
        ("model.hidden_size=0", "model.hidden_size must be >= 1, got 0"),
        ("optimizer.lr=-1", "optimizer 'apollo': Apollo: invalid lr=-1.0"),
    ],
)
def test_bad_model_or_optimizer_values_write_nothing(lmdb_dir, tmp_path, capsys, bad, message):
    """Found while the run is built, before its directory opens: no .lock, config.json, tb/."""
    out = tmp_path / "o"
    argv = ["--config", CONFIG, "--row", "Apollo", "--data-dir", str(lmdb_dir)]
    err = one_error_line(
        train.main, [*argv, "--out-dir", str(out), "--device", "cpu", *SMALL, bad], capsys
    )
    assert message in err and err.startswith(f"error: {CONFIG}: ")
    assert not out.exists()


def test_the_models_warnings_reach_the_run_log(lmdb_dir, tmp_path):
    """A cutoff beyond the vocabulary is dropped while the model is built, before the run's
    log exists; the warning still lands in train.log, once."""
    out = tmp_path / "run"
    small = [x for x in SMALL if not x.startswith("model.cutoffs")]
    args = ["--epochs", "1", "--max-steps-per-epoch", "1", "model.cutoffs=[20, 5000]", *small]
    _run(lmdb_dir, out, *args)
    assert (out / "train.log").read_text().count("dropping cutoffs [5000]") == 1


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(lmdb_dir, tmp_path):
    """Same global batch over 2 ranks: same rows, same numbers; ranks end bit-identical."""
    args = [
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "4",
        "checkpoint_every=2",
        "model.dropout=0.0",
        *SMALL,
    ]
    single = _run(lmdb_dir, tmp_path / "one", *args)
    out = tmp_path / "ddp"
    argv = ["--config", CONFIG, "--row", "Apollo", "--data-dir", str(lmdb_dir), "--out-dir"]
    results = two_ranks("language_model.train", [*argv, str(out), "--device", "cpu", *args], out)
    assert results["final"]["train_tokens"] == single["final"]["train_tokens"] == 4 * 4 * 5
    # The test split is evaluated as one stream: independent of the world size.
    every_test_token = Corpus(lmdb_dir).shards("test")[0]["tokens"] - 1
    assert results["final"]["test_tokens"] == single["final"]["test_tokens"] == every_test_token
    for key in ("train_loss", "test_loss"):
        assert results["final"][key] == pytest.approx(single["final"][key], rel=1e-5)


def test_bf16_autocast_run_on_cpu(lmdb_dir, tmp_path, monkeypatch):
    """The LSTM really runs in bfloat16 (the adaptive softmax's log-probabilities in float32)."""
    lstm = output_dtypes(monkeypatch, torch.nn.LSTM)
    results = _run(
        lmdb_dir,
        tmp_path / "bf16",
        "--epochs",
        "1",
        "--amp",
        "bf16",
        "--max-steps-per-epoch",
        "3",
        *SMALL,
        row="Adam",
    )
    assert results["finished"] and math.isfinite(results["final"]["test_ppl"])
    assert results["final"]["train_tokens"] == 3 * 4 * 5
    assert set(lstm) == {torch.bfloat16}


@pytest.mark.slow
def test_update_bounded_run_resumes_bit_exactly_mid_epoch(lmdb_dir, tmp_path, monkeypatch):
    """max_updates=20 (an epoch holds 53 windows): a per-update milestone schedule, killed
    right after the mid-epoch checkpoint at update 12, resumed: the uninterrupted numbers."""
    args = [
        "max_updates=20",
        "schedule.unit=update",
        "schedule.milestones=[8, 16]",
        "checkpoint_every=6",
        *SMALL,
    ]
    straight = _run(lmdb_dir, tmp_path / "a", *args)
    assert straight["finished"] and straight["updates_completed"] == 20
    assert straight["epochs_completed"] == 1  # the epoch ended at max_updates
    real_save = engine.checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if state["update"] == 12:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(lmdb_dir, tmp_path / "b", *args)
    monkeypatch.setattr(engine.checkpoint, "save", real_save)
    state = engine.checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert (state["epoch"], state["position"], state["schedule"]["last_epoch"]) == (0, 12, 12)
    resumed = _run(lmdb_dir, tmp_path / "b", *args)
    a = engine.checkpoint.load(tmp_path / "a" / "checkpoint.pt")
    b = engine.checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert engine.checkpoint.state_digest(a["model"]) == engine.checkpoint.state_digest(b["model"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    assert resumed["final"]["test_ppl"] == straight["final"]["test_ppl"]
    assert resumed["final"]["train_loss"] == pytest.approx(straight["final"]["train_loss"], 1e-12)


def test_a_resume_on_other_data_is_refused(lmdb_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _run(lmdb_dir, out, "--epochs", "1", "--max-steps-per-epoch", "2", *SMALL)
    monkeypatch.setattr(train, "data_fingerprint", lambda corpus: {"vocab_size": 7})
    argv = [
        "--config",
        CONFIG,
        "--row",
        "Apollo",
        "--data-dir",
        str(lmdb_dir),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        "2",
        *SMALL,
    ]
    err = one_error_line(train.main, argv, capsys)
    assert "holds a run with another config (data_fingerprint:" in err and "'vocab_size': 7" in err


def test_the_loop_reads_metrics_only_at_log_points(lmdb_dir, tmp_path, monkeypatch):
    """Host reads grow with the number of log lines, never with the number of updates (SGD:
    the loop's reads, not an optimizer's)."""
    reads = count_host_reads(monkeypatch)
    counted = per_call(monkeypatch, train, "train_one_epoch", lambda: len(reads))
    small = [x for x in SMALL if not x.startswith("log_every")]
    for steps, log_every in ((3, 0), (9, 0), (9, 3)):
        _run(
            lmdb_dir,
            tmp_path / f"{steps}-{log_every}",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            str(steps),
            f"log_every={log_every}",
            *small,
            row="SGD",
        )
    assert counted[0] == counted[1] < counted[2]
    assert (counted[2] - counted[1]) % 3 == 0  # the same reads at each of the 3 log points


def test_a_diverging_learning_rate_stops_the_run(lmdb_dir, tmp_path):
    """SGD at lr 1e30 (the gradient's norm clipped to 1): the first non-finite loss is
    recorded and the command ends normally."""
    args = ["--epochs", "1", "--max-steps-per-epoch", "10", "optimizer.lr=1e30", *SMALL]
    results = _run(lmdb_dir, tmp_path, *args, row="SGD")
    assert not results["finished"] and 1 <= results["diverged"]["update"] <= 10
