"""classification.train end to end on tiny data in the real layouts (CPU, in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import apollo_optim as optim
from classification import train
from engine import checkpoint
from tests.classification.conftest import CIFAR10 as CIFAR
from tests.classification.conftest import QUICKSTART, ROOT, TINY, train_tiny
from tests.helpers import (
    count_host_reads,
    history,
    initial_parameters,
    output_dtypes,
    per_call,
    two_ranks,
    unmoved,
)
from tests.helpers import fails as one_error_line

# AdaHessian's create_graph backward makes torch warn about a grad/param cycle; the loop
# breaks it with zero_grad(set_to_none=True).
pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph:UserWarning")


# One row per optimizer family of the table; AdaHessian takes the second-order path.
@pytest.mark.parametrize(
    "row", ["SGD", "Adam", "RAdam", "AdaBelief", "Apollo", "ApolloW", "AdaHessian"]
)
def test_two_epochs_per_optimizer_family(row: str, cifar_dir: Path, tmp_path, monkeypatch) -> None:
    initial = initial_parameters(monkeypatch)
    results = train_tiny(tmp_path, cifar_dir, row, schedule="cosine")
    assert results["finished"] and results["epochs_completed"] == 2
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for record in lines:
        assert torch.isfinite(torch.tensor(record["train_loss"]))
        assert record["train_samples"] == 16  # 2 steps of 8
        assert 0.0 <= record["test_acc1"] <= record["test_acc5"] <= 100.0
    config = json.loads((tmp_path / "config.json").read_text())
    assert (
        config["row"] == row
        and config["optimizer"]["name"] == optim.get(config["optimizer"]["name"]).name
    )
    assert {"git", "versions", "hardware"} <= set(config["provenance"])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["schedule"]["last_epoch"] == 2
    assert not unmoved(initial[0], state["model"]), "every weight is trained"
    assert list((tmp_path / "tb").iterdir()), "TensorBoard events"


@pytest.mark.parametrize("row", ["SGD", "Apollo"])
def test_training_lowers_the_loss_and_moves_every_weight(row: str, tmp_path, monkeypatch) -> None:
    """Three short epochs of the quickstart's digits (10 updates each): the training loss falls
    every epoch, the test loss falls and the accuracy leaves chance (10%) behind."""
    initial = initial_parameters(monkeypatch)
    argv = ["--config", QUICKSTART, "--row", row, "--schedule", "cosine", "--device", "cpu"]
    train.main([*argv, "--out-dir", str(tmp_path), "--epochs", "3", "--max-steps-per-epoch", "10"])
    h = history(tmp_path)
    assert h[0]["train_loss"] > h[1]["train_loss"] > h[2]["train_loss"]
    assert h[0]["test_loss"] > h[2]["test_loss"] and h[2]["test_acc1"] > 30.0
    assert not unmoved(initial[0], checkpoint.load(tmp_path / "checkpoint.pt")["model"])


def test_adahessian_runs_with_create_graph(cifar_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The loop asks the registry, not the name: AdaHessian gets create_graph=True."""
    seen = []
    real = train.amp.backward
    monkeypatch.setattr(
        train.amp,
        "backward",
        lambda loss, scaler, create_graph: (
            seen.append(create_graph) or real(loss, scaler, create_graph)
        ),
    )
    train_tiny(tmp_path / "h", cifar_dir, "AdaHessian", epochs=1)
    train_tiny(tmp_path / "s", cifar_dir, "SGD", epochs=1)
    assert seen == [True, True, False, False]


