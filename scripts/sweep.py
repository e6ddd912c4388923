"""Rows x schedules x seeds of one table as training commands: what ``scripts/<table>.sh`` runs.

::

    python -m scripts.sweep (--config configs/cifar10.yaml | --table cifar10 [--version v1])
        [--rows SGD,Apollo] [--schedules cosine] [--seeds N | --seed-list 1,101] [--gpus N]
        [--jobs-per-gpu N] [--data-dir D] [--out-dir runs] [--epochs N] [--max-updates N]
        [--plugin MODULE_OR_PATH ...] [--dry-run] [-- key=value ...]

``--table T --version V`` is ``configs/T.yaml`` of this repository for the current paper
version and ``configs/V/T.yaml`` otherwise; ``scripts/T.sh`` is this command with ``--table T``
fixed (``--help`` then prints the script's own header). ``--seeds N`` is a count, the first N
seeds of the table's list (default: the table's ``default_seeds``, else all); ``--seed-list``
names seeds.

Rows, schedules and seeds come from the table (one source of truth); each run gets its own
directory ``<out-dir>/<table>/<paper_version>/<row>/<schedule>/seed<N>``. Every path is taken
relative to the directory the command is run from. Every run's config is resolved before the
first one starts, so a bad ``key=value`` or an unknown optimizer is one error line, not one per
run. Re-running the sweep skips runs that finished with this length (or diverged: a run whose
training loss became non-finite records it and exits normally, and the sweep goes on) and
resumes the others. The runs go one after another; the first that fails stops the sweep (its
own one-line error is above the stop line). A task with an evaluation entry point
(``nmt.evaluate``) then has every finished run of the table evaluated.

Where runs execute is said in one line before they start: ``--gpus N`` GPUs per run (``N > 1``
launches each run with ``torchrun --standalone --nproc_per_node=N``; no GPU visible is an
error), ``--gpus 0`` the CPU; by default one GPU per run when torch sees one, else the CPU.
``--jobs-per-gpu N`` runs N of them side by side on each GPU instead of one after another
(``scripts.gpu_slots``: a small model leaves most of a large GPU idle).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import cli
from engine import config as cfg
from scripts import gpu_slots, slurm

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


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
        """The run's results.json when it finished (or diverged) with this length, else None."""
        from engine.run import finished_results  # torch: only when runs are started

        return finished_results(self.run_dir, self.config)


def table_path(table: str, version: str = "current") -> Path:
    """This repository's file of ``table`` in paper ``version``: ``configs/T.yaml`` or
    ``configs/V/T.yaml``."""
    name = f"{table}.yaml" if version == "current" else f"{version}/{table}.yaml"
    if (CONFIGS / name).is_file():
        return CONFIGS / name
    older = sorted(p.name for p in CONFIGS.iterdir() if (p / f"{table}.yaml").is_file())
    versions = ["current", *older]
    tables = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    raise ValueError(
        f"no config {CONFIGS / name} for table {table!r} version {version!r}; "
        f"tables: {', '.join(tables)}; versions: {', '.join(versions)}"
    )


