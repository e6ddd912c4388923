"""Tokenized BLEU (the paper's convention), compound splitting and detokenized sacreBLEU."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import sacrebleu

from engine import cli
from nmt import score
from nmt.text import MosesPipeline, compound_split, remove_bpe
from tests.nmt.conftest import PAIRS

REFS = [MosesPipeline("de").tokenize(de, train=False) for _, de in PAIRS]


def _hyps() -> list[str]:
    """Plausible system output: some words dropped, swapped or changed, every few lines."""
    out = []
    for i, ref in enumerate(REFS):
        words = ref.split()
        if i % 3 == 0 and len(words) > 3:
            words[1], words[2] = words[2], words[1]
        if i % 4 == 1:
            words = words[:-2] + words[-1:]
        if i % 5 == 2:
            words[0] = "Dies"
        out.append(" ".join(words))
    return out


def test_compound_splitting_on_aggressive_hyphen_text():
    tok = MosesPipeline("de").tokenize("Die Nord-Süd-Linie und die E-Mail.", train=False)
    assert tok == "Die Nord @-@ Süd @-@ Linie und die E @-@ Mail ."
    assert compound_split(tok) == (
        "Die Nord @ ##AT##-##AT## @ Süd @ ##AT##-##AT## @ Linie und die E @ ##AT##-##AT## @ Mail ."
    )
    # perl's s///g does not rescan its own output: a-b-c splits once, as fairseq's script
    assert compound_split("a-b-c x-y") == "a ##AT##-##AT## b-c x ##AT##-##AT## y"
    assert compound_split("- a - b") == "- a - b"


def test_bleu_by_hand():
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat today"
    h, r = hyp.split(), ref.split()
    p = []
    for n in range(1, 5):
        hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
        rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
        p.append(sum(min(c, rc[g]) for g, c in hc.items()) / sum(hc.values()))
    assert p == [5 / 6, 3 / 5, 2 / 4, 1 / 3]
    want = 100 * math.exp(1 - 7 / 6) * math.exp(sum(math.log(x) for x in p) / 4)
    got = score.corpus_bleu([hyp], [ref])
    assert got.score == pytest.approx(want, rel=1e-12) and got.brevity_penalty < 1
    assert score.corpus_bleu(["a b c"], ["x y z"]).score == 0.0  # no smoothing


@pytest.mark.parametrize("split", [False, True])
def test_tokenized_bleu_equals_sacrebleu_without_tokenization(split):
    hyps = _hyps()
    ours = score.tokenized_bleu(hyps, REFS, split_compounds=split)
    if split:
        hyps, refs = [compound_split(h) for h in hyps], [compound_split(r) for r in REFS]
    else:
        refs = REFS
    theirs = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True)
    assert 20 < ours.score < 100
    assert ours.score == pytest.approx(theirs.score, abs=1e-9)
    assert ours.precisions == pytest.approx(theirs.precisions, abs=1e-9)
    assert (ours.hyp_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)


def test_compound_splitting_raises_bleu_on_hyphenated_text():
    refs = ["die Nord @-@ Süd @-@ Linie ist gesperrt ."]
    hyps = ["die Nord @-@ West @-@ Linie ist gesperrt ."]
    plain = score.tokenized_bleu(hyps, refs, split_compounds=False).score
    split = score.tokenized_bleu(hyps, refs, split_compounds=True).score
    assert split > plain > 0


def test_remove_bpe_and_detokenized_sacrebleu():
    assert remove_bpe("Die Kin@@ der spiel@@ en im Gar@@ ten .") == "Die Kinder spielen im Garten ."
    de = MosesPipeline("de")
    raw = [de_ for _, de_ in PAIRS]
    detok = [de.detokenize(t) for t in REFS]
    assert detok[20] == raw[20] == "Die Nord-Süd-Linie ist gesperrt."  # @-@ and &quot; undone
    assert detok[11] == raw[11] and sum(d == r for d, r in zip(detok, raw, strict=True)) >= 38
    value, signature = score.sacrebleu_score(detok, raw)
    assert value > 90 and "tok:13a" in signature and "nrefs:1" in signature


def test_cli_scores_files_and_reports_bad_input(tmp_path, capsys):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("\n".join(_hyps()) + "\n", encoding="utf-8")
    ref.write_text("\n".join(REFS) + "\n", encoding="utf-8")
    cli.main(score.main, ["--hyp", str(hyp), "--ref", str(ref), "--compound-split"])
    want = score.tokenized_bleu(_hyps(), REFS, split_compounds=True).score
    assert capsys.readouterr().out.startswith(f"BLEU = {want:.2f} ")
    ref.write_text("\n".join(REFS[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(score.main, ["--hyp", str(hyp), "--ref", str(ref)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and str(ref) in err[0]


def test_lines_split_on_newline_only_and_tokens_on_ascii_whitespace(tmp_path, capsys):
    """multi-bleu.perl and fairseq: U+2028, a form feed or NEL do not end a line; a no-break
    space does not end a token (str.splitlines() / str.split() did both)."""
    assert score.words("a\u00a0b c\td\r") == ["a\u00a0b", "c", "d"]
    assert score.lines("one\u2028two\x0cthree\x85\nfour\r\n") == [
        "one\u2028two\x0cthree\x85",
        "four\r",
    ]
    # "10\u00a0000" is one token of the reference, "Euro\u2028heute" one of both: one line each
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("es kostet 10 000 Euro\u2028heute\n", encoding="utf-8")
    ref.write_text("es kostet 10\u00a0000 Euro\u2028heute\n", encoding="utf-8")
    cli.main(score.main, ["--hyp", str(hyp), "--ref", str(ref)])
    assert capsys.readouterr().out.startswith(
        "BLEU = 0.00 60.0/25.0/0.0/0.0 (BP=1.000, ratio=1.250, hyp_len=5, ref_len=4)"
    )
