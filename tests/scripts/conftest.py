"""One short quickstart (two rows, one seed, two epochs) shared by the tests that need its runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: The scripts call `python`: make it this interpreter, whether or not its venv is activated.
_BIN = str(Path(sys.executable).parent)
ENV = {
    **os.environ,
    "PYTHON": sys.executable,
    "PATH": os.pathsep.join([_BIN, os.environ.get("PATH", "")]),
}


def run_quickstart(out: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = ["bash", str(REPO / "scripts" / "quickstart.sh"), "--out-dir", str(out), *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def short_quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``bash scripts/quickstart.sh --seeds 1 --rows SGD,Apollo --epochs 2``: (out dir, stdout)."""
    out = tmp_path_factory.mktemp("quickstart") / "runs"
    proc = run_quickstart(out, "--seeds", "1", "--rows", "SGD,Apollo", "--epochs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout
