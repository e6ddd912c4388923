"""Rows x schedules x seeds of one table as training commands: what ``scripts/<table>.sh`` runs.

::

    python -m scripts.sweep (--config configs/cifar10.yaml | --table cifar10 [--version v1])
        [--rows SGD,Apollo] [--schedules cosine] [--seeds N | --seed-list 1,101] [--gpus N]
        [--jobs-per-gpu N] [--data-dir D] [--out-root runs] [--plugin MODULE_OR_PATH ...]
        [--dry-run] [-- key=value ...]

``--table T --version V`` is ``configs/T.yaml`` for the current paper version and
``configs/V/T.yaml`` otherwise (``scripts/<table>.sh`` passes ``--table``). ``--seeds N`` is a
count, the first N seeds of the table's list, as in ``scripts/quickstart.sh``;
``--seed-list`` names seeds.

Rows, schedules and seeds come from the table (one source of truth); each run gets its own
directory ``<out-root>/<table>/<paper_version>/<row>/<schedule>/seed<N>``. Every run's config is
resolved before the first one starts, so a bad ``key=value`` or an unknown optimizer is one
error line, not one per run. Re-running the sweep skips runs that finished with this length
(``engine.run.finished_results``) and resumes the others. The runs go one after another; the
first that fails stops the sweep (its own one-line error is above the stop line). ``--gpus N``
> 1 launches each run with ``torchrun --standalone --nproc_per_node=N``; ``--gpus 0`` trains on
the CPU. ``--jobs-per-gpu N`` runs N of them side by side on each GPU instead of one after
another (``scripts.gpu_slots``: a small model leaves most of a large GPU idle).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import cli
from engine import config as cfg
from scripts import gpu_slots

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Job:
    """One run of a sweep: its command line, run directory and resolved config."""

    command: list[str]
    run_dir: Path
    config: dict[str, Any]

    @property
    def label(self) -> str:
        return (
            f"{self.config['row']} / {self.config['schedule']['name']} / seed {self.config['seed']}"
        )

    def finished(self) -> dict[str, Any] | None:
        """The run's results.json when it finished with this length, else None."""
        from engine.run import finished_results  # torch: only when runs are started

        return finished_results(self.run_dir, self.config)


def table_path(table: str, version: str = "current", configs_root: Path | None = None) -> Path:
    """The file of ``table`` in paper ``version``: ``configs/T.yaml`` or ``configs/V/T.yaml``
    (relative to the working directory when run from the repository root, as the scripts do)."""
    name = f"{table}.yaml" if version == "current" else f"{version}/{table}.yaml"
    roots = [Path(configs_root)] if configs_root else [Path("configs"), CONFIGS]
    for root in roots:
        if (root / name).is_file():
            return root / name
    root = roots[-1]
    versions = (
        ["current", *sorted(p.name for p in root.iterdir() if p.is_dir())]
        if (root.is_dir())
        else []
    )
    raise ValueError(
        f"no config {root / name} for table {table!r} version {version!r}; "
        f"versions: {', '.join(versions)}"
    )


def pick_seeds(table: dict[str, Any], count: int | None, listed: str | None) -> list[int]:
    """``count`` (the first N of the table's seeds) or the ``listed`` seeds, else all of them."""
    seeds = table["seeds"]
    if count is not None and listed:
        raise ValueError("pass --seeds N (a count) or --seed-list (seeds), not both")
    if count is not None:
        if not 1 <= count <= len(seeds):
            raise ValueError(
                f"--seeds is a count, 1..{len(seeds)} (the table's seeds: {seeds}), "
                f"got {count}; name seeds with --seed-list"
            )
        return seeds[:count]
    if listed:
        try:
            return [int(x) for x in listed.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"--seed-list must be integers separated by commas, got {listed!r}"
            ) from None
    if not seeds:
        raise ValueError(f"{table['_path']}: the table lists no seeds; pass --seed-list")
    return seeds


def plan(
    config_path: str | Path,
    *,
    rows: Sequence[str] | None = None,
    schedules: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    gpus: int = 1,
    data_dir: str | None = None,
    out_root: str | Path = "runs",
    python: str | None = None,
    plugins: Sequence[str] = (),
    extra: Sequence[str] = (),
    check_optimizers: bool = True,
) -> list[Job]:
    """Every run of the table (``rows`` x ``schedules`` x ``seeds``, default: all of them) in
    table order, each resolved as its training command would resolve it (plugins loaded, so a
    plugin's optimizer is known); ``ValueError`` on the first bad run, before any starts.
    ``check_optimizers`` looks each optimizer up in the registry (which imports torch)."""
    if gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    table = cfg.load_table(config_path)
    path = table["_path"]
    rows = _subset(rows, cfg.row_names(table), "rows", path)
    schedules = _subset(schedules, cfg.schedule_names(table), "schedules", path)
    seeds = list(seeds) if seeds is not None else pick_seeds(table, None, None)
    schema = task_schema(table["task"])
    launch = (
        ["torchrun", "--standalone", f"--nproc_per_node={gpus}"]
        if gpus > 1
        else [python or sys.executable]
    )
    parser = cli.build_parser(f"python -m {table['task']}.train")
    jobs = []
    for row in rows:
        for schedule in schedules:
            for seed in seeds:
                args = [
                    "--config",
                    path,
                    "--row",
                    row,
                    "--schedule",
                    schedule,
                    "--seed",
                    str(seed),
                    *(x for p in plugins for x in ("--plugin", p)),
                ]
                ident = {
                    "table": table.get("table", Path(path).stem),
                    "row": row,
                    "seed": seed,
                    "paper_version": table.get("paper_version", "current"),
                    "schedule": {"name": schedule},
                }
                run_dir = Path(cli.default_out_dir(ident, root=str(out_root)))
                args += ["--out-dir", str(run_dir)]
                if data_dir:
                    args += ["--data-dir", data_dir]
                if gpus == 0:
                    args += ["--device", "cpu"]
                args += list(extra)
                parsed = parser.parse_args(args)
                parsed.device = parsed.device or "cpu"  # no check depends on it (nor on torch)
                config = cli.resolve_args(parsed, schema, table)
                if check_optimizers:
                    import apollo_optim as optim

                    optim.get(config["optimizer"]["name"])  # an unknown name: one line, now
                jobs.append(Job([*launch, "-m", f"{table['task']}.train", *args], run_dir, config))
    return jobs