def shown(path: str | Path) -> str:
    """``path`` as a command line shows it: relative to the working directory when inside it,
    else absolute (the commands run in this directory, whichever it is)."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def pick_seeds(table: dict[str, Any], count: int | None, listed: str | None) -> list[int]:
    """``count`` (the first N of the table's seeds) or the ``listed`` seeds, else the table's
    ``default_seeds`` first ones, else all of them."""
    seeds = table["seeds"]
    if count is not None and listed:
        raise ValueError("pass --seeds N (a count) or --seed-list (seeds), not both")
    if listed:
        try:
            return [int(x) for x in listed.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"--seed-list must be integers separated by commas, got {listed!r}"
            ) from None
    if not seeds:
        raise ValueError(f"{table['_path']}: the table lists no seeds; pass --seed-list")
    if count is None:
        count = table.get("default_seeds") or len(seeds)
    if not 1 <= count <= len(seeds):
        raise ValueError(
            f"--seeds is a count, 1..{len(seeds)} (the table's seeds: {seeds}), "
            f"got {count}; name seeds with --seed-list"
        )
    return seeds[:count]


def plan(
    config_path: str | Path,
    *,
    rows: Sequence[str] | None = None,
    schedules: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    gpus: int = 0,
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
    ``gpus`` per run: 0 trains on the CPU, 1 on a GPU, more under ``torchrun``.
    ``check_optimizers`` holds each optimizer section to the registered optimizer's signature
    (which imports torch)."""
    if gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    table = cfg.load_table(config_path)
    path = shown(config_path)
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
                args += ["--device", "cuda" if gpus else "cpu"]
                args += list(extra)
                parsed = parser.parse_args(args)
                config = cli.resolve_args(parsed, schema, table, check_optimizer=check_optimizers)
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


def evaluation_args(
    task: str, run_dirs: Sequence[str | Path], *, data_dir: str | None, gpus: int
) -> list[str] | None:
    """``<task>.evaluate``'s arguments for ``run_dirs`` (each a run or a folder of runs), or
    None for a task whose runs need no evaluation after training (no ``evaluate`` module)."""
    if importlib.util.find_spec(f"{task}.evaluate") is None:
        return None
    args = ["--run-dir", *map(str, run_dirs)]
    if data_dir:
        args += ["--data-dir", data_dir]
    return [*args, "--device", "cuda" if gpus else "cpu"]


def gpus_per_run(
    requested: int | None, *, check: bool = True, visible: Callable[[], int] | None = None
) -> tuple[int, str]:
    """GPUs per run and the line that says where the runs execute. ``requested`` None: one GPU
    when torch sees one, else the CPU; more than torch sees is an error (``check``), never a
    silent fall back to the CPU."""
    if requested is not None and requested < 0:
        raise ValueError(f"--gpus must be >= 0, got {requested}")
    if requested == 0:
        return 0, "each run on the CPU (--gpus 0)"
    how = "one process" if requested == 1 else f"torchrun --nproc_per_node={requested}"
    if requested is not None and not check:
        return requested, f"each run on {requested} GPU(s), {how} (not checked: a dry run)"
    count = (visible or _visible_gpus)()
    if requested is None:
        if count:
            return 1, (
                f"each run on 1 GPU ({count} visible; --gpus N for N per run, "
                "--jobs-per-gpu N for N runs on each)"
            )
        return 0, "no GPU visible to torch: each run on the CPU (--gpus N asks for GPUs)"
    if requested > count:
        raise ValueError(
            f"--gpus {requested}: torch sees {count} GPU(s) here "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
            "--gpus 0 trains on the CPU"
        )
    return requested, f"each run on {requested} GPU(s), {how} ({count} visible)"


def _visible_gpus() -> int:
    if importlib.util.find_spec("torch") is None:  # a dry run's Python may lack it: no GPU
        return 0
    import torch

    return torch.cuda.device_count()


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
    lengths = [
        x
        for flag, value in (("--epochs", args.epochs), ("--max-updates", args.max_updates))
        if value is not None
        for x in (flag, str(value))
    ]
    return plan(
        path,
        rows=_names(args.rows),
        schedules=_names(args.schedules),
        seeds=pick_seeds(table, args.seeds, args.seed_list),
        gpus=gpus,
        data_dir=data_dir,
        out_root=args.out_dir,
        plugins=args.plugin,
        python="python" if args.dry_run else None,
        extra=[*lengths, *args.extra],
        check_optimizers=not args.dry_run,
    )


def build_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """The options shared by the sweep and ``scripts.run_table`` (table, subsets, seeds)."""
    p = cli.ArgumentParser(prog=prog, description=description or __doc__)
    p.add_argument(
        "--config", metavar="FILE", help="a table file, e.g. one that extends configs/<table>.yaml"
    )
    p.add_argument("--rows", metavar="R1,R2", help="a subset of the table's rows")
    p.add_argument("--schedules", metavar="S1,S2", help="a subset of the table's schedules")
    p.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="the first N seeds of the table's list (default: its default_seeds, else all)",
    )
    p.add_argument("--seed-list", metavar="S1,S2", help="these seeds instead, e.g. 1,101")
    p.add_argument(
        "--out-dir",
        "--out-root",
        dest="out_dir",
        default="runs",
        metavar="DIR",
        help="runs go to DIR/<table>/<version>/<row>/<schedule>/seed<N> (default: runs)",
    )
    p.add_argument("--epochs", type=int, metavar="N", help="every run's length in epochs")
    p.add_argument(
        "--max-updates", type=int, metavar="N", help="every run's length in optimizer updates"
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_PATH",
        help="passed to every run: a module that registers an optimizer (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument(
        "extra",
        nargs="*",
        metavar="-- ARG",
        help="after --: passed to every run, e.g. amp=bf16 or --compile default",
    )
    return p


def script_parser(
    argv: list[str], runner: str, doc: str, add_options: Callable[[argparse.ArgumentParser], None]
) -> tuple[argparse.ArgumentParser, str | None, list[str]]:
    """The parser of ``python -m scripts.<runner>`` (``doc`` its help), or of ``scripts/<T>.sh``
    when ``argv`` starts with ``--script T`` (what the shell script passes): then ``--help``
    prints the script's header comment and the table is fixed. Returns (parser, T or None,
    the rest of ``argv``)."""
    script = None
    if argv[:1] == ["--script"] and len(argv) > 1:
        script, argv = argv[1], argv[2:]
    if script is None:
        p = build_parser(f"python -m scripts.{runner}", doc)
        p.add_argument("--table", help="a table of configs/ by name, e.g. cifar10 (or --config)")
    else:
        p = build_parser(f"bash scripts/{script}.sh", _header(REPO / "scripts" / f"{script}.sh"))
        p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument(
        "--version", default="current", help="paper version of the table: current (default), v1"
    )
    add_options(p)
    return p, script, argv


