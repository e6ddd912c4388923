"""Training-loss and test-metric curves per row, one PNG per table x schedule (for scripts.report).

Each row is one line: the mean over its seeds at every epoch all of them reached, with a band
of one sample standard deviation. The metric's axis is zoomed on the last two thirds of the
epochs, where the rows differ. Headless: matplotlib's Agg backend, no display needed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOSS_KEYS = ("train_loss", "loss")
#: How a metric key reads on an axis or in a table caption.
METRIC_NAMES = {"test_acc1": "top-1 test accuracy (%)", "test_ppl": "test perplexity",
                "bleu": "test BLEU"}  # fmt: skip


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
            fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12.5, 4.2))
            colors = plt.get_cmap("tab10")
            drawn, late = False, []
            for i, row in enumerate(lay["rows"]):
                runs = groups.get((lay["table"], lay["version"], sched, row), [])
                loss_key = next((k for k in LOSS_KEYS if any(
                    k in r for run in runs for r in run.history)), LOSS_KEYS[0])  # fmt: skip
                for ax, key in ((ax_loss, loss_key), (ax_metric, metric)):
                    epochs, mean, std = _series(runs, key)
                    if not epochs:
                        continue
                    drawn = True
                    color = colors(i % 10)
                    style = "-" if i < 10 else "--"
                    ax.plot(epochs, mean, style, color=color, label=f"{row} (n={len(runs)})")
                    low = [m - s for m, s in zip(mean, std, strict=True)]
                    high = [m + s for m, s in zip(mean, std, strict=True)]
                    ax.fill_between(epochs, low, high, color=color, alpha=0.15, linewidth=0)
                    if ax is ax_metric:
                        late += [
                            m for e, m in zip(epochs, mean, strict=True) if 3 * e > max(epochs)
                        ]
            if not drawn:
                plt.close(fig)
                continue
            ax_loss.set_yscale("log")
            ax_loss.set(xlabel="epoch", ylabel="training loss (log scale)",
                        title="training loss")  # fmt: skip
            name = METRIC_NAMES.get(metric, metric)
            ax_metric.set(xlabel="epoch", ylabel=name, title=f"{name}, mean ± std over seeds")
            if late and max(late) > min(late):
                pad = 0.25 * (max(late) - min(late))
                ax_metric.set_ylim(min(late) - pad, max(late) + pad)
            for ax in (ax_loss, ax_metric):
                ax.grid(alpha=0.3)
            fig.suptitle(f"{lay['table']} ({lay['version']}), schedule {sched}")
            handles, labels = ax_metric.get_legend_handles_labels()
            fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
            fig.tight_layout(rect=(0, 0, 0.86, 1))
            path = out / f"curves_{lay['table']}_{lay['version']}_{sched}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
