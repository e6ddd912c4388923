"""A paper table in YAML -> one flat, type-checked run config.

A table file (``configs/<table>.yaml``) has these top-level keys::

    table: cifar10                # name used in default run directories
    task: classification          # entry point: python -m classification.train
    paper_version: current        # or v1 (the paper's first version)
    seeds: [1, 101, ...]          # the authors' seed list; --seed picks one (default: the first)
    default_seeds: 3              # optional: a sweep runs the first 3 seeds (default: all)
    defaults: {...}               # keys shared by every row
    schedules: {milestone: {...}, cosine: {...}}   # keys each schedule sets (epochs, schedule.*)
    rows: {SGD: {...}, Apollo: {...}}              # keys each row sets (optimizer, schedule.*)
    extends: cifar10.yaml         # optional: start from another table (see below)

Values are read as YAML 1.2 reads them (:class:`Loader`): ``1e-4`` is a number.

``extends`` names a base table (relative to this file, else to the project root). The base is
loaded first; this file's keys are then merged onto it, mappings key by key (so a row may set
only ``optimizer.warmup``), and a key set to ``null`` removes the inherited one (``schedules:
{milestone: null}``). New rows are appended after the base's. A mapping tagged ``!replace``
replaces the base's instead (``rows: !replace {...}``: this table's rows, in this order), and a
row ``{from: NAME, ...}`` starts from the base's row NAME (``configs/v1/*.yaml`` restate the
current tables' rows under the first paper version's names this way). ``configs/quickstart.yaml``
and ``docs/adding_an_optimizer.md`` use ``extends`` so that a row's hyperparameters live in one
file.

:func:`resolve` merges ``defaults`` < ``schedules[name]`` < ``rows[name]`` < the CLI flags <
``key=value`` overrides (dotted keys reach into sections: ``optimizer.lr=0.02``), then checks
every value against the task's schema (:data:`COMMON_SCHEMA` plus the task's own keys). The
result is a plain dict that ``--print-config`` prints and ``config.json`` stores.

Types: a schema maps a key to a type or a tuple of types (``(int, type(None))`` for optional).
An override is parsed as the tables are (``1e-4``, ``true``, ``[80, 120]``, ``null``), then
converted to the type the key already has (an int where a float is expected is fine; a string
where a number is expected is an error). :func:`check_optimizer` holds the ``optimizer`` section
to the optimizer's signature: an argument it does not take, or a value of the wrong type, is an
error before anything runs; :func:`check_values` rejects a negative number, a size below one
and a probability of one or more. Every problem is a :class:`ConfigError` (a ``ValueError``) whose
one-line message names the file and the key and lists what exists.
"""

from __future__ import annotations

import copy
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

TypeSpec = type | tuple[type, ...]
Schema = Mapping[str, TypeSpec]

TABLE_KEYS = (
    "table",
    "task",
    "paper_version",
    "seeds",
    "default_seeds",
    "defaults",
    "schedules",
    "rows",
    "extends",
)
_REPO = Path(__file__).resolve().parent.parent

_OPTIONAL_INT = (int, type(None))

#: Keys every run config has, whatever the task (see engine.run for how a run uses them).
COMMON_SCHEMA: dict[str, TypeSpec] = {
    "seed": int,
    "epochs": _OPTIONAL_INT,  # the run's length in epochs, or
    "max_updates": _OPTIONAL_INT,  # in optimizer updates (at least one is set)
    "max_steps_per_epoch": _OPTIONAL_INT,  # cut each epoch short (smoke tests)
    "update_freq": int,  # micro-batches per update (gradient accumulation)
    "checkpoint_every": int,  # updates between mid-epoch checkpoints (0: epoch ends only)
    "keep_last": int,  # epoch checkpoints kept beside checkpoint.pt (0: none)
    "log_every": int,  # updates between log points: a log line, TensorBoard scalars (0: none)
    "device": str,
    "amp": str,
    "data_dir": (str, type(None)),
    "out_dir": (str, type(None)),
    "workers": int,
    "compile": str,  # torch.compile mode of the model: none, default, reduce-overhead
    "dist_timeout": (int, float),  # minutes a collective waits for the other ranks
    "optimizer": dict,
    "schedule": dict,
}
#: Values of the common keys a table may leave out.
COMMON_DEFAULTS: dict[str, Any] = {
    "epochs": None,
    "max_updates": None,
    "max_steps_per_epoch": None,
    "update_freq": 1,
    "checkpoint_every": 0,
    "keep_last": 0,
    "log_every": 100,
    "data_dir": None,
    "out_dir": None,
    "compile": "none",
    # torch's 30 min would hold a cluster allocation that long after a node froze; 10 leaves
    # room for a slow checkpoint write on rank 0 while the others wait at the next collective
    "dist_timeout": 10.0,
}

