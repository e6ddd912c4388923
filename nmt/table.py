"""The translation table of evaluated runs: valid loss, test BLEU and sacreBLEU per row.

::

    python -m nmt.table RUN_DIR_OR_FOLDER...

For the runs ``nmt.evaluate`` has scored (others are listed as skipped), one Markdown row per
table row: the number of seeds, the valid loss and perplexity of the last epoch, the test BLEU
(tokenized, compound-split: the paper's convention) and the detokenized sacreBLEU, each the
mean over seeds (``± sample std`` when there are several). The caption says what BLEU was
computed from: the average of the last N epoch checkpoints, or the last epoch's checkpoint.
``scripts/nmt_demo.sh`` prints this table (``nmt/README.md`` shows it);
``python -m scripts.report`` prints the paper's layout of the same runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from engine import cli, metrics
from engine import config as cfg

from .evaluate import run_dirs

COLUMNS = (
    ("valid_loss", "valid loss", 3),
    ("valid_ppl", "valid ppl", 1),
    ("bleu", "test BLEU (tokenized, compound-split)", 2),
    ("sacrebleu", "sacreBLEU", 2),
)


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    mean = f"{statistics.fmean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.{digits}f}"


def _source(record: dict[str, Any]) -> str:
    n = len(record.get("checkpoints") or [])
    if n == 1:
        return "the last epoch's checkpoint"
    return f"the average of the last {n} epoch checkpoints"


def _row_order(config_path: str | None, rows: list[str]) -> list[str]:
    try:
        order = cfg.row_names(cfg.load_table(config_path)) if config_path else []
    except ValueError:
        order = []
    return [r for r in order if r in rows] + sorted(set(rows) - set(order))


def table(paths: Sequence[str]) -> str:
    """The Markdown table (caption, header, rows) of the evaluated runs under ``paths``."""
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    sources: dict[tuple[str, str], set[str]] = {}
    lengths: dict[tuple[str, str], set[tuple[Any, Any]]] = {}
    configs: dict[tuple[str, str], str | None] = {}
    skipped = []
    for run_dir in run_dirs(paths):
        try:
            results = metrics.read_json(run_dir / "results.json")
        except (OSError, ValueError):
            skipped.append(f"{run_dir}: no readable results.json")
            continue
        record = results.get("evaluation")
        if not results.get("finished") or not record:
            skipped.append(f"{run_dir}: not evaluated yet (python -m nmt.evaluate)")
            continue
        key = (str(results.get("table")), str(results.get("paper_version")))
        final = dict(results.get("final") or {})
        groups.setdefault(key, {}).setdefault(str(results.get("row")), []).append(final)
        sources.setdefault(key, set()).add(_source(record))
        lengths.setdefault(key, set()).add((final.get("epoch"), results.get("updates_completed")))
        configs.setdefault(key, metrics.read_json(run_dir / "config.json").get("config"))
    if not groups:
        raise ValueError(f"{' '.join(paths)}: no evaluated translation run")
    parts = []
    for key, rows in groups.items():
        epochs = ", ".join(
            f"{e} epoch{'s' * (e != 1)} ({u:,} update{'s' * (u != 1)})"
            for e, u in sorted(lengths[key])
        )
        caption = (
            f"**{key[0]} (paper version {key[1]}): test BLEU of "
            f"{' / '.join(sorted(sources[key]))} after {epochs}; valid loss of the last epoch; "
            "mean over seeds**"
        )
        lines = [
            caption,
            "",
            "| row | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
            "|---|---:" + "|---:" * len(COLUMNS) + "|",
        ]
        for row in _row_order(configs[key], list(rows)):
            finals = rows[row]
            cells = [
                _cell([float(f[k]) for f in finals if f.get(k) is not None], digits)
                for k, _, digits in COLUMNS
            ]
            lines.append(f"| {row} | {len(finals)} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    notes = "".join(f"\nskipped {line}" for line in skipped)
    return "\n\n".join(parts) + "\n" + notes + ("\n" if notes else "")


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m nmt.table", description=__doc__)
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR_OR_FOLDER",
        help="run directories, or folders searched for them",
    )
    args = p.parse_args(argv)
    print(table(args.runs), end="")


if __name__ == "__main__":
    cli.main(main)
