"""Every command's ``--help``: named as it is typed, plain text (no reST markup), examples with
their line breaks whatever the terminal's width, and a help text for every option.

The commands are found, not listed: every module of the project run as ``python -m X`` (it has
an ``if __name__ == "__main__":`` block) and every ``scripts/*.sh``.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts.conftest import ENV, REPO

PACKAGES = ("engine", "classification", "language_model", "nmt", "scripts", "benchmarks")
MODULES = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts)
    for package in PACKAGES
    for path in (REPO / package).glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)
SCRIPTS = sorted(path.name for path in (REPO / "scripts").glob("*.sh"))
MARKUP = re.compile(r"``|:[a-z]+:`|::$", re.M)
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
SECTION = re.compile(r"^(positional arguments|options|optional arguments):$")


def module_help(module: str, columns: int, monkeypatch, capsys) -> str:
    """``python -m MODULE --help`` in this process (torch is imported once, not per module)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "argv", ["python", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    out, err = capsys.readouterr()
    assert exc.value.code in (0, None), err
    return out


def script_help(script: str, columns: int) -> str:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / script), "--help"],
        env={**ENV, "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def check(text: str, wide: str, invocation: str) -> None:
    """The rules every help text follows (``wide``: the same help on a 200-column terminal)."""
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: {invocation} "), lines[0]
    assert not MARKUP.search(text), MARKUP.search(text).group(0)
    usage_end = lines.index("")  # the usage block ends at the first blank line
    body, wide_body = lines[usage_end:], wide.splitlines()[wide.splitlines().index("") :]
    # Examples keep their lines: the same at 80 and 200 columns, one command per line.
    examples = [x for x in body if invocation in x and not x.startswith("  -")]
    assert examples == [x for x in wide_body if invocation in x and not x.startswith("  -")]
    assert not [x for x in examples if x.count(invocation) > 1]
    # Every option and positional argument has a help text (on a wide terminal: on its line,
    # two spaces after the option, or on the next, indented further).
    wide_lines = wide.splitlines()
    section = False
    for i, line in enumerate(wide_lines):
        if SECTION.match(line):
            section = True
        elif not line.strip():
            section = False
        elif section and re.match(r"  \S", line):
            following = wide_lines[i + 1] if i + 1 < len(wide_lines) else ""
            has_help = "  " in line.strip() or re.match(r" {6,}\S", following)
            assert has_help, f"no help: {line.strip()}"


@pytest.mark.parametrize("module", MODULES)
def test_module_help(module: str, monkeypatch, capsys) -> None:
    text = module_help(module, 80, monkeypatch, capsys)
    wide = module_help(module, 200, monkeypatch, capsys)
    check(text, wide, f"python -m {module}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script: str) -> None:
    check(script_help(script, 80), script_help(script, 200), f"bash scripts/{script}")


def test_the_commands_are_found() -> None:
    assert {"scripts.sweep", "scripts.report", "classification.train", "nmt.evaluate"} <= set(
        MODULES
    )
    assert {"quickstart.sh", "cifar10.sh", "wmt14.sh"} <= set(SCRIPTS)
    for module in MODULES:
        assert module.split(".")[0] != "tests"
    assert Path(REPO / "scripts" / "sweep.py").is_file()