@pytest.mark.parametrize(("row", "schedule"), [("Apollo", "milestone"), ("SGD", "cosine")])
def test_resume_is_bit_exact(row: str, schedule: str, cifar_dir: Path, tmp_path: Path) -> None:
    """N epochs straight == N-1 epochs, then the same command with --epochs N (resume)."""
    # milestones at epochs 1 and 2, or a cosine pinned to 3 epochs (by default its length is
    # --epochs): either way the lr changes across the resume boundary
    extra = ["schedule.milestones=[1, 2]" if schedule == "milestone" else "schedule.total_steps=3"]
    train_tiny(tmp_path / "straight", cifar_dir, row, *extra, schedule=schedule, epochs=3)
    train_tiny(tmp_path / "resumed", cifar_dir, row, *extra, schedule=schedule, epochs=2)
    first = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert first["epochs_completed"] == 2
    train_tiny(tmp_path / "resumed", cifar_dir, row, *extra, schedule=schedule, epochs=3)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert checkpoint.state_digest(a["model"]) == checkpoint.state_digest(b["model"])
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    strip = ("images_per_s", "epoch_time_s")
    hist = [[{k: v for k, v in r.items() if k not in strip} for r in s["history"]] for s in (a, b)]
    assert hist[0] == hist[1]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "resuming after epoch 2" in log
    assert (
        len(json.loads((tmp_path / "resumed" / "config.json").read_text())["earlier_starts"]) == 1
    )


