"""Test BLEU of trained runs: average the last epoch checkpoints, beam search, both BLEUs.

::

    python -m nmt.evaluate --run-dir RUN_DIR_OR_FOLDER... [--data-dir D] [--average-last N]
        [--generation NAME] [--split test] [--device {cpu,cuda}] [--amp {none,fp16,bf16}]
        [--batch-size N] [--force]

For each finished run (a folder is searched for run directories), as the authors evaluate: the
parameters of the last ``average_last`` epoch checkpoints are averaged
(``engine.checkpoint.average``, fairseq's ``average_checkpoints.py``), the test set is
translated with beam search (``generations.<generation>`` of the run's config: beam, lenpen,
max_len_a/b), BPE is removed, and the run directory gets

- ``<split>.<generation>.hyp.txt``: the translations, tokenized (one per line, input order);
- ``<split>.<generation>.detok.txt``: the same, Moses-detokenized;
- ``results.json``: its metric becomes ``bleu``, the tokenized BLEU with compound splitting
  against the tokenized reference (the paper's convention), with ``sacrebleu`` (detokenized,
  against the raw reference the data directory keeps) beside it in ``final`` and ``best``; the
  details (checkpoints, decoding, both scores without rounding, sacreBLEU's signature) are in
  its ``evaluation`` section. ``python -m scripts.report`` then prints the table.

A run evaluated already with the same checkpoints and decoding is skipped unless ``--force``.

Each run directory is locked while it is evaluated (``engine.lock``, the lock training takes):
a run being trained is refused with one line, and ``results.json`` is read and rewritten under
the lock, so an evaluation never writes back a stale copy. The data directory is verified
against the run's ``data_fingerprint`` (``nmt.data``). Refused with one line, nothing written:
fewer epoch checkpoints than ``average_last`` (as fairseq's ``average_checkpoints.py``),
checkpoints of another model, a test sentence longer than the model's ``max_positions`` (as
fairseq's ``generate.py``), a full disk or an unwritable run directory (the translations and
``results.json`` are replaced together, only once all are written). A folder may hold runs of
other tasks: they are skipped, and said so.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine import amp, checkpoint, cli, metrics
from engine.lock import RunDirBusy, RunDirLock

from .data import ParallelData
from .model import build_model
from .score import sacrebleu_score, tokenized_bleu
from .search import generation_options, translate
from .text import MosesPipeline, remove_bpe

TASK = "nmt"


def run_dirs(paths: Sequence[str]) -> list[Path]:
    """Translation run directories named by, or found under, each path (they hold
    ``config.json``); a folder's runs of other tasks are skipped with a line saying so."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").is_file():
            _config(p)  # named explicitly: another task's run is an error
            found.append(p)
        elif p.is_dir():
            for run_dir in sorted(c.parent for c in p.rglob("config.json")):
                task = _task(run_dir)
                if task == TASK:
                    found.append(run_dir)
                else:
                    print(f"{run_dir}: skipped (a {task} run, not translation)")
        else:
            raise ValueError(f"--run-dir {p}: no such directory")
    if not found:
        raise ValueError(
            f"--run-dir {' '.join(paths)}: no translation run directory (config.json) found"
        )
    return found


def _task(run_dir: Path) -> str:
    try:
        return str(metrics.read_json(run_dir / "config.json").get("task"))
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        config = metrics.read_json(run_dir / "config.json")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{run_dir}: unreadable config.json ({exc})") from None
    if config.get("task") != TASK:
        raise ValueError(f"{run_dir}: not a translation run (task {config.get('task')!r})")
    return {k: v for k, v in config.items() if k not in ("provenance", "earlier_starts")}


def _lock(run_dir: Path) -> RunDirLock:
    """The run directory's lock, taken; a run being trained (or evaluated) is one line."""
    lock = RunDirLock(run_dir)
    try:
        note = lock.acquire()
    except RunDirBusy:
        try:
            holder = " on ".join((run_dir / ".lock").read_text().split()[:2]) or "unknown"
        except OSError:
            holder = "unknown"
        raise RunDirBusy(
            f"{run_dir}: in use by PID {holder} (its training is running, or another "
            "evaluation); not evaluated: run nmt.evaluate again when it has ended"
        ) from None
    if note:
        print(note, file=sys.stderr)
    return lock


