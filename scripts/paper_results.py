"""The paper's reported results, as data: what ``scripts.report`` prints beside reproduced runs.

Every number is the paper's ``mean (std)`` over seeds as published in the authors' README
(current version: σ = 0.01; ``v1``: the first version, σ = 1), keyed by the ``table`` and
``paper_version`` of ``configs/*.yaml`` and by the config's row and schedule names. The
language-model and translation tables have one schedule per row, so their cells match any
schedule name (``ANY``). This module is the one place these numbers live; the tables in
``docs/results.md`` are printed from it (``python -m scripts.paper_results``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from engine import cli

ANY = "*"


class PaperTable(NamedTuple):
    title: str
    metric: str  # the metric key of the task's results.json (documentation; not enforced)
    higher_is_better: bool
    cells: dict[str, dict[str, tuple[float, float]]]  # row -> schedule -> (mean, std)


def _image(rows: dict[str, tuple[float, ...]], which: slice) -> dict:
    """Rows of the image table (CIFAR-10 milestone, cosine, ImageNet milestone, cosine)."""
    out = {}
    for row, values in rows.items():
        m_mean, m_std, c_mean, c_std = values[which]
        out[row] = {"milestone": (m_mean, m_std), "cosine": (c_mean, c_std)}
    return out


# CIFAR-10 milestone, cosine | ImageNet milestone, cosine: mean, std each.
_IMAGE_CURRENT = {
    "SGD": (93.94, 0.07, 94.53, 0.27, 77.57, 0.07, 78.26, 0.08),
    "Adam*": (91.41, 0.30, 91.56, 0.19, 71.72, 0.13, 71.19, 0.10),
    "RAdam*": (91.80, 0.04, 91.88, 0.15, 72.37, 0.08, 71.64, 0.14),
    "Adam": (93.74, 0.15, 94.24, 0.09, 76.86, 0.06, 77.54, 0.16),
    "RAdam": (93.88, 0.11, 94.38, 0.25, 76.91, 0.07, 77.68, 0.08),
    "AdaBelief": (94.03, 0.11, 94.51, 0.07, 77.55, 0.07, 78.22, 0.11),
    "AdaHessian": (93.97, 0.22, 94.48, 0.17, 77.61, 0.09, 78.02, 0.10),
    "Apollo": (94.21, 0.08, 94.64, 0.09, 77.85, 0.07, 78.45, 0.06),
    "ApolloW": (94.34, 0.12, 94.76, 0.07, 77.86, 0.09, 78.48, 0.07),
}
_IMAGE_V1 = {
    "SGD": (93.91, 0.07, 94.53, 0.27, 77.19, 0.07, 78.17, 0.06),
    "Adam": (91.41, 0.30, 91.56, 0.19, 71.72, 0.13, 71.19, 0.10),
    "RAdam": (91.80, 0.04, 91.88, 0.15, 72.37, 0.08, 71.64, 0.14),
    "Adam-adj": (93.74, 0.15, 94.24, 0.09, 76.86, 0.06, 77.54, 0.16),
    "RAdam-adj": (93.88, 0.11, 94.38, 0.25, 76.91, 0.07, 77.68, 0.08),
    "Apollo": (94.20, 0.12, 94.60, 0.06, 77.90, 0.06, 78.54, 0.09),
}
_CIFAR, _IMAGENET = slice(0, 4), slice(4, 8)


def _one(**rows: tuple[float, float]) -> dict[str, dict[str, tuple[float, float]]]:
    return {row: {ANY: value} for row, value in rows.items()}


#: (table, paper_version) -> the paper's table.
PAPER: dict[tuple[str, str], PaperTable] = {
    ("cifar10", "current"): PaperTable(
        "ResNet-110 on CIFAR-10, top-1 test accuracy (%)",
        "test_acc1",
        True,
        _image(_IMAGE_CURRENT, _CIFAR),
    ),
    ("imagenet", "current"): PaperTable(
        "ResNeXt-50 on ImageNet, top-1 validation accuracy (%)",
        "test_acc1",
        True,
        _image(_IMAGE_CURRENT, _IMAGENET),
    ),
    ("cifar10", "v1"): PaperTable(
        "ResNet-110 on CIFAR-10, top-1 test accuracy (%), first version",
        "test_acc1",
        True,
        _image(_IMAGE_V1, _CIFAR),
    ),
    ("imagenet", "v1"): PaperTable(
        "ResNeXt-50 on ImageNet, top-1 validation accuracy (%), first version",
        "test_acc1",
        True,
        _image(_IMAGE_V1, _IMAGENET),
    ),
    ("lm1b", "current"): PaperTable(
        "2-layer LSTM on One Billion Words, test perplexity",
        "test_ppl",
        False,
        _one(
            SGD=(32.65, 0.13),
            Adam=(36.68, 0.21),
            RAdam=(36.20, 0.38),
            AdaBelief=(32.83, 0.18),
            Apollo=(31.94, 0.09),
        ),
    ),
    ("lm1b", "v1"): PaperTable(
        "2-layer LSTM on One Billion Words, test perplexity, first version",
        "test_ppl",
        False,
        _one(Adam=(36.68, 0.21), RAdam=(36.20, 0.38), Apollo=(32.21, 0.13)),
    ),
    ("wmt14", "current"): PaperTable(
        "Transformer-base on WMT-14 En-De, test BLEU",
        "bleu",
        True,
        _one(
            SGD=(26.59, 0.07),
            Adam=(27.84, 0.12),
            RAdam=(28.15, 0.15),
            AdaBelief=(28.14, 0.11),
            Apollo=(28.34, 0.10),
        ),
    ),
    ("wmt14", "v1"): PaperTable(
        "Transformer-base on WMT-14 En-De, test BLEU, first version",
        "bleu",
        True,
        _one(Adam=(27.83, 0.06), RAdam=(28.11, 0.17), Apollo=(28.32, 0.12)),
    ),
}


def reported(table: str, version: str, row: str, schedule: str) -> tuple[float, float] | None:
    """The paper's ``(mean, std)`` for one cell, or None where the paper has no such cell."""
    paper = PAPER.get((table, version))
    if paper is None or row not in paper.cells:
        return None
    cells = paper.cells[row]
    return cells.get(schedule, cells.get(ANY))


def markdown(table: str, version: str) -> str:
    """One of the paper's tables in Markdown, as in the authors' README."""
    paper = PAPER[(table, version)]
    schedules = list(dict.fromkeys(s for cells in paper.cells.values() for s in cells))
    heads = ["result" if s == ANY else s for s in schedules]
    lines = [f"| Method | {' | '.join(heads)} |", "|---" * (len(heads) + 1) + "|"]
    for row, cells in paper.cells.items():
        values = [
            f"{cells[s][0]:.2f} ({cells[s][1]:.2f})" if s in cells else "–" for s in schedules
        ]
        lines.append(f"| {row} | {' | '.join(values)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print every table the paper reports."""
    cli.ArgumentParser(prog="python -m scripts.paper_results", description=__doc__).parse_args(argv)
    for (table, version), paper in PAPER.items():
        print(f"**{paper.title}** (`{table}`, paper version `{version}`)\n")
        print(markdown(table, version) + "\n")


if __name__ == "__main__":
    main()
