"""Text operations of the WMT-14 recipe, as Python equivalents of the Moses and fairseq scripts.

- training text: ``normalize-punctuation.perl -l L`` → ``remove-non-printing-char.perl`` →
  ``tokenizer.perl -a -l L`` (:class:`MosesPipeline` with ``train=True``);
- test text: ``’`` → ``'`` and ``tokenizer.perl -a -l L`` only (``train=False``);
- ``clean-corpus-n.perl -ratio R L1 L2 out MIN MAX`` after BPE (:func:`clean_pair`);
- scoring: BPE removal (``--remove-bpe '@@ '``), fairseq's compound splitting
  (``compound_split_bleu.sh``) and Moses detokenization (:func:`remove_bpe`,
  :func:`compound_split`, :class:`MosesPipeline.detokenize`).

sacremoses with ``perl_parity=True`` is the base; two rules of the Perl tools it ports
differently are ported again here (:class:`_Tokenizer`, :meth:`MosesPipeline.tokenize`), so
that the output matches current Moses' ``normalize-punctuation.perl`` and ``tokenizer.perl``
(``tests/nmt/test_text.py`` holds the cases, and compares with the Perl scripts where they are
installed).
"""

from __future__ import annotations

import re

import regex
from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer

_NON_PRINTING = regex.compile(r"\p{C}")  # what remove-non-printing-char.perl replaces by a space
_COMPOUND = re.compile(r"(\S)-(\S)")
_BPE_SEPARATOR = "@@ "
MAX_WORD_LENGTH = 1000  # clean-corpus-n.perl's default -max-word-length


_ENDS_WITH_PERIOD = re.compile(r"^(\S+)\.$")
_LEADING_DIGITS = re.compile(r"^[0-9]+")
# Python's \s also matches the C0 separators U+001C-U+001F, Perl's does not: tokenizer.perl
# deletes them (with the other control characters) where sacremoses would leave a space.
_C0_SEPARATORS = re.compile("[\x1c-\x1f]")


class _Tokenizer(MosesTokenizer):
    """sacremoses' tokenizer with ``tokenizer.perl``'s loop over words ending in a period.

    Since 2018 the Perl loop splits the period off the last word of a line whatever the word
    (``am 2.`` -> ``am 2 .``, ``usw.`` -> ``usw .``: "unlikely to be non-breaking prefixes"),
    and it splits words on single spaces, so a word before a doubled space sees an empty next
    word (never lowercase); sacremoses keeps a line-final ``2.`` and looks past empty words.
    """

    def handles_nonbreaking_prefixes(self, text: str) -> str:
        words = re.split(r"\s", text)
        while words and not words[-1]:  # Perl's split drops trailing empty fields
            words.pop()
        for i, word in enumerate(words):
            match = _ENDS_WITH_PERIOD.match(word)
            if not match:
                continue
            pre = match.group(1)
            if i == len(words) - 1:
                words[i] = pre + " ."
                continue
            following = words[i + 1]
            if (
                ("." in pre and self.isanyalpha(pre))
                or (pre in self.NONBREAKING_PREFIXES and pre not in self.NUMERIC_ONLY_PREFIXES)
                or (following and self.islower(following[0]))
            ):
                continue
            if pre in self.NUMERIC_ONLY_PREFIXES and _LEADING_DIGITS.match(following):
                continue
            words[i] = pre + " ."
        return " ".join(words)


class MosesPipeline:
    """Normaliser, tokenizer and detokenizer of one language, configured as the recipe is."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._normalizer = MosesPunctNormalizer(lang, perl_parity=True)
        # normalize-punctuation.perl runs on bytes, where \d is an ASCII digit only (Python's
        # \d also takes Arabic-Indic and other digits: "5\u00a0١٢" would become "5.١٢").
        self._normalizer.substitutions = [
            (pattern.replace(r"\d", "[0-9]"), replacement)
            for pattern, replacement in self._normalizer.substitutions
        ]
        self._tokenizer = _Tokenizer(lang)
        self._detokenizer = MosesDetokenizer(lang)

    def tokenize(self, line: str, *, train: bool) -> str:
        """One line (without its newline) of training (``train=True``) or test text, tokenized
        with ``-a``."""
        if train:
            # normalize-punctuation.perl sees the line with its newline: the German rule
            # s/(\.+)"(\s*[^<])/"$1$2/ moves a line-final period before the closing quote.
            line = self._normalizer.normalize(line + "\n")
            line = _NON_PRINTING.sub(" ", line.removesuffix("\n"))
        else:
            line = line.replace("’", "'")
        line = _C0_SEPARATORS.sub("", line)
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
