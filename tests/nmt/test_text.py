"""nmt.text's normalisation and tokenization against Moses' Perl scripts.

``PERL`` holds what current Moses (``normalize-punctuation.perl L | remove-non-printing-char.perl
| tokenizer.perl -a -l L`` for training text; ``’`` -> ``'`` then ``tokenizer.perl -a -l L``
for test text, as fairseq's ``prepare-wmt14en2de.sh`` runs them) printed for each line, with
perl 5.36. The cases are the kinds of line where sacremoses alone differed from the Perl tools
on real German and English text. With ``MOSES_SCRIPTS`` set to a mosesdecoder ``scripts``
folder, the last test runs the Perl scripts themselves on the same lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nmt.text import MosesPipeline

# (language, training text?, line, the Perl tools' output)
PERL = [
    # tokenizer.perl splits the period off a line's last word, even after a number or an
    # abbreviation (since 2018; sacremoses keeps "2." and "M." when they are prefixes)
    ("de", True, "Die Sitzung beginnt am 2.", "Die Sitzung beginnt am 2 ."),
    ("de", False, "Die Sitzung beginnt am 2.", "Die Sitzung beginnt am 2 ."),
    ("de", True, "Der richtige Dreh ist das A und O.", "Der richtige Dreh ist das A und O ."),
    ("de", True, "Ihr Schreiben vom 27. d. M.", "Ihr Schreiben vom 27. d. M ."),
    ("de", True, "Er wohnt in der Hauptstr. 5 usw.", "Er wohnt in der Hauptstr . 5 usw ."),
    ("de", True, "Der Preis stieg auf 12 Mio.", "Der Preis stieg auf 12 Mio ."),
    ("en", False, "It costs 3 euros, i.e. too much.", "It costs 3 euros , i.e. too much ."),
    # normalize-punctuation.perl's German rule s/(\.+)"(\s*[^<])/"$1$2/ sees the newline, so a
    # period before a line-final closing quote moves behind it (training text only)
    ("de", True, 'Er sagte: "Wir kommen morgen."', "Er sagte : &quot; Wir kommen morgen &quot; ."),
    ("de", False, 'Er sagte: "Wir kommen morgen."', "Er sagte : &quot; Wir kommen morgen . &quot;"),
    ("de", True, "„Das ist alles.“ Dann ging er.", "&quot; Das ist alles &quot; . Dann ging er ."),
    # the Perl normaliser runs on bytes: \d is an ASCII digit only
    ("de", True, "Es kostet 5\u00a0١٢ Euro.", "Es kostet 5 ١٢ Euro ."),
    # tokenizer.perl deletes the C0 separators U+001C-U+001F (Python's \s takes them as spaces)
    ("de", False, "Teil\x1fzwei und \x1cdrei.", "Teilzwei und drei ."),
    # unchanged cases: the English quotation rule, the final .' split
    ("en", True, 'He said "No." and left.', "He said &quot; No . &quot; and left ."),
    (
        "en",
        True,
        "'I did 9,000 steps today'. 'Big deal! I did 12,000.'",
        "&apos;I did 9,000 steps today &apos; . &apos; Big deal ! I did 12,000 . &apos;",
    ),
]


@pytest.mark.parametrize(("lang", "train", "line", "want"), PERL)
def test_tokenize_matches_the_perl_tools(lang, train, line, want):
    assert MosesPipeline(lang).tokenize(line, train=train) == want


MOSES = os.environ.get("MOSES_SCRIPTS")


@pytest.mark.skipif(
    not (MOSES and shutil.which("perl")),
    reason="MOSES_SCRIPTS (a mosesdecoder scripts folder) and perl compare with the Perl tools",
)
@pytest.mark.parametrize("lang", ["de", "en"])
def test_the_perl_tools_print_the_recorded_lines(lang, tmp_path):
    """Runs the Perl scripts on the recorded lines (each pipeline once for all of them)."""
    tok = Path(MOSES) / "tokenizer"
    for train in (True, False):
        cases = [(line, want) for lg, tr, line, want in PERL if (lg, tr) == (lang, train)]
        if not cases:
            continue
        text = "".join(line + "\n" for line, _ in cases)
        if train:
            cmd = (
                f"perl {tok}/normalize-punctuation.perl {lang} | "
                f"perl {tok}/remove-non-printing-char.perl | perl {tok}/tokenizer.perl -a -l "
                f"{lang} -q"
            )
        else:
            text = text.replace("’", "'")
            cmd = f"perl {tok}/tokenizer.perl -a -l {lang} -q"
        out = subprocess.run(cmd, shell=True, input=text.encode(), capture_output=True, check=True)
        got = [line.rstrip(" ") for line in out.stdout.decode().split("\n")[:-1]]
        assert got == [want for _, want in cases]
