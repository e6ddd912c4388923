"""Readable curves: rows differ without colour, every line is labelled, no point is cut off."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt

from scripts import plot_curves

ROWS = ["SGD", "Adam*", "RAdam*", "Adam", "RAdam", "AdaBelief", "AdaHessian", "Apollo", "ApolloW"]


def _runs(row: int) -> list[SimpleNamespace]:
    """Two seeds; the third row starts at 10 % (a slow row), the others near the top."""
    start = 10.0 if row == 2 else 90.0 + row * 0.2
    return [
        SimpleNamespace(
            history=[
                {
                    "epoch": e,
                    "train_loss": 2.0 / e + seed * 0.01,
                    "test_acc1": min(start + 5 * e + seed, 99.0),
                }
                for e in range(1, 16)
            ]
        )
        for seed in (0, 1)
    ]


def test_nine_rows_are_told_apart_without_colour_and_nothing_is_cut_off(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to look at them
    groups = {("quickstart", "current", "cosine", row): _runs(i) for i, row in enumerate(ROWS)}
    layout = {
        "table": "quickstart",
        "version": "current",
        "schedules": ["cosine"],
        "rows": ROWS,
        "metric": "test_acc1",
    }
    (path,) = plot_curves.plot_groups(groups, Path(tmp_path), [layout])
    assert path.read_bytes()[:4] == b"\x89PNG"
    (fig,) = figures
    ax_loss, ax_metric = fig.axes
    for ax in (ax_loss, ax_metric):
        lines = ax.get_lines()
        assert len(lines) == len(ROWS)
        assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == len(ROWS)
        labels = {t.get_text(): t for t in ax.texts}
        assert sorted(labels) == sorted(ROWS)  # each line named at its end
        heights = sorted(t.xyann[1] for t in labels.values())
        assert all(b - a >= 0.05 for a, b in itertools.pairwise(heights))
    low, high = ax_metric.get_ylim()
    assert low <= 15.5 and high >= 99.0  # the slow row's first epochs are on the plot too
    assert len({tuple(sorted(plot_curves.row_style(i).items())) for i in range(20)}) == 20
    assert (
        len(
            {
                (plot_curves.row_style(i)["linestyle"], plot_curves.row_style(i)["marker"])
                for i in range(20)
            }
        )
        == 20
    )