#: Keys added to run configs after run directories were first written, with the value a run
#: written before had in effect: a saved config without the key compares as this value (a
#: resume, ``scripts.report``'s grouping), so older runs stay resumable and comparable.
LATER_KEYS: dict[str, Any] = {"sync_bn": False}

#: Keys of the ``schedule`` section; all but ``name`` and ``unit`` go to ``optim.Schedule``.
SCHEDULE_SCHEMA: dict[str, TypeSpec] = {
    "name": str,
    "kind": str,
    "unit": str,  # 'epoch' (classification, LM) or 'update' (NMT)
    "warmup": int,
    "init_lr": float,
    "milestones": list,
    "decay_rate": float,
    "last_lr": float,
    "total_steps": int,  # cosine's length; default: the run's epochs (or updates)
    "gamma": float,
}
SCHEDULE_UNITS = ("epoch", "update")
AMP_MODES = ("none", "fp16", "bf16")
COMPILE_MODES = ("none", "default", "reduce-overhead")  # see engine.compiling
DEVICES = ("cpu", "cuda")


class ConfigError(ValueError):
    """A bad table, row, schedule, key or value; the message is one line for the user."""


class Replace(dict):
    """A mapping tagged ``!replace`` in an extending table: it replaces the base's mapping
    instead of being merged onto it key by key."""


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-4`` is a number, not the string
    PyYAML's YAML 1.1 rules make of it (they want ``1.0e-4``); and the ``!replace`` tag."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
Loader.add_constructor(
    "!replace", lambda loader, node: Replace(loader.construct_mapping(node, deep=True))
)


