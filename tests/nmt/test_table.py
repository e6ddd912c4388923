"""nmt.table: one row per table row, means over seeds, the caption names the checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from engine import cli
from nmt import table


def _run(root: Path, row: str, seed: int, final: dict | None, checkpoints: int = 2) -> None:
    run = root / row / "recipe" / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "nmt", "config": None}))
    results = {
        "table": "wmt14",
        "paper_version": "current",
        "row": row,
        "finished": True,
        "updates_completed": 100,
        "final": {"epoch": 4, **(final or {})},
    }
    if final is not None:
        results["evaluation"] = {
            "checkpoints": [f"checkpoint_epoch{i}.pt" for i in range(checkpoints)]
        }
    (run / "results.json").write_text(json.dumps(results))


def test_rows_are_means_over_seeds_and_unevaluated_runs_are_listed(tmp_path, capsys):
    scores = {"valid_loss": 4.0, "valid_ppl": 30.0, "bleu": 20.0, "sacrebleu": 19.5}
    _run(tmp_path, "Adam", 1, scores)
    _run(tmp_path, "Adam", 2, {k: v + 1 for k, v in scores.items()})
    _run(tmp_path, "Apollo", 1, scores)
    _run(tmp_path, "SGD", 1, None)  # trained, not evaluated
    cli.main(table.main, [str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "**wmt14 (paper version current): test BLEU of the average of the last 2 epoch "
        "checkpoints after 4 epochs (100 updates); valid loss of the last epoch; mean over seeds**"
    )
    assert out[4] == "| Adam | 2 | 4.500 ± 0.707 | 30.5 ± 0.7 | 20.50 ± 0.71 | 20.00 ± 0.71 |"
    assert out[5] == "| Apollo | 1 | 4.000 | 30.0 | 20.00 | 19.50 |"
    sgd = tmp_path / "SGD" / "recipe" / "seed1"
    assert out[-1] == f"skipped {sgd}: not evaluated yet (python -m nmt.evaluate)"


def test_a_one_epoch_run_is_captioned_in_the_singular(tmp_path, capsys):
    scores = {"epoch": 1, "valid_loss": 4.0, "valid_ppl": 30.0, "bleu": 20.0, "sacrebleu": 19.5}
    _run(tmp_path, "Adam", 1, scores, checkpoints=1)
    cli.main(table.main, [str(tmp_path)])
    assert " after 1 epoch (100 updates); " in capsys.readouterr().out.splitlines()[0]
