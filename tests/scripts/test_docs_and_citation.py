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
