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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine import amp, checkpoint, cli, metrics

from .data import ParallelData
from .model import build_model
from .score import sacrebleu_score, tokenized_bleu
from .search import generation_options, translate
from .text import MosesPipeline, remove_bpe


def run_dirs(paths: Sequence[str]) -> list[Path]:
    """Run directories named by, or found under, each path (they hold ``config.json``)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(c.parent for c in p.rglob("config.json"))
        else:
            raise ValueError(f"--run-dir {p}: no such directory")
    if not found:
        raise ValueError(f"--run-dir {' '.join(paths)}: no run directory (config.json) found")
    return found


def _config(run_dir: Path) -> dict[str, Any]:
    config = metrics.read_json(run_dir / "config.json")
    if config.get("task") != "nmt":
        raise ValueError(f"{run_dir}: not an nmt run (task {config.get('task')!r})")
    return {k: v for k, v in config.items() if k not in ("provenance", "earlier_starts")}


def evaluate_run(
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
    """Evaluate one run directory; returns its ``evaluation`` record (None: skipped)."""
    config = _config(run_dir)
    results = metrics.read_json(run_dir / "results.json")
    if not results.get("finished"):
        print(f"{run_dir}: not finished ({results.get('updates_completed')} updates); skipped")
        return None
    n = average_last or config["average_last"]
    name = generation or config["generation"]
    options = generation_options(config, name)
    paths = checkpoint.epoch_paths(run_dir)[-n:] or [run_dir / "checkpoint.pt"]
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
    if data.meta["fingerprint"] != config["data_fingerprint"]["fingerprint"]:
        raise ValueError(f"{run_dir} was trained on other data than --data-dir {data.path}")
    split, d = data.split(split_name), data.dictionary
    dev = torch.device(device)
    model = build_model(config["model"], len(d), d.pad, str(run_dir / "config.json"))
    model.load_state_dict(checkpoint.average(paths)["model"])
    model.to(dev).eval()
    mode = amp_mode or config["amp"]
    hyps = translate(
        model,
        split,
        list(range(len(split))),
        options,
        batch_size=batch_size or config["decode_batch_size"],
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
    (run_dir / f"{stem}.hyp.txt").write_text("".join(h + "\n" for h in hyp_text), "utf-8")
    (run_dir / f"{stem}.detok.txt").write_text("".join(h + "\n" for h in detok_text), "utf-8")
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
    metrics.write_json(
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
    for run_dir in run_dirs(args.run_dir):
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


if __name__ == "__main__":
    cli.main(main)
