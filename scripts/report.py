"""Run directories -> the paper's tables (``mean (std)`` over seeds), CSV, LaTeX and curves.

::

    python -m scripts.report RUN_DIR_OR_GLOB... [--out DIR] [--pick {best,final}] [--no-plots]
    python -m scripts.report runs/cifar10          # writes runs/cifar10/report/

Each argument is a run directory (it holds ``config.json`` / ``results.json``, see
``engine.metrics``), a folder searched for run directories, or a glob of either. Runs are
grouped by table, paper version, schedule and row (the identity ``config.json`` records), and
each group's metric is aggregated over seeds: the mean and the sample standard deviation
(n - 1 in the denominator), printed as the paper prints them, ``94.21 (0.08)``, with the
number of seeds and the final epoch's training loss beside it. Where the paper reports the
same cell (``scripts/paper_results.py``) its number is printed next to ours.

The value of one run is its metric at the best epoch (``--pick best``, what the paper's image
table reports) or at the last epoch (``--pick final``). A cell where any seed's training loss
diverged (``results.json``'s ``diverged``) reads ``diverged (k of n seeds)`` instead of a
number. A run is skipped, and the reason printed, when it has not finished (nor diverged),
cannot be read, repeats a seed, or was trained with a different config from the other runs of
its group (the most common config wins; the seed, paths, device and worker count may differ).

Writes ``table.md``, ``table.tex``, ``table.csv`` and ``curves_<table>_<version>_<schedule>.png``
(see ``scripts/plot_curves.py``) to ``--out`` and prints the Markdown. By default the report goes
beside the runs it reports, so that the reports of different tables never overwrite each other:
``report/`` in the folder named (``runs/cifar10`` -> ``runs/cifar10/report/``), or in the
deepest folder that holds every run named or matched.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import cli
from engine import config as cfg
from scripts import paper_results
from scripts.plot_curves import LOSS_KEYS, METRIC_NAMES

#: Config keys that may differ between the seeds of one cell (where and on what it ran).
IGNORED_KEYS = (
    "config",
    "seed",
    "out_dir",
    "data_dir",
    "workers",
    "device",
    "plugins",
    "dist_timeout",
    "provenance",
    "earlier_starts",
)
RUN_FILES = ("config.json", "results.json", "metrics.jsonl", "checkpoint.pt")


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    results: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(table, paper_version, schedule, row): the cell this run belongs to."""
        r = self.results
        return (
            str(r.get("table")),
            str(r.get("paper_version")),
            str(r["schedule"]),
            str(r.get("row")),
        )

    @property
    def seed(self) -> Any:
        return self.results.get("seed", self.config.get("seed"))


@dataclass
class Cell:
    """One row x schedule of one table: its runs' values aggregated over seeds."""

    key: tuple[str, str, str, str]
    metric: str
    values: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    diverged: list[Any] = field(default_factory=list)  # the seeds whose training loss diverged

    @property
    def n(self) -> int:
        return len(self.values) + len(self.diverged)

    def text(self) -> str:
        """``mean (std)``; ``diverged (k of n seeds)`` when any seed diverged (a mean over the
        others would flatter the row)."""
        if self.diverged:
            return f"diverged ({len(self.diverged)} of {self.n} seeds)"
        return mean_std(self.values)

    def loss_text(self) -> str:
        if self.diverged:
            return "–"
        return mean_std(self.losses, digits=4) if self.losses else "–"

    def paper(self) -> str:
        found = paper_results.reported(*self.key[:2], self.key[3], self.key[2])
        return "" if found is None else f"{found[0]:.2f} ({found[1]:.2f})"


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``mean (sample std)`` as in the paper, ``94.21 (0.08)``; ``94.21 (-)`` for one seed."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "-"
    return f"{mean:.{digits}f} ({std})"


def find_run_dirs(patterns: Iterable[str]) -> list[Path]:
    """Run directories named by, or found under, each directory or glob (sorted, unique)."""
    found: set[Path] = set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        else:
            paths = [Path(pattern)]
        if not paths or not any(p.exists() for p in paths):
            raise ValueError(f"no run directory matches {pattern}")
        for path in paths:
            if path.is_file() and path.name in RUN_FILES:  # runs/**/results.json names its run
                found.add(path.parent)
            if not path.is_dir():
                continue
            if any((path / name).exists() for name in RUN_FILES):
                found.add(path)
            else:
                found.update(p.parent for name in RUN_FILES for p in path.rglob(name))
    return sorted(found)


