"""Raw parallel text -> a binarized, memory-mapped data directory, as the WMT-14 recipe does.

::

    python -m nmt.preprocess --config configs/wmt14.yaml \\
        --train wmt14/europarl-v7.de-en wmt14/commoncrawl.de-en wmt14/news-commentary-v9.de-en \\
        --test wmt14/newstest2014 --out-dir data/wmt14_en_de [--valid PREFIX] [key=value ...]

Each PREFIX names two files, ``PREFIX.<source_lang>`` and ``PREFIX.<target_lang>`` (``en`` and
``de`` for WMT-14), one sentence per line, line ``i`` of one the translation of line ``i`` of
the other. The steps and their numbers (the config's ``preprocess`` section, overridable with
``key=value``) follow fairseq's ``prepare-wmt14en2de.sh --icml17``:

1. training text: Moses punctuation normalisation, removal of non-printing characters, Moses
   tokenization with ``-a``; the training prefixes are concatenated and every
   ``valid_every``-th line (1-based) becomes the valid split, unless ``--valid`` names one;
2. test text (``--test``): ``’`` -> ``'`` and Moses tokenization only; never filtered;
3. joint BPE with ``bpe_merges`` merges (subword-nmt) learned on the training split of both
   languages, applied to every split;
4. train and valid pairs filtered as ``clean-corpus-n.perl -ratio max_len_ratio ... min_len
   max_len`` does (BPE units counted);
5. one dictionary over both languages' training BPE units (``nmt.dictionary``), every split
   encoded into the arrays ``nmt.data`` reads.

Work is spread over a process pool (one worker per core). Everything is written into a hidden
sibling directory, ``meta.json`` last (with every file's size and CRC-32, which training and
evaluation verify), and renamed into place only when complete; re-running with the same inputs
and options finds the finished directory and does nothing. ``--overwrite`` moves the old
directory aside (``.<name>.replaced-<pid>``) just before the new one takes its place and
deletes it after; if the process is killed in between, the next run of ``nmt.preprocess`` on
that ``--out-dir`` finishes the replacement (the new directory was complete) or undoes it. A
full disk or an unwritable folder is one error line, and ``--out-dir`` stays as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from engine import cli
from engine import config as cfg

from . import steps
from .data import FORMAT, FORMAT_VERSION, META, SPLITS, write_meta
from .dictionary import Dictionary
from .steps import Options


def fingerprint(opts: Options, inputs: dict[str, list[Path]]) -> str:
    """Identity of a preparation: the format, the options, and each input's name/size/mtime."""
    h = hashlib.sha256(f"{FORMAT} {FORMAT_VERSION}".encode())
    h.update(json.dumps(asdict(opts), sort_keys=True).encode())
    for role, paths in inputs.items():
        for p in paths:
            st = p.stat()
            h.update(f"{role}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def preprocess(
    opts: Options,
    train: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    valid: str | None = None,
    test: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> tuple[Path, bool]:
    """Build the data directory; returns ``(path, written)`` (False: already up to date)."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    try:
        finish_interrupted_swap(out_dir)
    except OSError as exc:
        raise _write_error(out_dir, exc) from None
    roles = {"train": steps.checked_pairs(train, opts, "--train")}
    if valid is not None:
        roles["valid"] = steps.checked_pairs([valid], opts, "--valid")
    elif opts.valid_every < 2:
        raise ValueError("preprocess.valid_every must be >= 2 when no --valid is given")
    if test is not None:
        roles["test"] = steps.checked_pairs([test], opts, "--test")
    inputs = {r: [p for s, t, _ in files for p in (s, t)] for r, files in roles.items()}
    digest = fingerprint(opts, inputs)
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            existing = json.loads((out_dir / META).read_text(encoding="utf-8"))
            same = existing["fingerprint"] == digest
            outdated = existing["format"] == FORMAT and existing["format_version"] < FORMAT_VERSION
        except (OSError, ValueError, KeyError, TypeError):
            same = outdated = False
        if same:
            return out_dir, False
        if outdated:  # written by an earlier nmt.preprocess in a format nothing reads any more
            print(f"note: {out_dir} is in an older format; preparing it again", file=sys.stderr)
        elif not overwrite:
            raise ValueError(
                f"--out-dir {out_dir}: exists and was not built from these inputs and options "
                "(or is incomplete); pass --overwrite or choose another directory"
            )
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    tmp = _hidden(out_dir, "partial", os.getpid())
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise _write_error(out_dir, exc) from None
    try:
        meta = _build(opts, roles, tmp, workers)
        meta["fingerprint"] = digest
        meta["inputs"] = {role: [str(p) for p in paths] for role, paths in inputs.items()}
        write_meta(tmp, meta)
        _swap_in(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(out_dir, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir, True


def _hidden(out_dir: Path, kind: str, pid: int) -> Path:
    """The hidden sibling ``.<name>.partial-<pid>`` (being written) or ``.replaced-<pid>``
    (the old directory during a swap)."""
    return out_dir.parent / f".{out_dir.name}.{kind}-{pid}"


def _write_error(out_dir: Path, exc: OSError) -> ValueError:
    where = f" ({exc.filename})" if exc.filename else ""
    return ValueError(
        f"--out-dir {out_dir}: {exc.strerror or exc}{where}; nothing was replaced (the "
        "directory is as it was)"
    )


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Put the complete ``tmp`` in the place of ``out_dir`` (see the module docstring)."""
    staged = _hidden(out_dir, "replaced", os.getpid())
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    os.rename(out_dir, staged)  # only with --overwrite (or empty): the new one is whole
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(staged, out_dir)
        raise
    shutil.rmtree(staged, ignore_errors=True)


def finish_interrupted_swap(out_dir: Path) -> None:
    """Repair what a process killed during :func:`_swap_in` left: ``out_dir`` moved aside as
    ``.<name>.replaced-<pid>``. If that process's new directory is complete (its ``meta.json``
    exists) it takes the place, else the old one is put back; a finished swap's leftover old
    copy and the partial directories of killed runs are deleted. Swaps of processes still
    running are left alone."""
    for staged in sorted(out_dir.parent.glob(f".{out_dir.name}.replaced-*")):
        pid = staged.name.rsplit("-", 1)[1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        partial = _hidden(out_dir, "partial", int(pid))
        if out_dir.exists():
            shutil.rmtree(staged)
        elif (partial / META).is_file():
            os.rename(partial, out_dir)
            shutil.rmtree(staged)
            print(
                f"note: an earlier nmt.preprocess --overwrite (PID {pid}) was killed while it "
                f"replaced {out_dir}; its new data was complete and now takes the place",
                file=sys.stderr,
            )
        else:
            os.rename(staged, out_dir)
            print(
                f"note: an earlier nmt.preprocess --overwrite (PID {pid}) was killed while it "
                f"replaced {out_dir}; the old data is back in place",
                file=sys.stderr,
            )
    _remove_stale_partials(out_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return pid != os.getpid()  # our own PID: left by an earlier process that had it


def _build(opts: Options, roles: dict, root: Path, workers: int) -> dict[str, Any]:
    work = root / "work"
    work.mkdir()
    tok, words = steps.TextFiles(work, "tok", opts), Counter()
    raw_test: list[tuple[str, str]] = []
    for role, files in roles.items():
        jobs = ((chunk, opts, role) for chunk in steps.read_chunks(files))
        bar = steps.progress_bar(f"tokenize {role}", sum(n for *_, n in files))
        for result in steps.parallel(
            steps.tokenize_chunk, jobs, workers, bar, lambda j: len(j[0].pairs)
        ):
            for split in SPLITS:
                if result[split]:
                    tok.write(split, result[split])
            words.update(result["words"])
            raw_test += result["raw"]
        bar.close()
    tok.close()
    if not tok.counts["train"]:
        raise ValueError("--train: every line went to the valid split; no training pairs")
    codes = root / "bpe.codes"
    n_merges = steps.learn_bpe_codes(words, opts.bpe_merges, opts.bpe_min_frequency, codes)
    del words

    bpe, units = steps.TextFiles(work, "bpe", opts), Counter()
    stats: dict[str, dict[str, Any]] = {}
    for split in [s for s in SPLITS if tok.counts[s]]:
        jobs = ((pairs, str(codes), opts, split) for pairs in tok.pairs(split))
        bar = steps.progress_bar(f"bpe {split}", tok.counts[split])
        stats[split] = {"lines": tok.counts[split], "dropped": 0, "tokens": [0, 0]}
        for result in steps.parallel(steps.bpe_chunk, jobs, workers, bar, lambda j: len(j[0])):
            if result["pairs"]:
                bpe.write(split, result["pairs"])
            units.update(result["units"])
            stats[split]["dropped"] += result["dropped"]
            stats[split]["tokens"] = [
                a + b for a, b in zip(stats[split]["tokens"], result["tokens"], strict=True)
            ]
        bar.close()
    bpe.close()
    if not bpe.counts["train"]:
        raise ValueError(
            f"--train: no pair is left after length filtering (min_len {opts.min_len}, "
            f"max_len {opts.max_len}, ratio {opts.max_len_ratio})"
        )
    dictionary = Dictionary.build(units, opts.dict_pad_multiple)
    dictionary.save(root / "dict.txt")
    dtype = np.dtype("<u2") if len(dictionary) <= 1 << 16 else np.dtype("<i4")
    for split, st in stats.items():
        st["sentences"] = bpe.counts[split]
        steps.encode_split(bpe, split, dictionary, root, dtype, st["sentences"], st["tokens"])
        st["tokens"] = dict(zip(bpe.langs, st["tokens"], strict=True))
    if raw_test:
        for side, lang in enumerate((opts.source_lang, opts.target_lang)):
            raw = "".join(pair[side] + "\n" for pair in raw_test)
            (root / f"test.{lang}.raw.txt").write_text(raw, encoding="utf-8")
            shutil.copyfile(tok.path("test", lang), root / f"test.{lang}.tok.txt")
    shutil.rmtree(work)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source_lang": opts.source_lang,
        "target_lang": opts.target_lang,
        "vocab_size": len(dictionary),
        "dtype": dtype.str,
        "bpe_merges_learned": n_merges,
        "preprocess": asdict(opts),
        "splits": stats,
    }


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete hidden partial directories left by killed runs (their process is gone)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def options_from_config(path: str, overrides: Sequence[str]) -> Options:
    """The ``defaults.preprocess`` section of a table, with ``key=value`` overrides."""
    table = cfg.load_table(path)
    section = dict(table["defaults"].get("preprocess") or {})
    if not section:
        raise ValueError(f"{path}: no defaults.preprocess section")
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("preprocess.")
        if not sep or key not in section:
            raise ValueError(f"bad override {item!r}; preprocess keys: {', '.join(section)}")
        section[key] = cfg.parse_value(text)
    return Options.from_section(section, path)


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    opts = options_from_config(args.config, args.overrides)
    path, written = preprocess(
        opts,
        args.train,
        args.out_dir,
        valid=args.valid,
        test=args.test,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    if not written:
        print(f"{path} is up to date with its inputs and options; nothing to do")
        return
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    for split, s in meta["splits"].items():
        tokens = ", ".join(f"{n:,} {lang} tokens" for lang, n in s["tokens"].items())
        print(
            f"{split}: {s['sentences']:,} pairs of {s['lines']:,} ({s['dropped']:,} filtered "
            f"out), {tokens}"
        )
    print(
        f"wrote {path} (dictionary {meta['vocab_size']:,} symbols, "
        f"{meta['bpe_merges_learned']:,} BPE merges)"
    )


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m nmt.preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a table with a preprocess section")
    p.add_argument(
        "--train",
        nargs="+",
        required=True,
        metavar="PREFIX",
        help="training corpora: PREFIX.<src> and PREFIX.<tgt> each",
    )
    p.add_argument(
        "--valid",
        metavar="PREFIX",
        help="a valid set (default: every valid_every-th training line)",
    )
    p.add_argument("--test", metavar="PREFIX", help="the test set, e.g. newstest2014")
    p.add_argument("--out-dir", required=True, help="the data directory to create")
    p.add_argument("--workers", type=int, help="processes (default: the available cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a different existing one")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. bpe_merges=8000")
    return p


if __name__ == "__main__":
    cli.main(main)
