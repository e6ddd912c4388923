"""configs/wmt14.yaml and configs/v1/wmt14.yaml against the paper's table and the authors'
recipe, typed in from the spec (not read from the configs under test); every row builds."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from engine import config as cfg
from engine.optimization import build_optimizer, build_schedule
from nmt import train

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [1, 11, 101, 65537, 524287]
L2, DEC = "L2", "decoupled"
# row: (registry name, lr, weight decay, type, eps, schedule kind, schedule warmup, its init_lr)
CURRENT = {
    "SGD": ("sgd", 0.1, 1e-6, L2, None, "milestone", 1000, 1e-4),
    "Adam": ("adam", 5e-4, 1e-4, DEC, 1e-8, "inverse_sqrt", 4000, 1e-7),
    "RAdam": ("radam", 5e-4, 1e-4, DEC, 1e-8, "milestone", 0, None),
    "AdaBelief": ("adabelief", 5e-4, 1e-4, DEC, 1e-16, "milestone", 1000, 1e-7),
    "Apollo": ("apollo", 0.1, 1e-8, L2, 1e-4, "milestone", 0, None),
}
V1 = {row: CURRENT[row] for row in ("Adam", "RAdam")} | {
    "Apollo": ("apollo", 10.0, 1e-8, L2, 1e-4, "milestone", 0, None)
}
BETAS = {"adam": (0.9, 0.98), "radam": (0.9, 0.999), "adabelief": (0.9, 0.999)}
CASES = [("configs/wmt14.yaml", r) for r in CURRENT] + [("configs/v1/wmt14.yaml", r) for r in V1]


def _resolve(table: str, row: str) -> dict:
    t = cfg.load_table(ROOT / table)
    return cfg.resolve(t, row, "recipe", schema=train.SCHEMA, flags={"device": "cpu"})


def test_tables_have_the_papers_rows_and_seeds():
    for table, rows, version in (
        ("configs/wmt14.yaml", CURRENT, "current"),
        ("configs/v1/wmt14.yaml", V1, "v1"),
    ):
        t = cfg.load_table(ROOT / table)
        assert cfg.row_names(t) == list(rows) and t["seeds"] == SEEDS
        assert (t["task"], t["table"], t["paper_version"]) == ("nmt", "wmt14", version)


@pytest.mark.parametrize(("table", "row"), CASES)
def test_every_row_is_the_recipe_and_builds(table, row):
    c = _resolve(table, row)
    name, lr, wd, wd_type, eps, kind, warmup, init_lr = (V1 if "v1" in table else CURRENT)[row]
    o, s = c["optimizer"], c["schedule"]
    assert (o["name"], o["lr"], o["weight_decay"], o["weight_decay_type"]) == (
        name,
        lr,
        wd,
        wd_type,
    )
    assert o.get("eps") == eps
    if name in BETAS:
        assert tuple(o["betas"]) == BETAS[name]
    if name == "sgd":
        assert (o["momentum"], o["nesterov"]) == (0.9, False)  # fairseq's SGD: no Nesterov
    if name == "apollo":
        sigma, apollo_init = (1.0, 0.01) if "v1" in table else (0.01, 1e-5)
        assert (o["beta"], o["sigma"], o["rebound"]) == (0.9, sigma, "constant")
        assert (o["warmup"], o["init_lr"]) == (1000, apollo_init)  # inside the optimizer only
    assert (s["kind"], s["unit"], s["warmup"], s.get("init_lr")) == (
        kind,
        "update",
        warmup,
        init_lr,
    )
    if kind == "milestone":
        assert (s["milestones"], s["decay_rate"]) == ([250000, 450000], 0.1)
    assert c["max_updates"] == 500000 and c["epochs"] is None
    assert (c["max_tokens"], c["tokens_per_update"], c["clip"]) == (8192, 65536, 1.0)
    assert (c["label_smoothing"], c["amp"]) == (0.1, "none")
    assert (c["checkpoint_every"], c["keep_last"], c["average_last"]) == (1000, 10, 10)
    assert c["model"] == {
        "embed_dim": 512,
        "ffn_dim": 2048,
        "heads": 8,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.1,
        "max_positions": 1024,
        "share_all_embeddings": True,
    }
    assert c["generations"][c["generation"]] == {
        "beam": 4,
        "lenpen": 0.6,
        "max_len_a": 0.0,
        "max_len_b": 200,
    }
    assert c["generations"]["author_scripts"] == {
        "beam": 5,
        "lenpen": 1.0,
        "max_len_a": 2.0,
        "max_len_b": 0,
    }
    assert c["preprocess"] == {
        "source_lang": "en",
        "target_lang": "de",
        "bpe_merges": 40000,
        "bpe_min_frequency": 2,
        "max_len_ratio": 1.5,
        "min_len": 1,
        "max_len": 250,
        "valid_every": 100,
        "dict_pad_multiple": 8,
    }
    # the schedule counts updates: warmup, milestones at 250K / 450K, or inverse sqrt
    optimizer, _ = build_optimizer(torch.nn.Linear(2, 2).parameters(), o)
    schedule = build_schedule(optimizer, c)
    for step, want in lr_points(kind, lr, warmup, init_lr):
        schedule.last_epoch = step
        assert schedule.get_lr()[0] == pytest.approx(want, rel=1e-9), step


def lr_points(kind: str, lr: float, warmup: int, init_lr: float | None) -> list[tuple[int, float]]:
    """The learning rate the recipe gives at a few updates (0-based)."""
    points = [(0, lr if not warmup else init_lr)]
    if warmup:
        points.append((warmup // 2, init_lr + (lr - init_lr) / 2))
    if kind == "inverse_sqrt":
        return [*points, (warmup, lr), (4 * warmup, lr / 2), (100 * warmup, lr / 10)]
    return [*points, (249999, lr), (250000, lr * 0.1), (449999, lr * 0.1), (450000, lr * 0.01)]


def test_print_config_shows_the_row(capsys):
    train.main(
        [
            "--config",
            str(ROOT / "configs/wmt14.yaml"),
            "--row",
            "AdaBelief",
            "--print-config",
            "--max-updates",
            "1000",
        ]
    )
    c = json.loads(capsys.readouterr().out)
    assert c["optimizer"]["eps"] == 1e-16 and c["schedule"]["warmup"] == 1000
    assert c["max_updates"] == 1000 and c["schedule"]["name"] == "recipe"


def test_script_trains_every_row_and_seed_then_evaluates():
    def commands(*args: str) -> list[str]:
        cmd = ["bash", str(ROOT / "scripts/wmt14.sh"), "--dry-run", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.strip().splitlines()

    v1 = commands("--version", "v1", "--data-dir", "D", "--gpus", "0", "--out-root", "R")
    assert len(v1) == len(V1) * len(SEEDS) + 1  # then one evaluation of them all
    assert all("-m nmt.train --config configs/v1/wmt14.yaml" in c for c in v1[:-1])
    assert [c.split("--row ")[1].split()[0] for c in v1[:: len(SEEDS)][:-1]] == list(V1)
    assert all("--data-dir D" in c and "--device cpu" in c for c in v1)
    assert v1[-1].endswith("-m nmt.evaluate --run-dir R/wmt14/v1 --data-dir D --device cpu")
    script = (ROOT / "scripts/wmt14.sh").read_text()
    body = [line for line in script.splitlines() if not line.startswith("#")]
    code = "\n".join(body).replace("wmt14", "")
    # no hyperparameter in the script: only the flags 0 / 1 and array arithmetic
    assert set(re.findall(r"[\d.]*\d(?:e-?\d+)?", code)) <= {"0", "1", "2"}


def test_help_shows_this_tasks_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "python -m nmt.train --config configs/wmt14.yaml --row Apollo" in text
    assert "--max-updates" in text and "lm1b" not in text