def default_out(patterns: Iterable[str]) -> Path:
    """``report/`` beside the runs: in the folder named, or in the deepest folder holding every
    run directory (or run file) named or matched by ``patterns``."""
    folders = []
    for pattern in patterns:
        matched = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        for path in map(Path, matched):
            if path.is_file():  # runs/**/results.json: its run directory
                path = path.parent
            if any((path / name).exists() for name in RUN_FILES):  # a run: the folder of runs
                path = path.parent
            folders.append(str(path.absolute()))
    out = Path(os.path.commonpath(folders) if folders else ".").absolute() / "report"
    try:
        return out.relative_to(Path.cwd())
    except ValueError:
        return out


def load_run(path: Path) -> Run | str:
    """The run in ``path``, or the reason it cannot be counted."""
    if not (path / "results.json").exists():
        return "unfinished: no epoch completed yet (no results.json)"
    try:
        results = json.loads((path / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable results.json ({type(exc).__name__})"
    if not results.get("finished") and not results.get("diverged"):
        if results.get("max_updates") is not None:
            done, total = results.get("updates_completed"), results["max_updates"]
            return f"unfinished: {done} of {total} updates"
        done, total = results.get("epochs_completed"), results.get("epochs")
        return f"unfinished: {done} of {total} epochs"
    if "schedule" not in results or not results.get("metric"):
        return "results.json lacks schedule/metric (not written by engine.metrics)"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no config.json next to results.json"
    except (OSError, ValueError) as exc:
        return f"unreadable config.json ({type(exc).__name__})"
    history = []
    try:
        text = (path / "metrics.jsonl").read_text(encoding="utf-8")
        history = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError):
        pass  # curves are optional; the table needs only results.json
    return Run(path, config, results, history)


def _flat(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def fingerprint(config: Mapping[str, Any]) -> str:
    """What makes two runs the same experiment: the config without the keys seeds may differ in."""
    # a key a run written before it existed lacks counts as the value it had then
    config = {**cfg.LATER_KEYS, **config}
    kept = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


def _difference(config: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    ours, theirs = (
        _flat({k: v for k, v in {**cfg.LATER_KEYS, **c}.items() if k not in IGNORED_KEYS})
        for c in (config, reference)
    )
    keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    shown = [f"{k}={ours.get(k)!r} (others: {theirs.get(k)!r})" for k in keys[:3]]
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def select(runs: Sequence[Run]) -> tuple[dict[tuple, list[Run]], list[tuple[Path, str]]]:
    """Group runs by cell; keep the most common config per cell and one run per seed."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    kept: dict[tuple, list[Run]] = {}
    skipped: list[tuple[Path, str]] = []
    for key, group in groups.items():
        prints = [fingerprint(r.config) for r in group]
        counts = Counter(prints)
        best = max(counts, key=lambda p: (counts[p], -prints.index(p)))
        reference = group[prints.index(best)].config
        seen: dict[Any, Path] = {}
        for run, fp in zip(group, prints, strict=True):
            if fp != best:
                why = (
                    f"different config from the {counts[best]} other run(s) of "
                    f"{'/'.join(key)}: {_difference(run.config, reference)}"
                )
                skipped.append((run.path, why))
            elif run.seed in seen:
                skipped.append((run.path, f"repeats seed {run.seed} of {seen[run.seed]}"))
            else:
                seen[run.seed] = run.path
                kept.setdefault(key, []).append(run)
    return kept, skipped


def build_cells(groups: Mapping[tuple, list[Run]], pick: str = "best") -> list[Cell]:
    """One :class:`Cell` per group: each run's metric at the best (or last) epoch."""
    cells = []
    for key, group in groups.items():
        cell = Cell(key, metric=group[0].results["metric"])
        for run in sorted(group, key=lambda r: str(r.seed)):
            record = run.results.get(pick) or {}
            if run.results.get("diverged"):
                cell.diverged.append(run.seed)
                cell.seeds.append(run.seed)
                cell.paths.append(run.path)
                continue
            if record.get(cell.metric) is None:
                continue
            cell.values.append(float(record[cell.metric]))
            final = run.results.get("final") or {}
            loss = next((final[k] for k in LOSS_KEYS if final.get(k) is not None), None)
            if loss is not None:
                cell.losses.append(float(loss))
            cell.seeds.append(run.seed)
            cell.paths.append(run.path)
        cells.append(cell)
    return cells


def _order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    names = set(names)
    return [n for n in preferred if n in names] + sorted(names - set(preferred))


def table_layout(cells: Sequence[Cell], groups: Mapping[tuple, list[Run]]) -> list[dict]:
    """Per (table, version): its rows and schedules in the config file's order, and its cells."""
    layouts = []
    for table, version in dict.fromkeys(c.key[:2] for c in cells):
        mine = {(c.key[3], c.key[2]): c for c in cells if c.key[:2] == (table, version)}
        rows_pref: list[str] = []
        scheds_pref: list[str] = []
        for (t, v, _, _), group in groups.items():
            if (t, v) == (table, version):
                for run in group:
                    rows_pref += _table_order(run.config.get("config"), "rows")
                    scheds_pref += _table_order(run.config.get("config"), "schedules")
        paper = paper_results.PAPER.get((table, version))
        if paper:
            rows_pref = list(paper.cells) + rows_pref
        layouts.append(
            {
                "table": table,
                "version": version,
                "paper": paper,
                "cells": mine,
                "rows": _order((r for r, _ in mine), list(dict.fromkeys(rows_pref))),
                "schedules": _order((s for _, s in mine), list(dict.fromkeys(scheds_pref))),
                "metric": next(iter(mine.values())).metric,
            }
        )
    return layouts


_ORDER_CACHE: dict[tuple[str, str], list[str]] = {}


def _table_order(config_path: str | None, section: str) -> list[str]:
    """Row or schedule names in the table file's order, when the file is still readable."""
    if not config_path:
        return []
    if (config_path, section) not in _ORDER_CACHE:
        from engine import config as cfg

        try:
            _ORDER_CACHE[(config_path, section)] = list(cfg.load_table(config_path)[section])
        except ValueError:
            _ORDER_CACHE[(config_path, section)] = []
    return _ORDER_CACHE[(config_path, section)]


def _columns(layout: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(schedule, what, heading) for every column after the row name."""
    cols = []
    for s in layout["schedules"]:
        cols.append((s, "value", s))
        if layout["paper"]:
            cols.append((s, "paper", f"{s} (paper)"))
        cols += [(s, "loss", f"{s}: final train loss"), (s, "n", f"{s}: seeds")]
    return cols


def _value(layout: Mapping[str, Any], row: str, sched: str, what: str) -> str:
    cell = layout["cells"].get((row, sched))
    if what == "paper":
        found = paper_results.reported(layout["table"], layout["version"], row, sched)
        return "" if found is None else f"{found[0]:.2f} ({found[1]:.2f})"
    if cell is None:
        return "–"
    return {"value": cell.text, "loss": cell.loss_text, "n": lambda: str(cell.n)}[what]()


def caption(layout: Mapping[str, Any], pick: str) -> str:
    name = METRIC_NAMES.get(layout["metric"], layout["metric"])
    epoch = "best epoch" if pick == "best" else "last epoch"
    if layout["metric"] == "bleu":  # nmt.evaluate's score, the same under either pick
        epoch = "checkpoints nmt.evaluate scored (the run's last epochs, averaged)"
    source = (
        f"; the paper's numbers: {layout['paper'].title}"
        if layout["paper"]
        else "; the paper has no such table"
    )
    return (
        f"{layout['table']} (paper version {layout['version']}): {name} at the {epoch}, "
        f"mean (sample std) over seeds{source}"
    )


def markdown(layouts: Sequence[Mapping[str, Any]], pick: str) -> str:
    parts = []
    for lay in layouts:
        cols = _columns(lay)
        lines = [
            f"**{caption(lay, pick)}**",
            "",
            "| Method | " + " | ".join(h for _, _, h in cols) + " |",
            "|---" + "|---:" * len(cols) + "|",
        ]
        for row in lay["rows"]:
            values = [_value(lay, row, s, w) or "–" for s, w, _ in cols]
            lines.append(f"| {row} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _tex(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("–", "--"),
    ):
        text = text.replace(a, b)
    return text


def latex(layouts: Sequence[Mapping[str, Any]], pick: str) -> str:
    parts = []
    for lay in layouts:
        cols = _columns(lay)
        head = " & ".join(["Method", *(_tex(h) for _, _, h in cols)])
        body = [
            " & ".join([_tex(row), *(_tex(_value(lay, row, s, w) or "--") for s, w, _ in cols)])
            + r" \\"
            for row in lay["rows"]
        ]
        parts.append(
            "\n".join(
                [
                    "\\begin{table}[t]",
                    "\\centering",
                    f"\\caption{{{_tex(caption(lay, pick))}}}",
                    f"\\begin{{tabular}}{{l{'r' * len(cols)}}}",
                    "\\toprule",
                    head + r" \\",
                    "\\midrule",
                    *body,
                    "\\bottomrule",
                    "\\end{tabular}",
                    "\\end{table}",
                ]
            )
        )
    return "% requires \\usepackage{booktabs}\n" + "\n\n".join(parts) + "\n"


CSV_FIELDS = (
    "table",
    "paper_version",
    "schedule",
    "row",
    "metric",
    "pick",
    "n",
    "seeds",
    "mean",
    "std",
    "cell",
    "paper",
    "train_loss_mean",
    "train_loss_std",
    "run_dirs",
)


def write_csv(path: Path, cells: Sequence[Cell], pick: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for c in cells:
            table, version, sched, row = c.key
            sd = statistics.stdev(c.values) if len(c.values) > 1 and not c.diverged else None
            loss_sd = statistics.stdev(c.losses) if len(c.losses) > 1 else None
            writer.writerow(
                {
                    "table": table,
                    "paper_version": version,
                    "schedule": sched,
                    "row": row,
                    "metric": c.metric,
                    "pick": pick,
                    "n": c.n,
                    "seeds": " ".join(str(s) for s in c.seeds),
                    "mean": statistics.fmean(c.values) if c.values and not c.diverged else "",
                    "std": sd,
                    "cell": c.text(),
                    "paper": c.paper(),
                    "train_loss_mean": statistics.fmean(c.losses) if c.losses else "",
                    "train_loss_std": loss_sd,
                    "run_dirs": ";".join(str(p) for p in c.paths),
                }
            )


def report(
    patterns: Sequence[str], out: str | Path, pick: str = "best", plots: bool = True
) -> dict[str, Any]:
    """Find, select, aggregate and write; returns the cells, skipped runs and written files."""
    dirs = find_run_dirs(patterns)
    runs, skipped = [], []
    for path in dirs:
        loaded = load_run(path)
        if isinstance(loaded, Run):
            runs.append(loaded)
        else:
            skipped.append((path, loaded))
    groups, rejected = select(runs)
    skipped += rejected
    cells = [c for c in build_cells(groups, pick) if c.values or c.diverged]
    out = Path(out)
    written: list[Path] = []
    text = ""
    if cells:
        layouts = table_layout(cells, groups)
        out.mkdir(parents=True, exist_ok=True)
        text = markdown(layouts, pick)
        notes = "".join(f"- `{p}`: {why}\n" for p, why in skipped)
        md = text + (f"\nSkipped run directories:\n\n{notes}" if notes else "")
        (out / "table.md").write_text(md, encoding="utf-8")
        (out / "table.tex").write_text(latex(layouts, pick), encoding="utf-8")
        ordered = [
            lay["cells"][(r, s)]
            for lay in layouts
            for r in lay["rows"]
            for s in lay["schedules"]
            if (r, s) in lay["cells"]
        ]
        write_csv(out / "table.csv", ordered, pick)
        written += [out / "table.md", out / "table.tex", out / "table.csv"]
        if plots:
            from scripts.plot_curves import plot_groups

            written += plot_groups(groups, out, layouts)
    return {
        "cells": cells,
        "skipped": skipped,
        "written": written,
        "markdown": text,
        "run_dirs": dirs,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m scripts.report", description=__doc__)
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR_OR_GLOB",
        help="run directories, folders searched for them, or globs of either",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: report/ beside the runs, e.g. runs/cifar10/report)",
    )
    p.add_argument(
        "--pick",
        choices=("best", "final"),
        default="best",
        help="each run's metric at its best epoch (the paper's) or last",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG curves")
    args = p.parse_args(argv)
    find_run_dirs(args.runs)  # a pattern that matches nothing: one line, before any default
    out = args.out if args.out is not None else default_out(args.runs)
    result = report(args.runs, out, args.pick, plots=not args.no_plots)
    print(result["markdown"], end="")
    if result["skipped"]:
        print(f"\nskipped {len(result['skipped'])} run directories:")
        for path, why in result["skipped"]:
            print(f"  {path}: {why}")
    if not result["cells"]:
        raise ValueError(f"no finished runs among {len(result['run_dirs'])} run directories")
    print("\nwrote " + ", ".join(str(p) for p in result["written"]))


if __name__ == "__main__":
    cli.main(main)
