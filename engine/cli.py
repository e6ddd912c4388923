"""The common command line of every ``train.py`` and its clean-exit wrapper.

::

    python -m <task>.train --config FILE --row ROW [--schedule NAME] [--data-dir D] [--out-dir O]
        [--seed N] [--epochs N] [--max-updates N] [--max-steps-per-epoch K] [--device {cpu,cuda}]
        [--amp {none,fp16,bf16}] [--compile {none,default,reduce-overhead}] [--workers N]
        [--dist-timeout MIN] [--plugin MODULE_OR_PATH ...] [--print-config]
        [key=value ...]

A task adds its own flags to :func:`build_parser`'s parser if it needs any, then calls
:func:`resolve_args` with its schema. ``--plugin`` imports a module (dotted name or a ``.py``
path) before the optimizer is resolved, so a user's ``optim.register(...)`` takes effect.
:func:`main` runs an entry point so that bad input ends with one ``error: ...`` line and exit
status 2, no traceback (set ``ENGINE_TRACEBACK=1`` to see one).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import config as cfg

#: Flag destination -> config key (None: flag not given, the table decides).
FLAG_KEYS = (
    "seed",
    "epochs",
    "max_updates",
    "max_steps_per_epoch",
    "device",
    "amp",
    "data_dir",
    "out_dir",
    "workers",
    "compile",
    "dist_timeout",
)


class UsageError(ValueError):
    """Bad command-line input that is not about the config (a plugin that does not import)."""


_ROLE = re.compile(r":[a-z]+:`~?([^`<]+?)(?: <[^>]+>)?`")


def help_text(doc: str | None) -> str:
    """A docstring as ``--help`` prints it: reST markup (````x````, ``:func:`x```, ``::``)
    removed, its line breaks kept (with :class:`ArgumentParser`'s raw description)."""
    text = _ROLE.sub(r"\1", inspect.cleandoc(doc or "")).replace("``", "")
    text = re.sub(r"(?m)^::$", "", text)  # a literal block's lone marker
    text = re.sub(r"(?m)::$", ":", text)  # "Example::" -> "Example:"
    return re.sub(r"\n{3,}", "\n\n", text).strip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse that prints its description and epilog as written (``description`` and
    ``epilog`` go through :func:`help_text`) and reports a usage error in one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        for key in ("description", "epilog"):
            if kwargs.get(key):
                kwargs[key] = help_text(kwargs[key])
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


class Parser(ArgumentParser):
    """:class:`ArgumentParser` with ``key=value`` overrides allowed between flags."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        return self.parse_intermixed_args(args, namespace)


def build_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    """The common flags; ``key=value`` overrides are collected as ``args.overrides``.

    ``description`` is printed by ``--help`` (through :func:`help_text`): a task passes its
    module docstring, whose examples are its own.
    """
    p = Parser(prog=prog, description=description)
    p.add_argument("--config", required=True, help="the table file (configs/<table>.yaml)")
    p.add_argument("--row", required=True, help="a row of that table (its 'rows' section)")
    p.add_argument("--schedule", help="a schedule of that table (default: its only one)")
    p.add_argument("--data-dir", help="data location (default: the table's data_dir)")
    p.add_argument("--out-dir", help="run directory; re-running with it resumes")
    p.add_argument("--seed", type=int, help="default: the table's first seed")
    p.add_argument("--epochs", type=int, help="the run's length in epochs (default: the table's)")
    p.add_argument(
        "--max-updates",
        type=int,
        help="the run's length in optimizer updates (default: the table's)",
    )
    p.add_argument("--max-steps-per-epoch", type=int, help="cut each epoch short (smoke tests)")
    p.add_argument("--device", choices=cfg.DEVICES, help="default: cuda when available")
    p.add_argument("--amp", choices=cfg.AMP_MODES, help="mixed precision (default: the table's)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes per rank")
    p.add_argument(
        "--compile", choices=cfg.COMPILE_MODES, help="torch.compile the model (default: none)"
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        metavar="MIN",
        help="minutes a collective waits for the other ranks before the run stops (default: 10)",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_PATH",
        help="import a module first (e.g. one that calls optim.register); repeatable",
    )
    p.add_argument("--print-config", action="store_true", help="print the run config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optimizer.lr=0.02")
    return p


def resolve_args(
    args: argparse.Namespace,
    schema: cfg.Schema,
    table: dict[str, Any] | None = None,
    *,
    check_optimizer: bool = True,
) -> dict[str, Any]:
    """Load plugins, then the table (unless given, already loaded), then resolve
    ``--row``/``--schedule``/flags/overrides; ``check_optimizer`` holds the ``optimizer``
    section to the registered optimizer's signature (which imports torch)."""
    for plugin in args.plugin:
        load_plugin(plugin)
    table = table if table is not None else cfg.load_table(args.config)
    flags = {key: getattr(args, key, None) for key in FLAG_KEYS}
    if flags["device"] is None:
        flags["device"] = default_device()
    schedule = args.schedule
    if schedule is None:  # a table with one schedule (lm1b) needs no --schedule
        names = cfg.schedule_names(table)
        if len(names) != 1:
            raise cfg.ConfigError(
                f"{args.config}: --schedule is required; schedules: {', '.join(names)}"
            )
        schedule = names[0]
    config = cfg.resolve(
        table, args.row, schedule, schema=schema, flags=flags, overrides=args.overrides
    )
    if check_optimizer:
        import apollo_optim as optim

        spec = optim.get(config["optimizer"]["name"])  # an unknown name: one line
        cfg.check_optimizer(config["optimizer"], spec.factory, args.config)
    config["plugins"] = list(args.plugin)
    return config


def parse_run_args(
    prog: str, description: str, schema: cfg.Schema, argv: Sequence[str] | None
) -> tuple[dict[str, Any], bool]:
    """A ``train.py``'s resolved run config (with its default ``out_dir``) and whether
    ``--print-config`` was given."""
    args = build_parser(prog, description).parse_args(argv)
    config = resolve_args(args, schema)
    if config["out_dir"] is None:
        config["out_dir"] = default_out_dir(config)
    return config, args.print_config


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_out_dir(config: dict[str, Any], root: str = "runs") -> str:
    """``runs/<table>/<paper_version>/<row>/<schedule>/seed<N>`` (``*`` spelt ``-star``)."""
    row = config["row"].replace("*", "-star").replace("/", "-")
    return str(
        Path(root, config["table"], config["paper_version"], row, config["schedule"]["name"])
        / f"seed{config['seed']}"
    )


def print_config(config: dict[str, Any]) -> None:
    """The resolved config as one JSON object on stdout."""
    print(json.dumps(config, indent=2))


def load_plugin(spec: str) -> None:
    """Import a dotted module name or a ``.py`` file path."""
    try:
        if spec.endswith(".py") or os.sep in spec:
            path = Path(spec)
            if not path.is_file():
                raise UsageError(f"--plugin {spec}: no such file")
            loaded = sys.modules.get(path.stem)
            if loaded is not None and getattr(loaded, "__file__", None) == str(path.resolve()):
                return  # once per process, like an import: runs in one process register once
            module_spec = importlib.util.spec_from_file_location(path.stem, path.resolve())
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except UsageError:
        raise
    except Exception as exc:  # a plugin's own error: still one line, naming the plugin
        raise UsageError(f"--plugin {spec}: {type(exc).__name__}: {exc}") from None


#: Exceptions that mean bad user input rather than a bug (ConfigError, CheckpointError and
#: DataError are ValueErrors).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def main(entry: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Run ``entry(argv)``; bad input -> ``error: <one line>`` on stderr and exit status 2."""
    try:
        entry(argv)
    except USER_ERRORS as exc:
        if os.environ.get("ENGINE_TRACEBACK"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "interrupted; re-run the same command to resume from the last checkpoint",
            file=sys.stderr,
        )
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stderr.close()
