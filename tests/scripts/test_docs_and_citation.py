"""CITATION.cff is CFF 1.2.0 citing the paper; docs/results.md holds the paper's tables."""

from __future__ import annotations

import re

import yaml

from scripts import paper_results
from tests.scripts.conftest import REPO


def test_citation_cff() -> None:
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    for key in ("cff-version", "message", "title", "authors", "version", "preferred-citation"):
        assert key in cff, key
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    version = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    assert cff["version"] == version  # the software version users cite is the installed one
    paper = cff["preferred-citation"]
    assert paper["type"] == "article" and paper["year"] == 2020
    assert paper["authors"] == [{"family-names": "Ma", "given-names": "Xuezhe"}]
    assert "2009.13586" in paper["url"] and "2009.13586" in paper["journal"]
    assert " ".join(paper["title"].split()).startswith("Apollo: An Adaptive Parameter-wise")


def test_results_doc_holds_the_papers_tables() -> None:
    doc = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    for table, version in paper_results.PAPER:
        assert paper_results.markdown(table, version) in doc, (table, version)
    assert "94.21 (0.08)" in doc and "(images/quickstart_curves.png)" in doc
    assert (REPO / "docs" / "images" / "quickstart_curves.png").read_bytes()[:4] == b"\x89PNG"


def _user_docs() -> list:
    """What a user reads: the READMEs, docs/ and the configs' comments."""
    return [
        REPO / "README.md",
        *sorted(REPO.glob("*/README.md")),
        *sorted(REPO.glob("docs/*.md")),
        *sorted(REPO.glob("configs/**/*.yaml")),
    ]


def test_docs_and_configs_cite_nothing_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|\bseeds/|\bspec/|\b[Ii]ssue \d+|\b00[01]_[0-9a-f]")
    hits = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in _user_docs()
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert hits == []


def test_relative_links_resolve_and_the_data_doc_is_linked() -> None:
    for doc in _user_docs():
        if doc.suffix != ".md":
            continue
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)}: {target}"
    assert "](docs/data.md)" in (REPO / "README.md").read_text(encoding="utf-8")
    assert "](../docs/data.md" in (REPO / "language_model" / "README.md").read_text("utf-8")
    data = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    for needed in (
        "cifar-10-python.tar.gz",
        "python -m classification.data cifar10",
        "train/n01440764",
        "val/n01440764",
        "1b_word_vocab.txt",
        "python -m language_model.preprocess",
    ):
        assert needed in data, needed
