"""Training-loss and test-metric curves per row, one PNG per table x schedule (for scripts.report).

Each row is one line: the mean over its seeds at every epoch all of them reached, with a band
of one sample standard deviation. Rows differ in line style and marker as well as colour (nine
rows are not told apart by colour alone, nor in greyscale), and each line is labelled with its
row at its last point. Both axes show every point (an accuracy axis is never cut off; the loss
and a perplexity are on log scales). Headless: matplotlib's Agg backend, no display needed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOSS_KEYS = ("train_loss", "loss")
#: How a metric key reads on an axis or in a table caption.
METRIC_NAMES = {
    "test_acc1": "top-1 test accuracy (%)",
    "test_ppl": "test perplexity",
    "bleu": "test BLEU",
}
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def row_style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of the ``i``-th row: no two of the first 20 rows share the
    (line style, marker) pair, so they differ without colour too."""
    return {
        "color": f"C{i % 10}",
        "linestyle": LINE_STYLES[i % len(LINE_STYLES)],
        "marker": MARKERS[(i + i // len(MARKERS)) % len(MARKERS)],
    }


def _series(runs: Sequence[Any], key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and sample std of ``key`` over the runs' metrics.jsonl records."""
    per_run = [{r["epoch"]: r[key] for r in run.history if r.get(key) is not None} for run in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return [], [], []
    epochs = sorted(set.intersection(*(set(p) for p in per_run)))
    means = [statistics.fmean(p[e] for p in per_run) for e in epochs]
    stds = [statistics.stdev(p[e] for p in per_run) if len(per_run) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def label_line_ends(ax: Any, ends: Sequence[tuple[str, float, float, str]]) -> None:
    """Name each line just right of the axes, level with its last point, labels pushed apart
    so that none overlaps (a thin leader joins a moved label to its line)."""
    if not ends:
        return
    ax.get_ylim()  # settle the autoscaled limits first
    to_axes = ax.transData + ax.transAxes.inverted()
    points = sorted((to_axes.transform((x, y))[1], name, color, x, y) for name, x, y, color in ends)
    gap = 0.055  # one 7-point line of text in a ~4-inch axes
    placed: list[float] = []
    for frac, *_ in points:
        placed.append(max(frac, placed[-1] + gap) if placed else frac)
    overflow = placed[-1] - 1.0  # shift the stack down if it runs off the top
    if overflow > 0:
        placed = [p - overflow for p in placed]
    for (_, name, color, x, y), frac in zip(points, placed, strict=True):
        ax.annotate(
            name,
            xy=(x, y),
            xycoords="data",
            xytext=(1.02, frac),
            textcoords="axes fraction",
            va="center",
            fontsize=7,
            color=color,
            arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5, "alpha": 0.6},
            annotation_clip=False,
        )


def plot_groups(
    groups: Mapping[tuple, Sequence[Any]], out: Path, layouts: Sequence[Mapping[str, Any]]
) -> list[Path]:
    """Write ``curves_<table>_<version>_<schedule>.png`` for every table and schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for lay in layouts:
        metric = lay["metric"]
        for sched in lay["schedules"]:
            fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(13, 4.6))
            drawn, ends = False, {}
            for i, row in enumerate(lay["rows"]):
                runs = groups.get((lay["table"], lay["version"], sched, row), [])
                loss_key = next(
                    (k for k in LOSS_KEYS if any(k in r for run in runs for r in run.history)),
                    LOSS_KEYS[0],
                )
                for ax, key in ((ax_loss, loss_key), (ax_metric, metric)):
                    epochs, mean, std = _series(runs, key)
                    if not epochs:
                        continue
                    drawn = True
                    style = row_style(i)
                    ax.plot(
                        epochs,
                        mean,
                        label=f"{row} (n={len(runs)})",
                        markersize=4,
                        markevery=max(1, len(epochs) // 15),
                        **style,
                    )
                    low = [m - s for m, s in zip(mean, std, strict=True)]
                    high = [m + s for m, s in zip(mean, std, strict=True)]
                    ax.fill_between(
                        epochs, low, high, color=style["color"], alpha=0.12, linewidth=0
                    )
                    ends.setdefault(ax, []).append((row, epochs[-1], mean[-1], style["color"]))
            if not drawn:
                plt.close(fig)
                continue
            ax_loss.set_yscale("log")
            ax_loss.set(xlabel="epoch", ylabel="training loss (log scale)", title="training loss")
            name = METRIC_NAMES.get(metric, metric)
            if "ppl" in metric:
                ax_metric.set_yscale("log")
            ax_metric.set(xlabel="epoch", ylabel=name, title=f"{name}, mean ± std over seeds")
            for ax in (ax_loss, ax_metric):
                ax.grid(alpha=0.3)
                label_line_ends(ax, ends.get(ax, []))
            fig.suptitle(f"{lay['table']} ({lay['version']}), schedule {sched}")
            handles, labels = ax_metric.get_legend_handles_labels()
            fig.legend(
                handles,
                labels,
                loc="lower center",
                ncol=min(len(labels), 5),
                fontsize=8,
                frameon=False,
            )
            fig.tight_layout(rect=(0, 0.02 + 0.045 * -(-len(labels) // 5), 1, 1))
            path = out / f"curves_{lay['table']}_{lay['version']}_{sched}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
