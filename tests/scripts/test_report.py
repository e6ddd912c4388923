"""scripts.report on hand-made run directories whose numbers are known."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.metrics import write_json, write_metrics, write_results
from scripts import report
from scripts.paper_results import PAPER, reported


def make_run(
    root: Path,
    row: str,
    seed: int,
    accs: list[float],
    *,
    table: str = "cifar10",
    schedule: str = "cosine",
    epochs: int | None = None,
    lr: float = 0.01,
    version: str = "current",
) -> Path:
    """A run directory as classification.train writes it, with test_acc1 per epoch = ``accs``."""
    epochs = len(accs) if epochs is None else epochs
    config: dict[str, Any] = {
        "config": "configs/does-not-exist.yaml",
        "table": table,
        "task": "classification",
        "paper_version": version,
        "row": row,
        "seed": seed,
        "epochs": epochs,
        "optimizer": {"name": row.lower(), "lr": lr},
        "schedule": {"name": schedule, "kind": "cosine"},
        "device": "cpu",
        "out_dir": None,
    }
    out = root / table / version / row / schedule / f"seed{seed}"
    config["out_dir"] = str(out)
    history = [
        {"epoch": i + 1, "train_loss": 1.0 / (i + 1) + seed * 1e-3, "test_acc1": a}
        for i, a in enumerate(accs)
    ]
    out.mkdir(parents=True)
    write_json(out / "config.json", {**config, "provenance": {"git": {"commit": "abc"}}})
    write_metrics(out, history)
    write_results(out, config, history, metric="test_acc1", finished=len(accs) >= epochs)
    return out


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    # Apollo / cosine: best epochs 94.0, 94.2, 94.4 -> mean 94.20, sample std 0.20
    for seed, best in ((1, 94.0), (101, 94.2), (8191, 94.4)):
        make_run(root, "Apollo", seed, [90.0, best, best - 1.0])
    # SGD / cosine: one seed only -> no std
    make_run(root, "SGD", 1, [93.0, 93.5])
    # skipped: unfinished, different config (lr), repeated seed, no results.json at all
    make_run(root, "SGD", 101, [92.0], epochs=2)
    make_run(root / "other", "Apollo", 65537, [99.0, 99.0, 99.0], lr=0.5)
    make_run(root / "rerun", "Apollo", 1, [50.0, 50.0, 50.0])
    (root / "crashed").mkdir()
    (root / "crashed" / "config.json").write_text("{}")
    return root


def test_mean_std_formatting() -> None:
    assert report.mean_std([94.0, 94.2, 94.4]) == "94.20 (0.20)"  # sample std, not 0.16
    std = statistics.stdev([1, 2, 4])
    assert report.mean_std([1.0, 2.0, 4.0], digits=3) == f"2.333 ({std:.3f})"
    assert report.mean_std([93.5]) == "93.50 (-)"
    assert report.mean_std([]) == "–"


def test_aggregates_and_skips_with_reasons(runs: Path, tmp_path: Path) -> None:
    result = report.report([str(runs)], tmp_path / "out", plots=False)
    cells = {c.key: c for c in result["cells"]}
    apollo = cells[("cifar10", "current", "cosine", "Apollo")]
    assert apollo.values == pytest.approx([94.0, 94.2, 94.4])
    assert apollo.seeds == [1, 101, 8191]
    assert apollo.text() == "94.20 (0.20)"
    assert apollo.paper() == "94.64 (0.09)"  # the paper's cell beside ours
    # final-epoch training loss 1/3 + seed/1000, averaged over the three seeds
    assert statistics.fmean(apollo.losses) == pytest.approx(1 / 3 + (1 + 101 + 8191) / 3000)
    sgd = cells[("cifar10", "current", "cosine", "SGD")]
    assert sgd.text() == "93.50 (-)" and sgd.n == 1

    reasons = {str(p.relative_to(runs)): why for p, why in result["skipped"]}
    assert len(reasons) == 4, reasons
    assert reasons["cifar10/current/SGD/cosine/seed101"] == "unfinished: 1 of 2 epochs"
    assert reasons["crashed"].startswith("unfinished: no epoch completed")
    different = reasons["other/cifar10/current/Apollo/cosine/seed65537"]
    assert different.startswith("different config from the 4 other run(s)")
    assert different.endswith(": optimizer.lr=0.5 (others: 0.01)")
    assert reasons["rerun/cifar10/current/Apollo/cosine/seed1"].startswith("repeats seed 1 of ")


def test_writes_markdown_latex_csv_in_the_papers_layout(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.report([str(runs / "cifar10"), str(runs / "other" / "*" / "*")], out, plots=False)
    md = (out / "table.md").read_text()
    lines = md.splitlines()
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
        for line in lines
        if line.startswith("| ")
    }
    assert cells["Method"][1:] == [
        "cosine",
        "cosine (paper)",
        "cosine: final train loss",
        "cosine: seeds",
    ]
    loss = report.mean_std([1 / 3 + s / 1000 for s in (1, 101, 8191)], digits=4)
    assert cells["Apollo"][1:] == ["94.20 (0.20)", "94.64 (0.09)", loss, "3"]
    assert cells["SGD"][1:] == ["93.50 (-)", "94.53 (0.27)", f"{0.5 + 0.001:.4f} (-)", "1"]
    # the paper's order: SGD before Apollo, then rows the paper lacks
    assert md.index("| SGD |") < md.index("| Apollo |")
    assert "Skipped run directories" in md and "optimizer.lr=0.5" in md

    tex = (out / "table.tex").read_text()
    assert "\\begin{tabular}" in tex and "94.20 (0.20) & 94.64 (0.09)" in tex
    assert "\\%" in tex  # the caption's "(%)" is escaped

    rows = list(csv.DictReader(open(out / "table.csv")))
    by_row = {r["row"]: r for r in rows}
    assert by_row["Apollo"]["n"] == "3" and by_row["Apollo"]["seeds"] == "1 101 8191"
    assert float(by_row["Apollo"]["mean"]) == pytest.approx(94.2)
    assert float(by_row["Apollo"]["std"]) == pytest.approx(0.2)
    assert by_row["SGD"]["std"] == "" and by_row["Apollo"]["paper"] == "94.64 (0.09)"


def test_finds_runs_by_folder_glob_or_file(runs: Path) -> None:
    apollo = sorted((runs / "cifar10" / "current" / "Apollo" / "cosine").iterdir())
    assert len(apollo) == 3
    assert report.find_run_dirs([str(runs / "cifar10" / "current" / "Apollo")]) == apollo
    assert report.find_run_dirs([str(runs / "cifar10" / "**" / "Apollo" / "*" / "seed*")]) == apollo
    assert report.find_run_dirs([str(runs / "**" / "Apollo" / "*" / "*" / "results.json")]) == [
        *apollo,
        *sorted((runs / "other").glob("*/*/Apollo/*/*")),
        *sorted((runs / "rerun").glob("*/*/Apollo/*/*")),
    ]


def test_pick_final_and_plots(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = report.report([str(runs)], out, pick="final")
    apollo = next(c for c in result["cells"] if c.key[3] == "Apollo")
    assert apollo.text() == "93.20 (0.20)"  # last epoch = best - 1
    png = out / "curves_cifar10_current_cosine.png"
    assert png in result["written"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_without_paper_numbers_and_separate_versions(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "Apollo", 1, [80.0], table="quickstart")
    make_run(root, "Apollo", 1, [70.0], table="cifar10", version="v1")
    result = report.report([str(root)], tmp_path / "out", plots=False)
    assert len(result["cells"]) == 2
    md = result["markdown"]
    assert "quickstart (paper version current)" in md and "the paper has no such table" in md
    assert "cosine (paper)" in md and "94.60 (0.06)" in md  # v1's Apollo cosine number


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "scripts.report", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: no run directory matches {tmp_path / 'nothing'}"
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "checkpoint.pt").write_bytes(b"")
    run = subprocess.run(
        [sys.executable, "-m", "scripts.report", str(tmp_path / "empty_run")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "no finished runs among 1 run directories" in run.stderr
    assert "unfinished: no epoch completed" in run.stdout


def test_paper_numbers_match_the_spec_tables() -> None:
    assert reported("cifar10", "current", "ApolloW", "cosine") == (94.76, 0.07)
    assert reported("imagenet", "current", "SGD", "milestone") == (77.57, 0.07)
    assert reported("cifar10", "v1", "SGD", "milestone") == (93.91, 0.07)
    assert reported("lm1b", "current", "Apollo", "milestone") == (31.94, 0.09)
    assert reported("wmt14", "v1", "Apollo", "anything") == (28.32, 0.12)
    assert reported("cifar10", "current", "MyOpt", "cosine") is None
    assert len(PAPER[("cifar10", "current")].cells) == 9
    json.dumps({str(k): v for k, v in PAPER.items()})  # plain data


def test_the_default_output_goes_beside_the_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    """The reports of two tables never overwrite each other: ``report runs/X`` writes
    ``runs/X/report/``; a run, a glob or several folders: their deepest common folder."""
    root = tmp_path / "runs"
    make_run(root, "Apollo", 1, [80.0], table="quickstart")
    sgd = make_run(root, "SGD", 1, [70.0], table="cifar10")
    monkeypatch.chdir(tmp_path)
    assert report.default_out(["runs/cifar10"]) == Path("runs/cifar10/report")
    assert report.default_out([str(sgd)]) == sgd.parent.relative_to(tmp_path) / "report"
    assert report.default_out([str(sgd / "results.json")]) == report.default_out([str(sgd)])
    assert report.default_out(["runs/*/current"]) == Path("runs/report")
    assert report.default_out(["runs/cifar10", "runs/quickstart"]) == Path("runs/report")
    for table in ("cifar10", "quickstart"):
        report.main([f"runs/{table}", "--no-plots"])
        assert f"wrote runs/{table}/report/table.md" in capsys.readouterr().out
    assert "| SGD |" in (root / "cifar10/report/table.md").read_text()
    assert "| Apollo |" in (root / "quickstart/report/table.md").read_text()
    report.main(["runs/cifar10", "--no-plots"])  # its own report folder is not a run
    assert "skipped" not in capsys.readouterr().out


def test_a_bleu_table_names_the_evaluated_checkpoints_not_an_epoch() -> None:
    """Translation runs are scored by nmt.evaluate on averaged last checkpoints: the caption
    must not claim a best or last epoch."""
    lay = {"table": "wmt14", "version": "current", "metric": "bleu", "paper": None}
    for pick in ("best", "final"):
        text = report.caption(lay, pick)
        assert "epoch" not in text.split("(the run")[0] and "nmt.evaluate" in text
    assert "at the best epoch" in report.caption({**lay, "metric": "test_acc1"}, "best")