def test_imagefolder_run_and_bf16(imagenet_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """ImageNet's layout and eval pipeline at toy sizes, under bf16 autocast on the CPU: the
    convolutions and the classifier really run in bfloat16."""
    convs = output_dtypes(monkeypatch, torch.nn.Conv2d)
    linears = output_dtypes(monkeypatch, torch.nn.Linear)
    results = train_tiny(
        tmp_path,
        imagenet_dir,
        "SGD",
        "num_classes=3",
        "augmentation.crop=16",
        "augmentation.resize=18",
        "batch_size=4",
        "eval_batch_size=4",
        "--amp",
        "bf16",
        config=str(ROOT / "configs" / "imagenet.yaml"),
        epochs=1,
    )
    assert results["finished"] and results["final"]["train_samples"] == 8  # 2 steps of 4
    assert set(convs) == set(linears) == {torch.bfloat16}


# Apollo takes DDP's gradient all-reduce; AdaHessian's create_graph backward runs under no_sync
# and the optimizer averages gradient and Hessian estimate itself.
@pytest.mark.parametrize("row", ["Apollo", "AdaHessian"])
def test_two_process_gloo_ddp_ranks_end_identical(
    row: str, cifar_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    argv = ["--config", CIFAR, "--row", row, "--schedule", "cosine", "--data-dir", str(cifar_dir)]
    argv += ["--out-dir", str(out), "--epochs", "1", "--max-steps-per-epoch", "2", *TINY]
    results = two_ranks("classification.train", argv, out)
    # the global batch of 8 is split over 2 ranks: 2 steps x 4 x 2 ranks samples
    assert results["final"]["train_samples"] == 16
    config = json.loads((out / "config.json").read_text())
    assert config["provenance"]["hardware"]["world_size"] == 2


def test_print_config_matches_the_paper(capsys) -> None:
    def printed(*argv: str) -> dict:
        train.main(["--print-config", *argv])
        return json.loads(capsys.readouterr().out)

    c = printed("--config", CIFAR, "--row", "Apollo", "--schedule", "cosine")
    apollo = {
        "name": "apollo",
        "lr": 0.01,
        "beta": 0.9,
        "eps": 1e-4,
        "rebound": "constant",
        "sigma": 0.01,
        "weight_decay": 2.5e-4,
        "weight_decay_type": "L2",
        "warmup": 500,
        "init_lr": 1e-5,
    }
    assert c["optimizer"] == apollo
    assert c["schedule"] == {
        "name": "cosine",
        "kind": "cosine",
        "unit": "epoch",
        "warmup": 0,
        "last_lr": 1e-5,
    }
    assert (c["epochs"], c["batch_size"], c["eval_batch_size"], c["model"], c["seed"]) == (
        200,
        128,
        1000,
        "cifar_resnet110",
        1,
    )
    c = printed("--config", CIFAR, "--row", "SGD", "--schedule", "milestone", "--seed", "8191")
    assert c["optimizer"] == {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "weight_decay_type": "L2",
    }
    assert (c["epochs"], c["schedule"]["milestones"], c["schedule"]["decay_rate"], c["seed"]) == (
        164,
        [80, 120],
        0.1,
        8191,
    )
    c = printed(
        "--config",
        str(ROOT / "configs/imagenet.yaml"),
        "--row",
        "ApolloW",
        "--schedule",
        "milestone",
    )
    assert (c["optimizer"]["weight_decay"], c["optimizer"]["weight_decay_type"]) == (
        1e-2,
        "decoupled",
    )
    assert (c["epochs"], c["schedule"]["milestones"], c["batch_size"]) == (120, [40, 80], 256)
    c = printed(
        "--config",
        str(ROOT / "configs/v1/cifar10.yaml"),
        "--row",
        "Apollo",
        "--schedule",
        "cosine",
        "optimizer.lr=0.25",
    )
    assert c["paper_version"] == "v1"
    assert (c["optimizer"]["sigma"], c["optimizer"]["warmup"], c["optimizer"]["init_lr"]) == (
        1.0,
        100,
        0.01,
    )
    assert c["optimizer"]["lr"] == 0.25  # the override, over the table's 0.5


def _fails(argv: list[str], capsys) -> str:
    return one_error_line(train.main, argv, capsys)


def test_bad_input_is_one_line(cifar_dir: Path, tmp_path: Path, capsys) -> None:
    base = ["--config", CIFAR, "--schedule", "milestone", "--out-dir", str(tmp_path / "o"), *TINY]
    assert "unknown row 'Nope'; rows: SGD, Adam*" in _fails([*base, "--row", "Nope"], capsys)
    err = _fails([*base, "--row", "SGD", "batch_size=many"], capsys)
    assert "batch_size must be int" in err
    err = _fails([*base, "--row", "SGD", "--data-dir", str(cifar_dir), "optimizer.lr=-1"], capsys)
    assert "optimizer 'sgd'" in err
    missing = tmp_path / "no-such-dir"
    err = _fails([*base, "--row", "SGD", "--data-dir", str(missing)], capsys)
    assert str(missing) in err
    broken = tmp_path / "broken"
    (broken / "cifar-10-batches-py").mkdir(parents=True)
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]:
        (broken / "cifar-10-batches-py" / name).write_bytes(b"\x80\x04junk")
    err = _fails([*base, "--row", "SGD", "--data-dir", str(broken)], capsys)
    assert "malformed cifar10 file" in err and "data_batch_1" in err
    assert not (tmp_path / "o").exists(), "nothing is written before the inputs are checked"


def test_corrupt_checkpoint_is_kept_and_reported(cifar_dir: Path, tmp_path: Path, capsys) -> None:
    train_tiny(tmp_path, cifar_dir, "SGD", epochs=1)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    argv = [
        "--config",
        CIFAR,
        "--row",
        "SGD",
        "--schedule",
        "milestone",
        "--data-dir",
        str(cifar_dir),
        "--out-dir",
        str(tmp_path),
        "--epochs",
        "2",
        *TINY,
    ]
    assert f"corrupt or unreadable checkpoint {ckpt}" in _fails(argv, capsys)
    assert before == {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    # and a run directory of another experiment is refused rather than overwritten
    ckpt.unlink()
    train_tiny(tmp_path, cifar_dir, "SGD", epochs=1)
    err = _fails([*argv[:3], "Adam", *argv[4:]], capsys)
    assert "holds a run with another config" in err and "optimizer" in err


def test_cli_exits_cleanly_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "classification.train",
            "--config",
            CIFAR,
            "--row",
            "SGD",
            "--schedule",
            "milestone",
            "--data-dir",
            str(tmp_path / "missing"),
            "--out-dir",
            str(tmp_path / "o"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data directory {tmp_path / 'missing'} does not exist"
    ]


def test_fp16_with_gradscaler_through_the_loop(cifar_dir: Path, tmp_path, monkeypatch) -> None:
    """float16 autocast (convolutions in float16, BatchNorm's statistics in float32) with the
    GradScaler: two steps taken, none skipped; the weights stay float32."""
    convs = output_dtypes(monkeypatch, torch.nn.Conv2d)
    results = train_tiny(tmp_path, cifar_dir, "Apollo", "--amp", "fp16", epochs=1)
    assert results["finished"] and set(convs) == {torch.float16}
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and state["scaler"]["_growth_tracker"] == 2
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())


def test_plugin_registers_an_optimizer(cifar_dir: Path, tmp_path: Path) -> None:
    """--plugin imports the user's file before the optimizer is built (as the quickstart does)."""
    plugin = tmp_path / "my_opt.py"
    plugin.write_text(
        "import torch\nimport apollo_optim as optim\n"
        "@optim.register('plain_sgd_test', summary='SGD without momentum')\n"
        "def plain(params, lr, weight_decay=0.0, **unused):\n"
        "    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)\n"
    )
    try:
        results = train_tiny(
            tmp_path / "o",
            cifar_dir,
            "SGD",
            "--plugin",
            str(plugin),
            "optimizer.name=plain_sgd_test",
            epochs=1,
        )
    finally:
        optim.unregister("plain_sgd_test")
    assert results["optimizer"] == "plain_sgd_test" and results["finished"]


def test_correct_topk_counts_on_the_device() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    counts = train.correct_topk(logits, torch.tensor([1, 1, 0]), ks=(1, 2, 5))
    assert isinstance(counts, torch.Tensor) and counts.tolist() == [1, 2, 3]


def _quickstart(out: Path, steps: int, device: str = "cpu") -> list[str]:
    return [
        "--config",
        QUICKSTART,
        "--row",
        "SGD",
        "--schedule",
        "cosine",
        "--out-dir",
        str(out),
        "--device",
        device,
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        str(steps),
    ]


def test_the_loop_reads_metrics_only_at_epoch_ends(tmp_path: Path, monkeypatch) -> None:
    """No .item()/float()/.tolist()/.cpu() per update: the host reads are the same for 2
    updates per epoch as for 6 (they happen at the epoch's end and in evaluation)."""
    reads = count_host_reads(monkeypatch)
    per_epoch = per_call(monkeypatch, train, "train_one_epoch", lambda: len(reads))
    for steps in (2, 6):
        train.main(_quickstart(tmp_path / f"s{steps}", steps))
    assert per_epoch[0] > 0 and per_epoch[0] == per_epoch[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA device syncs")
def test_no_device_sync_per_update_on_cuda(tmp_path: Path, sync_counts: list[int]) -> None:
    """torch.cuda.set_sync_debug_mode('warn') flags every synchronizing CUDA call: a training
    epoch of 6 updates makes as many as one of 2 (after a warm-up run: cuDNN's autotuning)."""
    for steps in (1, 2, 6):
        train.main(_quickstart(tmp_path / f"s{steps}", steps, device="cuda"))
    assert sync_counts[1] == sync_counts[2], sync_counts


def test_a_diverging_learning_rate_stops_the_run(tmp_path: Path) -> None:
    """SGD at lr 1e10: the first non-finite loss is recorded and the command ends normally."""
    args = [*_quickstart(tmp_path, 10), "optimizer.lr=1e10"]
    results = train.main(args)
    assert not results["finished"] and 1 <= results["diverged"]["update"] <= 10
    assert "diverged at update" in (tmp_path / "train.log").read_text()


def test_the_epoch_records_lr_is_the_one_its_first_update_applied(
    cifar_dir: Path, tmp_path: Path
) -> None:
    """Apollo warms up inside the optimizer: its first epoch starts at init_lr, not at the
    schedule's lr (2 updates an epoch, warmup=4 so the second epoch is still in it)."""
    extra = ("optimizer.warmup=4", "optimizer.init_lr=0.001", "optimizer.lr=0.1")
    train_tiny(tmp_path, cifar_dir, "Apollo", *extra, epochs=3)
    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # updates 0 and 2 apply init_lr + (0.1 - init_lr) * t / 4; update 4 the schedule's lr
    assert [r["lr"] for r in history[:2]] == pytest.approx([0.001, 0.001 + 0.099 * 2 / 4])
    assert history[2]["lr"] > 0.05