def load_table(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read and check one table file; :class:`ConfigError` names the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        table = yaml.load(text, Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(TABLE_KEYS)}")
    if "extends" in table:
        table = _extend(table, path, _seen)
    unknown = sorted(set(table) - set(TABLE_KEYS))
    missing = [k for k in ("task", "defaults", "schedules", "rows") if k not in table]
    if unknown or missing:
        what = f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
        raise ConfigError(f"{path}: {what}; a table has {', '.join(TABLE_KEYS)}")
    for section in ("defaults", "schedules", "rows"):
        if not isinstance(table[section], dict) or not table[section]:
            raise ConfigError(f"{path}: '{section}' must be a non-empty mapping")
    for name, row in table["rows"].items():
        if isinstance(row, dict) and "from" in row:
            raise ConfigError(f"{path}: rows.{name}.from names a row of the base: it needs extends")
    seeds = table.setdefault("seeds", [])
    if not isinstance(seeds, list) or not all(_is_int(s) for s in seeds):
        raise ConfigError(f"{path}: 'seeds' must be a list of integers, got {seeds!r}")
    count = table.get("default_seeds")
    if count is not None and not (_is_int(count) and 1 <= count <= len(seeds)):
        raise ConfigError(
            f"{path}: 'default_seeds' must be a count of the table's seeds, "
            f"1..{len(seeds)}, got {count!r}"
        )
    table["_path"] = str(path)
    return table


def _extend(child: dict[str, Any], path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The base table named by ``child['extends']`` with ``child`` merged onto it."""
    ref = child.pop("extends")
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{path}: 'extends' must be the path of a table file, got {ref!r}")
    candidates = [Path(ref)] if Path(ref).is_absolute() else [path.parent / ref, _REPO / ref]
    base_path = next((p for p in candidates if p.is_file()), None)
    if base_path is None:
        where = " or ".join(str(p) for p in candidates)
        raise ConfigError(f"{path}: extends {ref!r}, but there is no such file ({where})")
    if base_path.resolve() in seen or base_path.resolve() == path.resolve():
        raise ConfigError(f"{path}: 'extends' loops back to {base_path}")
    base = load_table(base_path, (*seen, path.resolve()))
    del base["_path"]
    if isinstance(child.get("rows"), dict):
        for name, row in child["rows"].items():
            if isinstance(row, dict) and "from" in row:
                child["rows"][name] = _row_from(row, base["rows"], f"{path}: rows.{name}")
    merge(base, child, none_deletes=True)
    return base


def _row_from(row: dict[str, Any], base_rows: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A row written ``{from: NAME, ...}``: the base table's row NAME with the other keys
    merged onto it (a replaced row, or a renamed one: the first paper version's Adam is the
    current table's Adam*)."""
    name = row["from"]
    if name not in base_rows:
        raise ConfigError(
            f"{where}.from: the base table has no row {name!r}; rows: {', '.join(base_rows)}"
        )
    merged = copy.deepcopy(base_rows[name])
    merge(merged, {k: v for k, v in row.items() if k != "from"}, none_deletes=True)
    return merged


def merge(base: dict[str, Any], update: Mapping[str, Any], *, none_deletes: bool = False) -> None:
    """Merge a copy of ``update`` onto ``base`` in place, mappings key by key unless tagged
    ``!replace`` (:class:`Replace`); with ``none_deletes`` a ``None`` value removes the key (how
    ``extends`` drops inherited keys)."""
    for key, value in update.items():
        if value is None and none_deletes:
            base.pop(key, None)
        elif isinstance(value, Replace):
            base[key] = copy.deepcopy(dict(value))
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value, none_deletes=none_deletes)
        else:
            base[key] = copy.deepcopy(value)


def row_names(table: Mapping[str, Any]) -> list[str]:
    """The table's rows in file order (the paper's order)."""
    return list(table["rows"])


def schedule_names(table: Mapping[str, Any]) -> list[str]:
    """The table's schedules in file order."""
    return list(table["schedules"])


def resolve(
    table: Mapping[str, Any],
    row: str,
    schedule: str,
    *,
    schema: Schema,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """One run's config: defaults < schedule < row < ``flags`` (non-None) < ``overrides``.

    ``schema`` holds the task's own keys; :data:`COMMON_SCHEMA` is added to it. The result
    starts with ``config``, ``table``, ``task``, ``paper_version``, ``row`` and has
    ``schedule.name`` set to ``schedule``. ``seed`` defaults to the table's first seed.
    """
    path = table.get("_path", "<table>")
    full_schema = {**COMMON_SCHEMA, **schema}
    rows, schedules = table["rows"], table["schedules"]
    if row not in rows:
        raise ConfigError(f"{path}: unknown row {row!r}; rows: {', '.join(rows)}")
    if schedule not in schedules:
        raise ConfigError(
            f"{path}: unknown schedule {schedule!r}; schedules: {', '.join(schedules)}"
        )
    config: dict[str, Any] = {}
    for where, part in (
        ("defaults", table["defaults"]),
        (f"schedules.{schedule}", schedules[schedule]),
        (f"rows.{row}", rows[row]),
    ):
        if not isinstance(part, dict):
            raise ConfigError(f"{path}: '{where}' must be a mapping")
        for key in part:
            if key not in full_schema:
                raise ConfigError(
                    f"{path}: unknown key '{where}.{key}'; keys: {', '.join(full_schema)}"
                )
        merge(config, part)
    config.setdefault("schedule", {})["name"] = schedule
    if "seed" not in config and table.get("seeds"):
        config["seed"] = table["seeds"][0]
    for key, value in (flags or {}).items():
        if value is not None:
            config[key] = value
    for item in overrides:
        apply_override(config, item, full_schema)
    for key, value in COMMON_DEFAULTS.items():
        config.setdefault(key, value)
    missing = [k for k in full_schema if k not in config]
    if missing:
        raise ConfigError(f"{path}: row {row!r} / schedule {schedule!r} lacks keys {missing}")
    for key, spec in full_schema.items():
        _check_type(config[key], spec, key, path)
    check_schedule(config, path)
    check_run_keys(config, path)
    check_values(config, path)
    config["schedule"] = {
        k: config["schedule"][k] for k in SCHEDULE_SCHEMA if k in config["schedule"]
    }
    head = {
        "config": path,
        "table": table.get("table", Path(path).stem),
        "task": table["task"],
        "paper_version": table.get("paper_version", "current"),
        "row": row,
    }
    return {**head, **{k: config[k] for k in full_schema}}


def check_schedule(config: Mapping[str, Any], path: str = "<config>") -> None:
    """The ``schedule`` section's keys and types, the unit, and "never two warmups"."""
    sched = config["schedule"]
    for key, value in sched.items():
        if key not in SCHEDULE_SCHEMA:
            raise ConfigError(
                f"{path}: unknown key 'schedule.{key}'; keys: {', '.join(SCHEDULE_SCHEMA)}"
            )
        _check_type(value, SCHEDULE_SCHEMA[key], f"schedule.{key}", path)
    for key in ("kind", "unit"):
        if key not in sched:
            raise ConfigError(f"{path}: 'schedule.{key}' is required")
    if sched["unit"] not in SCHEDULE_UNITS:
        raise ConfigError(f"{path}: schedule.unit must be one of {SCHEDULE_UNITS}")
    opt = config["optimizer"]
    if not isinstance(opt.get("name"), str):
        raise ConfigError(f"{path}: 'optimizer.name' (a registry name) is required")
    if sched.get("warmup", 0) > 0 and opt.get("warmup", 0) > 0:
        raise ConfigError(
            f"{path}: both schedule.warmup and optimizer.warmup are set; the optimizer warms "
            "up by itself (Apollo, AdaHessian), so set schedule.warmup=0"
        )
    if config.get("amp", "none") not in AMP_MODES:
        raise ConfigError(f"{path}: amp must be one of {', '.join(AMP_MODES)}")
    if config.get("compile", "none") not in COMPILE_MODES:
        raise ConfigError(f"{path}: compile must be one of {', '.join(COMPILE_MODES)}")
    if config.get("device", "cpu") not in DEVICES:
        raise ConfigError(f"{path}: device must be one of {', '.join(DEVICES)}")
    if config.get("dist_timeout", 1) <= 0:
        raise ConfigError(f"{path}: dist_timeout must be > 0 minutes")


def check_run_keys(config: Mapping[str, Any], path: str = "<config>") -> None:
    """The run's length and loop counts: positive where a count, one bound at least."""
    if config.get("epochs") is None and config.get("max_updates") is None:
        raise ConfigError(f"{path}: set epochs or max_updates (the run's length)")
    positive = ("epochs", "max_updates", "max_steps_per_epoch", "update_freq")
    for key in positive:
        if config.get(key) is not None and config[key] < 1:
            raise ConfigError(f"{path}: {key} must be a positive integer, got {config[key]}")
    for key in ("checkpoint_every", "keep_last", "log_every", "workers"):
        if config.get(key, 0) < 0:
            raise ConfigError(f"{path}: {key} must be >= 0, got {config[key]}")
    sched = config["schedule"]
    length = "max_updates" if sched["unit"] == "update" else "epochs"
    if sched["kind"] == "cosine" and sched.get("total_steps") is None and config[length] is None:
        raise ConfigError(
            f"{path}: a cosine schedule stepped per {sched['unit']} needs {length} or "
            "schedule.total_steps (its length)"
        )


#: Name endings of the keys that are sizes or counts of at least one (a batch of 0 sentences,
#: a model of 0 layers, a beam of 0): ``batch_size``, ``model.num_layers``, ``generations.*.beam``.
SIZE_KEYS = ("batch_size", "_size", "_dim", "_layers", "heads", "num_classes", "bptt", "beam")
SIZE_KEYS += ("max_tokens", "tokens_per_update", "batch_multiple", "max_positions")
#: Name endings of the keys that are probabilities below one.
PROBABILITY_KEYS = ("dropout", "label_smoothing")


def check_values(config: Mapping[str, Any], path: str = "<config>", where: str = "") -> None:
    """Numbers outside ``optimizer`` and ``schedule`` (which their constructors check): none is
    negative (no count, size, length, seed, limit or probability here is), sizes
    (:data:`SIZE_KEYS`) are at least one, probabilities (:data:`PROBABILITY_KEYS`) below one."""
    for key, value in config.items():
        name = f"{where}{key}"
        if name in ("optimizer", "schedule"):
            continue
        if isinstance(value, dict):
            check_values(value, path, f"{name}.")
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if name.endswith(SIZE_KEYS) and v < 1:
                raise ConfigError(f"{path}: {name} must be >= 1, got {value!r}")
            if v < 0:
                raise ConfigError(f"{path}: {name} must be >= 0, got {value!r}")
            if name.endswith(PROBABILITY_KEYS) and v >= 1:
                raise ConfigError(f"{path}: {name} must be in [0, 1), got {value!r}")


def schedule_kwargs(schedule: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """Keyword arguments for ``optim.Schedule`` from a ``schedule`` section.

    ``steps`` is the schedule's length in its unit (epochs or updates): cosine's
    ``total_steps`` unless the section sets it.
    """
    kwargs = {k: v for k, v in schedule.items() if k not in ("name", "kind", "unit")}
    if schedule["kind"] == "cosine":
        kwargs.setdefault("total_steps", steps)
    return kwargs


def apply_override(config: dict[str, Any], item: str, schema: Schema) -> None:
    """Apply one ``key=value`` (dotted keys reach into sections) to ``config`` in place."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"bad override {item!r}: expected key=value, e.g. optimizer.lr=0.02")
    top, _, sub = key.partition(".")
    if top not in schema:
        raise ConfigError(f"unknown key {top!r} in override {item!r}; keys: {', '.join(schema)}")
    value = parse_value(text)
    if not sub:
        if isinstance(schema[top], type) and schema[top] is dict:
            raise ConfigError(f"override {item!r}: {top!r} is a section; set {top}.<key>=...")
        config[top] = _coerce(value, schema[top], key, item)
        return
    section = config.setdefault(top, {})
    while "." in sub and isinstance(section, dict):  # a section inside a section (nmt's
        inner, sub = sub.split(".", 1)  # generations.valid.beam): walk to existing ones
        section, top = section.get(inner), f"{top}.{inner}"
    if not isinstance(section, dict) or "." in sub:
        raise ConfigError(f"override {item!r}: {top!r} is not a section with key {sub!r}")
    if top == "schedule":
        expected: TypeSpec | None = SCHEDULE_SCHEMA.get(sub)
        if expected is None:
            raise ConfigError(
                f"unknown key {key!r} in override {item!r}; keys: {', '.join(SCHEDULE_SCHEMA)}"
            )
    elif sub in section and section[sub] is not None:
        expected = bool if isinstance(section[sub], bool) else type(section[sub])
        if expected is int and isinstance(value, float):
            expected = float  # lr=0.5 where the table had lr: 1 is still a learning rate
    elif top == "optimizer":
        expected = None  # a new constructor argument: the optimizer validates it
    else:
        raise ConfigError(
            f"unknown key {key!r} in override {item!r}; keys: {', '.join(section) or '(none)'}"
        )
    section[sub] = value if expected is None else _coerce(value, expected, key, item)


def parse_value(text: str) -> Any:
    """An override's value as the tables read it (:class:`Loader`): ``1e-4``, ``true``,
    ``[80, 120]``, ``null``; anything else is a string."""
    text = text.strip()
    try:
        return yaml.load(text, Loader) if text else ""
    except yaml.YAMLError:
        return text


def _coerce(value: Any, spec: TypeSpec, key: str, item: str) -> Any:
    types = spec if isinstance(spec, tuple) else (spec,)
    if value is None and type(None) in types:
        return None
    if float in types and _is_int(value):
        return float(value)
    if str in types and isinstance(value, int | float | bool):
        return str(value) if not isinstance(value, bool) else str(value).lower()
    if _matches(value, types):
        return value
    names = " or ".join(t.__name__ for t in types)
    raise ConfigError(f"bad value in override {item!r}: {key} must be {names}")


def _check_type(value: Any, spec: TypeSpec, key: str, path: str) -> None:
    types = spec if isinstance(spec, tuple) else (spec,)
    if _matches(value, types) or (float in types and _is_int(value)):
        return
    names = " or ".join(t.__name__ for t in types)
    raise ConfigError(f"{path}: {key} must be {names}, got {value!r}")


def _matches(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_optimizer(section: dict[str, Any], factory: Callable[..., Any], where: str) -> None:
    """Hold the ``optimizer`` section (``name`` and constructor arguments) to ``factory``'s
    signature, in place: an argument it does not take (unless it takes ``**kwargs``), one it
    needs and lacks, or a value of another type than its annotation (or default) is a
    :class:`ConfigError`; an int where a float is annotated becomes a float."""
    name = section.get("name")
    accepted, any_kwargs, required = _signature_types(factory)
    for key, value in section.items():
        if key == "name":
            continue
        if key not in accepted:
            if any_kwargs:
                continue  # passed through to the torch.optim class, which checks it
            raise ConfigError(
                f"{where}: unknown key 'optimizer.{key}' for optimizer {name!r}; its "
                f"arguments: {', '.join(accepted)}"
            )
        allowed = accepted[key]
        if allowed is None or _matches(value, allowed):
            continue
        if float in allowed and _is_int(value):
            section[key] = float(value)
            continue
        if tuple in allowed and isinstance(value, list):
            continue  # YAML has no tuples: betas [0.9, 0.999]
        names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        raise ConfigError(
            f"{where}: optimizer.{key} must be {names} for optimizer {name!r}, got {value!r}"
        )
    missing = [k for k in required if k not in section]
    if missing:
        raise ConfigError(f"{where}: optimizer {name!r} needs optimizer.{missing[0]}")


def _signature_types(
    factory: Callable[..., Any],
) -> tuple[dict[str, tuple[type, ...] | None], bool, list[str]]:
    """Each keyword argument of ``factory(params, ...)`` with the types it takes (None: any),
    whether it takes ``**kwargs``, and the arguments without a default."""
    params = list(inspect.signature(factory).parameters.values())[1:]  # after `params`
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # an annotation that does not evaluate: fall back on the defaults
        hints = {}
    accepted: dict[str, tuple[type, ...] | None] = {}
    required = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        accepted[p.name] = _types_of(hints.get(p.name), p.default)
        if p.default is p.empty:
            required.append(p.name)
    any_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    return accepted, any_kwargs, required


def _types_of(hint: Any, default: Any) -> tuple[type, ...] | None:
    if hint is None:
        if default is inspect.Parameter.empty or default is None:
            return None
        hint = type(default)
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    found: list[type] = []
    for option in options:
        option = typing.get_origin(option) or option
        if option not in (bool, int, float, str, tuple, list, dict, type(None)):
            return None  # a type a YAML value cannot be checked against
        found.append(option)
    return tuple(found)
