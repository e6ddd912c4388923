"""Rows x schedules x seeds of one table as training commands: what ``scripts/<table>.sh`` runs.

::

    python -m engine.sweep (--config configs/cifar10.yaml | --table cifar10 [--version v1])
        [--rows SGD,Apollo] [--schedules cosine] [--seeds 1,101] [--gpus N] [--data-dir D]
        [--out-root runs] [--dry-run] [-- key=value ...]

``--table T --version V`` is ``configs/T.yaml`` for the current paper version and
``configs/V/T.yaml`` otherwise (``scripts/<table>.sh`` passes ``--table``).

Rows, schedules and seeds come from the table (one source of truth); each run gets its own
directory ``<out-root>/<table>/<paper_version>/<row>/<schedule>/seed<N>``, so re-running the
sweep resumes unfinished runs and skips finished ones. ``--gpus N`` > 1 launches each run with
``torchrun --standalone --nproc_per_node=N``; ``--gpus 0`` trains on the CPU.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import cli
from . import config as cfg


def _pick(given: str | None, available: list, what: str, path: str, cast: type = str) -> list:
    if not given:
        return available
    picked = [cast(x.strip()) for x in given.split(",") if x.strip()]
    unknown = [x for x in picked if x not in available and cast is str]
    if unknown:
        raise ValueError(f"{path}: unknown {what} {unknown}; {what}: {', '.join(available)}")
    return picked


def table_path(args: argparse.Namespace) -> Path:
    """``--config`` as given, or the file of ``--table`` in ``--version``."""
    if args.config:
        return Path(args.config)
    if not args.table:
        raise ValueError("pass --config FILE or --table NAME")
    root = Path(args.configs_root)
    path = (
        root / f"{args.table}.yaml"
        if args.version == "current"
        else root / args.version / f"{args.table}.yaml"
    )
    if not path.is_file():
        versions = (
            ["current", *sorted(p.name for p in root.iterdir() if p.is_dir())]
            if root.is_dir()
            else []
        )
        raise ValueError(
            f"no config {path} for table {args.table!r} version {args.version!r}; "
            f"versions: {', '.join(versions)}"
        )
    return path


def commands(args: argparse.Namespace) -> list[tuple[list[str], Path]]:
    """Each run's command line and run directory, in table order (row, schedule, seed)."""
    table = cfg.load_table(table_path(args))
    path = table["_path"]
    rows = _pick(args.rows, cfg.row_names(table), "rows", path)
    schedules = _pick(args.schedules, cfg.schedule_names(table), "schedules", path)
    seeds = _pick(args.seeds, table["seeds"], "seeds", path, cast=int)
    if not seeds:
        raise ValueError(f"{path}: the table lists no seeds; pass --seeds")
    if args.gpus > 1:
        launch = ["torchrun", "--standalone", f"--nproc_per_node={args.gpus}"]
    else:
        launch = [args.python or ("python" if args.dry_run else sys.executable)]
    out = []
    for row in rows:
        for schedule in schedules:
            for seed in seeds:
                ident = {"table": table.get("table", Path(path).stem), "row": row, "seed": seed,
                         "paper_version": table.get("paper_version", "current"),
                         "schedule": {"name": schedule}}  # fmt: skip
                run_dir = Path(cli.default_out_dir(ident, root=args.out_root))
                cmd = [*launch, "-m", f"{table['task']}.train", "--config", path,
                       "--row", row, "--schedule", schedule, "--seed", str(seed),
                       "--out-dir", str(run_dir)]  # fmt: skip
                if args.data_dir:
                    cmd += ["--data-dir", args.data_dir]
                if args.gpus == 0:
                    cmd += ["--device", "cpu"]
                out.append((cmd + list(args.extra), run_dir))
    return out


def _finished(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / "results.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def run(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m engine.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="a table file")
    p.add_argument("--table", help="a table name, e.g. cifar10 (instead of --config)")
    p.add_argument("--version", default="current", help="paper version of --table: current, v1")
    p.add_argument("--configs-root", default="configs", help=argparse.SUPPRESS)
    p.add_argument("--rows", help="comma-separated subset of the table's rows")
    p.add_argument("--schedules", help="comma-separated subset of the table's schedules")
    p.add_argument("--seeds", help="comma-separated seeds (default: the table's list)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per run (0: CPU)")
    p.add_argument("--data-dir")
    p.add_argument("--out-root", default="runs")
    p.add_argument("--python", help="interpreter for single-process runs (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("extra", nargs="*", help="passed to every run (after --), e.g. key=value")
    args = p.parse_args(argv)
    if args.gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {args.gpus}")
    plan = commands(args)
    if args.dry_run:
        for cmd, _ in plan:
            print(shlex.join(cmd))
        return
    failed = []
    for i, (cmd, run_dir) in enumerate(plan, 1):
        if _finished(run_dir):
            print(f"[{i}/{len(plan)}] finished already: {run_dir}", flush=True)
            continue
        print(f"[{i}/{len(plan)}] {shlex.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(str(run_dir))
    if failed:
        raise ValueError(f"{len(failed)} of {len(plan)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    cli.main(run)
