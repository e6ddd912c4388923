"""BLEU both ways the WMT-14 En→De literature reports it.

::

    python -m nmt.score --hyp H --ref R [--compound-split]     # tokenized BLEU
    python -m nmt.score --hyp H --ref R --sacrebleu            # detokenized sacreBLEU

**Tokenized BLEU** (the paper's numbers): hypothesis and reference are Moses-tokenized text
with BPE removed, one line per ``\n`` and tokens split on ASCII whitespace (a no-break space
stays inside its token), 4-gram corpus BLEU with the brevity penalty and no smoothing
(``multi-bleu.perl``, ``fairseq-score``); with ``--compound-split`` both first pass
fairseq's ``compound_split_bleu.sh`` rule (``nmt.text.compound_split``). sacreBLEU with
``tokenize="none"`` gives the same number. **Detokenized sacreBLEU**: detokenized hypotheses
against the raw reference (newstest2014 as distributed), sacreBLEU's own ``13a`` tokenization,
reported with its signature.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import cli

from .text import compound_split

MAX_ORDER = 4
# multi-bleu.perl splits on Perl's byte-mode whitespace, fairseq's scorer on " ": ASCII only. A
# no-break space or U+2028 inside a token is part of the token (str.split() would cut it).
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")


@dataclass
class Bleu:
    score: float  # 0-100
    precisions: list[float]  # 0-100 per order
    brevity_penalty: float
    hyp_len: int
    ref_len: int

    def __str__(self) -> str:
        p = "/".join(f"{x:.1f}" for x in self.precisions)
        return (
            f"BLEU = {self.score:.2f} {p} (BP={self.brevity_penalty:.3f}, "
            f"ratio={self.hyp_len / max(self.ref_len, 1):.3f}, hyp_len={self.hyp_len}, "
            f"ref_len={self.ref_len})"
        )


def words(line: str) -> list[str]:
    """The tokens of a line: split on ASCII whitespace only (``multi-bleu.perl``)."""
    return [w for w in _ASCII_SPACE.split(line) if w]


def lines(text: str) -> list[str]:
    """The lines of a file's text: split on ``\n`` only (as Perl's and fairseq's readers do; a
    form feed or U+2028 does not end a line), a final ``\n`` ending the last line."""
    parts = text.split("\n")
    return parts[:-1] if parts[-1] == "" else parts


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> Bleu:
    """Corpus BLEU on ASCII-whitespace tokens (one reference per line, no smoothing)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    matches, totals = [0] * MAX_ORDER, [0] * MAX_ORDER
    hyp_len = ref_len = 0
    for hyp, ref in zip(hyps, refs, strict=True):
        h, r = words(hyp), words(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, MAX_ORDER + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    precisions = [100.0 * m / t if t else 0.0 for m, t in zip(matches, totals, strict=True)]
    bp = 1.0 if hyp_len > ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)
    if min(matches) == 0:
        return Bleu(0.0, precisions, bp, hyp_len, ref_len)
    log_mean = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / MAX_ORDER
    return Bleu(100.0 * bp * math.exp(log_mean), precisions, bp, hyp_len, ref_len)


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str], *, split_compounds: bool) -> Bleu:
    """The paper's convention (with ``split_compounds``) on tokenized, BPE-free text."""
    if split_compounds:
        hyps, refs = [compound_split(h) for h in hyps], [compound_split(r) for r in refs]
    return corpus_bleu(hyps, refs)


def sacrebleu_score(detok_hyps: Sequence[str], raw_refs: Sequence[str]) -> tuple[float, str]:
    """Detokenized sacreBLEU (13a) and its signature."""
    import sacrebleu

    if len(detok_hyps) != len(raw_refs):
        raise ValueError(f"{len(detok_hyps)} hypotheses but {len(raw_refs)} references")
    metric = sacrebleu.BLEU()
    result = metric.corpus_score(list(detok_hyps), [list(raw_refs)])
    return float(result.score), str(metric.get_signature())


def _lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return lines(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m nmt.score", description=__doc__.split("\n")[0])
    p.add_argument("--hyp", required=True, help="hypotheses, one per line")
    p.add_argument("--ref", required=True, help="references, one per line")
    p.add_argument(
        "--compound-split",
        action="store_true",
        help="split a-b as a ##AT##-##AT## b in both (the paper's convention)",
    )
    p.add_argument(
        "--sacrebleu",
        action="store_true",
        help="detokenized hypotheses vs the raw reference, sacreBLEU 13a",
    )
    args = p.parse_args(argv)
    hyps, refs = _lines(args.hyp), _lines(args.ref)
    if len(hyps) != len(refs):
        raise ValueError(f"{args.hyp} has {len(hyps)} lines but {args.ref} has {len(refs)}")
    if args.sacrebleu:
        score, signature = sacrebleu_score(hyps, refs)
        print(f"sacreBLEU = {score:.2f}  {signature}")
    else:
        print(tokenized_bleu(hyps, refs, split_compounds=args.compound_split))


if __name__ == "__main__":
    cli.main(main)