def evaluate_run(run_dir: Path, **options: Any) -> dict[str, Any] | None:
    """Evaluate one run directory under its lock (``options``: :func:`_evaluate`'s); returns
    its ``evaluation`` record (None: skipped)."""
    lock = _lock(run_dir)
    try:
        return _evaluate(run_dir, **options)
    finally:
        lock.release()


def _checkpoints(run_dir: Path, config: dict[str, Any], average_last: int | None) -> list[Path]:
    """The last ``n`` epoch checkpoints; fewer is refused, as fairseq's script refuses."""
    n = average_last or config["average_last"]
    paths = checkpoint.epoch_paths(run_dir)
    if len(paths) < n:
        source = "--average-last" if average_last else "the run's average_last"
        kept = ", ".join(p.name for p in paths) or "none"
        raise ValueError(
            f"{run_dir}: {source} {n} needs {n} epoch checkpoints, but the run kept "
            f"{len(paths)} ({kept}; keep_last {config.get('keep_last')}); pass --average-last "
            f"{len(paths)} or fewer" + ("" if paths else " (no checkpoint to evaluate)")
        )
    return paths[-n:]


def _model(run_dir: Path, config: dict[str, Any], paths: list[Path], vocab: int, pad: int):
    model = build_model(config["model"], vocab, pad, str(run_dir / "config.json"))
    state = checkpoint.average(paths)["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(
            f"{run_dir}: {paths[-1].name} does not hold the model of its config.json "
            f"({' '.join(first[1:2] or first[:1]).strip()})"
        ) from None
    return model


def _evaluate(
    run_dir: Path,
    *,
    data_dir: str | None,
    average_last: int | None,
    generation: str | None,
    split_name: str,
    device: str,
    amp_mode: str | None,
    batch_size: int | None,
    force: bool,
) -> dict[str, Any] | None:
    config = _config(run_dir)
    results = metrics.read_json(run_dir / "results.json")  # under the lock: the current one
    if results.get("diverged"):
        where = results["diverged"]
        print(f"{run_dir}: diverged at update {where.get('update')}; nothing to evaluate, skipped")
        return None
    if not results.get("finished"):
        print(f"{run_dir}: not finished ({results.get('updates_completed')} updates); skipped")
        return None
    name = generation or config["generation"]
    options = generation_options(config, name)
    paths = _checkpoints(run_dir, config, average_last)
    done = results.get("evaluation") or {}
    same = (
        done.get("checkpoints") == [p.name for p in paths]
        and done.get("generation") == name
        and done.get("split") == split_name
    )
    if same and not force:
        print(f"{run_dir}: evaluated already (BLEU {done['bleu']:.2f}); --force to redo")
        return None
    data = ParallelData(data_dir or config["data_dir"])
    if data.fingerprint() != config["data_fingerprint"]:
        raise ValueError(
            f"{run_dir} was trained on other data than --data-dir {data.path} (its "
            "data_fingerprint differs)"
        )
    split, d = data.split(split_name), data.dictionary
    model = _model(run_dir, config, paths, len(d), d.pad)
    split.check_positions(model.max_positions, str(run_dir))
    dev = torch.device(device)
    model.to(dev).eval()
    mode = amp_mode or config["amp"]
    hyps = translate(
        model,
        split,
        list(range(len(split))),
        options,
        batch_size=config["decode_batch_size"] if batch_size is None else batch_size,
        autocast=lambda: amp.autocast(dev, mode),
    )
    hyp_text = [remove_bpe(d.decode(h)) for h in hyps]
    tgt = data.target_lang
    refs = data.text(split_name, tgt, "tok")
    if refs is None:  # valid: the reference is the target side as prepared
        refs = [remove_bpe(d.decode(split.tgt.sentence(i))) for i in range(len(split))]
    detok = MosesPipeline(tgt)
    detok_text = [detok.detokenize(h) for h in hyp_text]
    stem = f"{split_name}.{name}"
    bleu = tokenized_bleu(hyp_text, refs, split_compounds=True)
    record: dict[str, Any] = {
        "split": split_name,
        "sentences": len(split),
        "generation": name,
        "options": options,
        "checkpoints": [p.name for p in paths],
        "bleu": bleu.score,
        "bleu_detail": str(bleu),
        "bleu_without_compound_split": tokenized_bleu(hyp_text, refs, split_compounds=False).score,
        "hypotheses": f"{stem}.hyp.txt",
        "sacrebleu": None,
        "sacrebleu_signature": None,
    }
    raw = data.text(split_name, tgt, "raw")
    if raw is not None:
        record["sacrebleu"], record["sacrebleu_signature"] = sacrebleu_score(detok_text, raw)
    scores = {"bleu": record["bleu"], "sacrebleu": record["sacrebleu"]}
    last = dict(results.get("final") or {})
    texts = {
        run_dir / f"{stem}.hyp.txt": hyp_text,
        run_dir / f"{stem}.detok.txt": detok_text,
    }
    _write_together(
        texts,
        run_dir / "results.json",
        {
            **results,
            "metric": "bleu",
            "mode": "max",
            "final": {**last, **scores},
            "best": {**last, **scores},
            "evaluation": record,
        },
    )
    return record


