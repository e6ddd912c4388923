"""Real German-English sentence pairs from the example sentences of the Ding dictionary.

Debian's ``trans-de-en`` package (source package ``ding``, GPL-2+) ships the dictionary as
``/usr/share/trans/de-en``: lines ``de | de :: en | en`` whose ``|``-separated fields
correspond. Some fields are whole example sentences; those whose both sides are at least 6
words, end in a full stop, question mark or exclamation mark, and hold no alternatives (a
semicolon or slash), placeholders (jdm., etw., sb., sth.), brackets or ellipses make about
9,500 clean pairs.
The data is GPL-licensed: it is fetched at run time (``scripts/nmt_demo.sh``), never
committed. Without installing the package::

    apt-get download trans-de-en && dpkg -x trans-de-en_*.deb ding/
    python -m nmt.ding --dict ding/usr/share/trans/de-en --out-dir data/ding

writes ``train.en``/``train.de`` and ``test.en``/``test.de`` (every ``test_every``-th pair);
``--corpus PREFIX`` splits ``PREFIX.de`` / ``PREFIX.en`` the same way instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine import cli

MIN_WORDS = 6
_EXCLUDED = re.compile(r"[;/{}\[\]<>~=()]|\b(jdm|jdn|jds|jd|etw|sb|sth|so)\b\.?|\.\.\.|…")


def sentence_pairs(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(german, english)`` example sentences of the dictionary file, in file order, once each."""
    seen: set[tuple[str, str]] = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or " :: " not in line:
                continue
            de, en = line.rstrip("\n").split(" :: ", 1)
            de_fields, en_fields = de.split(" | "), en.split(" | ")
            if len(de_fields) != len(en_fields):
                continue
            for d, e in zip(de_fields, en_fields, strict=True):
                d, e = d.strip(), e.strip()
                if min(len(d.split()), len(e.split())) < MIN_WORDS:
                    continue
                if d[-1] not in ".?!" or e[-1] not in ".?!":
                    continue
                if _EXCLUDED.search(d) or _EXCLUDED.search(e) or (d, e) in seen:
                    continue
                seen.add((d, e))
                yield d, e


def prefix_pairs(prefix: str) -> list[tuple[str, str]]:
    """``(german, english)`` pairs of ``PREFIX.de`` and ``PREFIX.en`` (any other corpus)."""
    paths = [Path(f"{prefix}.{lang}") for lang in ("de", "en")]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"--corpus {prefix}: no such file {p}")
    de, en = (p.read_text(encoding="utf-8").splitlines() for p in paths)
    if len(de) != len(en):
        raise ValueError(f"--corpus {prefix}: {paths[0]} has {len(de)} lines, {paths[1]} {len(en)}")
    return list(zip(de, en, strict=True))


def write_corpus(
    pairs: list[tuple[str, str]], out_dir: str | Path, test_every: int = 20
) -> dict[str, int]:
    """``train`` and ``test`` prefixes (``.en``/``.de``) in ``out_dir``, every
    ``test_every``-th pair to test; returns the pair counts."""
    if test_every < 2:  # 1 would leave no training pair, 0 or less no test split
        raise ValueError(f"--test-every must be at least 2, got {test_every}")
    if len(pairs) < 2 * test_every:
        raise ValueError(f"{len(pairs)} sentence pairs are too few for a demo")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": [p for i, p in enumerate(pairs, 1) if i % test_every],
        "test": [p for i, p in enumerate(pairs, 1) if not i % test_every],
    }
    for name, chosen in splits.items():
        for side, lang in ((1, "en"), (0, "de")):
            text = "".join(pair[side] + "\n" for pair in chosen)
            path = out / f"{name}.{lang}"
            # An unchanged file keeps its mtime, so nmt.preprocess finds its data up to date.
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
    return {name: len(chosen) for name, chosen in splits.items()}


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m nmt.ding", description=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dict", help="the de-en file of Debian's trans-de-en")
    source.add_argument("--corpus", metavar="PREFIX", help="PREFIX.de and PREFIX.en instead")
    p.add_argument("--out-dir", required=True, help="where train.{en,de} and test.{en,de} go")
    p.add_argument("--test-every", type=int, default=20, help="every N-th pair is test")
    args = p.parse_args(argv)
    if args.dict is not None:
        if not Path(args.dict).is_file():
            raise ValueError(f"--dict {args.dict}: no such file (apt-get download trans-de-en)")
        pairs = list(sentence_pairs(args.dict))
    else:
        pairs = prefix_pairs(args.corpus)
    counts = write_corpus(pairs, args.out_dir, args.test_every)
    print(f"{counts['train']} training and {counts['test']} test pairs in {args.out_dir}")


if __name__ == "__main__":
    cli.main(main)