def table_file(args: argparse.Namespace, prog: str, script: str | None) -> Path:
    """The table a runner's options name: ``--config``, else ``--table``/``--version``; a
    table script refuses another table (it would run it under the script's name)."""
    if script is not None:
        if args.table:
            raise ValueError(
                f"{prog} runs the {script} table; for {args.table}: bash scripts/{args.table}.sh"
            )
        if args.config:
            named = cfg.load_table(args.config).get("table")
            if named != script:
                raise ValueError(
                    f"{prog} runs the {script} table; {args.config} is table {named!r} "
                    f"(python -m scripts.sweep --config {args.config} runs any table)"
                )
            return Path(args.config)
        return table_path(script, args.version)
    if args.config and args.table:
        raise ValueError(f"{prog}: pass --config FILE or --table NAME, not both")
    if args.config:
        return Path(args.config)
    if args.table:
        return table_path(args.table, args.version)
    raise ValueError(f"{prog}: pass --config FILE or --table NAME")


def _header(script: Path) -> str:
    """The comment block at the top of a shell script (below its shebang), without ``#``."""
    lines = []
    for line in script.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--gpus",
            type=int,
            metavar="N",
            help="GPUs per run: 0 the CPU, >1 torchrun (default: 1 if torch sees a GPU, else 0)",
        )
        p.add_argument("--data-dir", metavar="DIR", help="passed to every run")
        p.add_argument(
            "--jobs-per-gpu",
            type=int,
            metavar="N",
            help="N runs side by side on each GPU (scripts/gpu_slots.py)",
        )
        slurm.add_options(p)
        p.add_argument(
            "--wait", action="store_true", help="with --launcher slurm: until every run ends"
        )

    p, script, rest = script_parser(
        list(sys.argv[1:] if argv is None else argv), "sweep", __doc__, options
    )
    args = p.parse_args(rest)
    path = table_file(args, p.prog, script)
    table = cfg.load_table(path)
    if args.launcher == "slurm":
        launch_on_slurm(args, path, table)
        return
    # a dry run may print the commands of another machine: its --gpus is not checked here
    gpus, where = gpus_per_run(args.gpus, check=not args.dry_run)
    jobs = plan_parsed(args, path, gpus=gpus, data_dir=args.data_dir)
    out = Path(args.out_dir, table.get("table", path.stem), table.get("paper_version", "current"))
    evaluate = evaluation_args(table["task"], [out], data_dir=args.data_dir, gpus=gpus)
    evaluate = evaluate and [
        "python" if args.dry_run else sys.executable,
        "-m",
        f"{table['task']}.evaluate",
        *evaluate,
    ]
    if args.dry_run:
        print(where, file=sys.stderr)
        for job in jobs:
            print(shlex.join(job.command))
        if evaluate:
            print(shlex.join(evaluate))
        return
    print(where, flush=True)
    run_jobs(jobs, args, gpus, p.prog)
    if evaluate:
        print(shlex.join(evaluate), flush=True)
        code = subprocess.run(evaluate).returncode
        if code:
            sys.exit(code if 0 < code < 128 else 1)


def launch_on_slurm(args: argparse.Namespace, path: Path, table: dict[str, Any]) -> None:
    """The table as a SLURM job array (``scripts.slurm``); the GPUs are the cluster's, not
    this machine's. An evaluation entry point is left to run once the runs are done."""
    if args.jobs_per_gpu is not None:
        raise ValueError("--jobs-per-gpu runs on this machine; not with --launcher slurm")
    gpus = args.gpus_per_run if args.gpus_per_run is not None else args.gpus
    gpus = 1 if gpus is None else gpus
    if gpus < 0:
        raise ValueError(f"--gpus-per-run must be >= 0, got {gpus}")
    # SLURM starts the ranks: no torchrun
    jobs = plan_parsed(args, path, gpus=min(gpus, 1), data_dir=args.data_dir)
    folder = Path(args.out_dir, table.get("table", path.stem))
    unfinished = slurm.launch(jobs, args, folder, dry_run=args.dry_run, wait=args.wait)
    if unfinished:
        raise ValueError(
            f"{unfinished} run(s) did not finish: python -m scripts.status {shown(folder)}"
        )
    out = folder / table.get("paper_version", "current")
    evaluate = evaluation_args(table["task"], [out], data_dir=args.data_dir, gpus=1)
    if evaluate:
        command = shlex.join(["python", "-m", f"{table['task']}.evaluate", *evaluate])
        print(f"once every run has finished, evaluate them: {command}", flush=True)


def run_jobs(jobs: Sequence[Job], args: argparse.Namespace, gpus: int, prog: str) -> None:
    """The sweep's runs, one after another or ``--jobs-per-gpu`` at a time; exits with the
    first failed run's status."""
    if args.jobs_per_gpu is not None:
        slot_gpus = gpu_slots.slots(gpu_slots.visible_gpus(), args.jobs_per_gpu, gpus)
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
        if done := job.finished():
            state = "diverged already" if done.get("diverged") else "finished already"
            print(f"[{i}/{len(jobs)}] {state}: {job.run_dir}", flush=True)
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