def _write_together(texts: dict[Path, list[str]], results_path: Path, results: dict) -> None:
    """Write the translations and ``results.json`` so that a failure (a full disk, a read-only
    folder, a kill) leaves the old files: the texts go to temp files first (``.<name>.*.tmp``,
    deleted under the lock if orphaned), ``results.json`` is replaced atomically, and only then
    are the texts renamed over the old ones."""
    staged: dict[Path, str] = {}
    try:
        for path, lines in texts.items():
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                staged[path] = tmp
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write("".join(line + "\n" for line in lines))
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
            except OSError as exc:
                raise checkpoint.WriteError(
                    f"cannot write {path}: {exc.strerror or exc} (nothing replaced)"
                ) from None
        metrics.write_json(results_path, results)
        for path, tmp in list(staged.items()):
            os.replace(tmp, path)
            del staged[path]
    finally:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m nmt.evaluate", description=__doc__)
    p.add_argument(
        "--run-dir",
        nargs="+",
        required=True,
        metavar="RUN_DIR_OR_FOLDER",
        help="run directories, or folders searched for them",
    )
    p.add_argument("--data-dir", help="default: the run's data_dir")
    p.add_argument(
        "--average-last",
        type=int,
        help="epoch checkpoints to average (default: the run's average_last)",
    )
    p.add_argument("--generation", help="a key of the run's generations (default: generation)")
    p.add_argument("--split", default="test", help="test (default) or valid")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=cli.default_device(),
        help="default: cuda if any",
    )
    p.add_argument("--amp", choices=("none", "fp16", "bf16"), help="default: the run's")
    p.add_argument("--batch-size", type=int, help="sentences per beam-search batch")
    p.add_argument("--force", action="store_true", help="evaluate again")
    args = p.parse_args(argv)
    if args.average_last is not None and args.average_last < 1:
        raise ValueError(f"--average-last must be >= 1, got {args.average_last}")
    if args.batch_size is not None and args.batch_size < 1:  # below 1 nothing is decoded
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    found = run_dirs(args.run_dir)
    failed = 0
    for run_dir in found:
        try:
            record = evaluate_run(
                run_dir,
                data_dir=args.data_dir,
                average_last=args.average_last,
                generation=args.generation,
                split_name=args.split,
                device=args.device,
                amp_mode=args.amp,
                batch_size=args.batch_size,
                force=args.force,
            )
        except cli.USER_ERRORS as exc:
            if len(found) == 1:
                raise
            failed += 1
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            continue
        if record is not None:
            sacre = (
                f"; sacreBLEU {record['sacrebleu']:.2f} {record['sacrebleu_signature']}"
                if record["sacrebleu"] is not None
                else ""
            )
            print(
                f"{run_dir}: {record['split']} BLEU {record['bleu']:.2f} (tokenized, compound-"
                f"split; {record['bleu_without_compound_split']:.2f} without){sacre}; averaged "
                f"{len(record['checkpoints'])} checkpoint(s), {json.dumps(record['options'])}"
            )
    if failed:
        raise ValueError(f"{failed} of {len(found)} runs not evaluated (see the lines above)")


if __name__ == "__main__":
    cli.main(main)
