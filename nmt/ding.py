"""Real German-English sentence pairs from the example sentences of the Ding dictionary.

Debian's ``trans-de-en`` package (source package ``ding``, GPL-2+) ships the dictionary as
``/usr/share/trans/de-en``: lines ``de | de :: en | en`` whose ``|``-separated fields
correspond. Some fields are whole example sentences; those whose both sides are at least 6
words, end in ``.``, ``?`` or ``!``, and hold no alternatives (``;``, ``/``), placeholders
(``jdm.``, ``etw.``, ``sb.``, ``sth.``), brackets or ellipses make about 9,500 clean pairs.
The data is GPL-licensed: it is fetched at run time (``scripts/nmt_demo.sh``), never
committed. Without installing the package::

    apt-get download trans-de-en && dpkg -x trans-de-en_*.deb ding/
    python -m nmt.ding --dict ding/usr/share/trans/de-en --out-dir data/ding

writes ``train.en``/``train.de`` and ``test.en``/``test.de`` (every ``test_every``-th pair).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

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


def write_corpus(dictionary: str | Path, out_dir: str | Path, test_every: int = 20) -> dict:
    """``train`` and ``test`` prefixes (``.en``/``.de``) in ``out_dir``; returns pair counts."""
    path = Path(dictionary)
    if not path.is_file():
        raise ValueError(f"--dict {path}: no such file (apt-get download trans-de-en; dpkg -x)")
    pairs = list(sentence_pairs(path))
    if not pairs:
        raise ValueError(f"--dict {path}: no example sentence pairs (not the Ding de-en file?)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": [p for i, p in enumerate(pairs, 1) if i % test_every],
              "test": [p for i, p in enumerate(pairs, 1) if not i % test_every]}  # fmt: skip
    for name, chosen in splits.items():
        for side, lang in ((1, "en"), (0, "de")):
            text = "".join(pair[side] + "\n" for pair in chosen)
            (out / f"{name}.{lang}").write_text(text, encoding="utf-8")
    return {name: len(chosen) for name, chosen in splits.items()}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nmt.ding", description=__doc__.split("\n")[0])
    p.add_argument("--dict", required=True, help="the de-en file of Debian's trans-de-en")
    p.add_argument("--out-dir", required=True, help="where train.{en,de} and test.{en,de} go")
    p.add_argument("--test-every", type=int, default=20, help="every N-th pair is test")
    args = p.parse_args(argv)
    counts = write_corpus(args.dict, args.out_dir, args.test_every)
    print(f"{counts['train']} training and {counts['test']} test pairs in {args.out_dir}")


if __name__ == "__main__":
    from engine import cli

    cli.main(main)
