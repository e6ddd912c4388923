"""The code snippets of docs/integrations.md, by name (``<!-- snippet: NAME -->`` before each)."""

from __future__ import annotations

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def snippet(name: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- snippet: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"docs/integrations.md has no snippet {name!r}"
    return match.group(1)


def run_snippet(name: str) -> dict:
    namespace: dict = {"__name__": f"docs_integrations_{name}"}
    exec(compile(snippet(name), f"{DOC}:{name}", "exec"), namespace)
    return namespace