def task_schema(task: str) -> Any:
    """The task's config schema: ``<task>.schema.SCHEMA`` (no torch), else ``<task>.train``'s."""
    try:
        return importlib.import_module(f"{task}.schema").SCHEMA
    except ModuleNotFoundError as exc:
        if exc.name != f"{task}.schema":
            raise
        return importlib.import_module(f"{task}.train").SCHEMA


def _subset(given: Sequence[str] | None, available: list[str], what: str, path: str) -> list[str]:
    if not given:
        return available
    unknown = [x for x in given if x not in available]
    if unknown:
        raise ValueError(f"{path}: unknown {what} {unknown}; {what}: {', '.join(available)}")
    return list(given)


def _names(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def plan_parsed(
    args: argparse.Namespace, path: str | Path, *, gpus: int, data_dir: str | None = None
) -> list[Job]:
    """:func:`plan` for the options of :func:`build_parser` (plugins loaded first)."""
    table = cfg.load_table(path)
    for plugin in args.plugin:
        cli.load_plugin(plugin)
    return plan(
        path,
        rows=_names(args.rows),
        schedules=_names(args.schedules),
        seeds=pick_seeds(table, args.seeds, args.seed_list),
        gpus=gpus,
        data_dir=data_dir,
        out_root=args.out_root,
        plugins=args.plugin,
        python="python" if args.dry_run else None,
        extra=args.extra,
        check_optimizers=not args.dry_run,
    )


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The options shared by the sweep and ``scripts.run_table`` (table, subsets, seeds)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--config", help="a table file")
    p.add_argument("--rows", help="comma-separated subset of the table's rows")
    p.add_argument("--schedules", help="comma-separated subset of the table's schedules")
    p.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="the first N seeds of the table's list (default: all)",
    )
    p.add_argument("--seed-list", metavar="S1,S2", help="these seeds instead, e.g. 1,101")
    p.add_argument("--out-root", default="runs", help="default: runs")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_PATH",
        help="passed to every run: a module that registers an optimizer",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("extra", nargs="*", help="passed to every run (after --), e.g. key=value")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python -m scripts.sweep"
    if argv[:1] == ["--prog"]:  # scripts/<table>.sh names itself in --help and errors
        prog, argv = argv[1], argv[2:]
    p = build_parser(prog)
    p.add_argument("--table", help="a table name, e.g. cifar10 (instead of --config)")
    p.add_argument("--version", default="current", help="paper version of --table: current, v1")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per run (0: CPU; default 1)")
    p.add_argument("--data-dir", help="passed to every run")
    p.add_argument(
        "--jobs-per-gpu",
        type=int,
        metavar="N",
        help="N runs side by side on each GPU (scripts/gpu_slots.py)",
    )
    args = p.parse_args(argv)
    if not args.config and not args.table:
        raise ValueError(f"{prog}: pass --config FILE or --table NAME")
    path = args.config or table_path(args.table, args.version)
    jobs = plan_parsed(args, path, gpus=args.gpus, data_dir=args.data_dir)
    if args.dry_run:
        for job in jobs:
            print(shlex.join(job.command))
        return
    if args.jobs_per_gpu is not None:
        slot_gpus = gpu_slots.slots(gpu_slots.visible_gpus(), args.jobs_per_gpu, args.gpus)
        todo = [job for job in jobs if not job.finished()]
        print(
            f"{len(jobs)} runs ({len(jobs) - len(todo)} finished already), up to "
            f"{len(slot_gpus)} at a time on GPU(s) {', '.join(sorted(set(slot_gpus)))}; each "
            "run's output: <run dir>/stdout.log",
            flush=True,
        )
        code = gpu_slots.run_jobs(todo, slot_gpus)
        if code:
            print(f"{prog}: stopped by the failed run above", file=sys.stderr)
            sys.exit(code)
        return
    for i, job in enumerate(jobs, 1):
        if job.finished():
            print(f"[{i}/{len(jobs)}] finished already: {job.run_dir}", flush=True)
            continue
        print(f"[{i}/{len(jobs)}] {shlex.join(job.command)}", flush=True)
        code = subprocess.run(job.command).returncode
        if code != 0:
            print(
                f"{prog}: stopped: {job.label} exited with status {code} (its error is "
                f"above); {len(jobs) - i} run(s) not started",
                file=sys.stderr,
            )
            sys.exit(code if 0 < code < 128 else 1)


if __name__ == "__main__":
    cli.main(main)
