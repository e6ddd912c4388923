"""docs/adding_an_optimizer.md, run as written: its files are written, its commands are run.

The only change: every ``scripts/quickstart.sh`` command gets ``--seeds 1 --epochs 2`` appended,
and the main job the page starts from is the shared short quickstart (two rows), so the test
stays short. The commands run in a scratch folder that stands in for the repository root
(``scripts/`` is linked into it), so nothing is written into the working tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.scripts.conftest import ENV, REPO

DOC = REPO / "docs" / "adding_an_optimizer.md"
BLOCK = re.compile(r"^```(python|yaml|bash)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    found = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert [kind for kind, _ in found] == ["python", "yaml", "bash", "yaml", "bash"]
    return found


@pytest.mark.slow
def test_walkthrough_runs_as_written(short_quickstart, tmp_path: Path) -> None:
    out, _ = short_quickstart
    work = tmp_path
    (work / "scripts").symlink_to(REPO / "scripts")
    shutil.copytree(out / "quickstart", work / "runs" / "quickstart")  # the main job's runs
    shutil.rmtree(work / "runs" / "quickstart" / "report")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    outputs = []
    for kind, text in blocks():
        if kind in ("python", "yaml"):  # a file: its first line names it
            name = text.splitlines()[0].lstrip("# ").strip()
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text, encoding="utf-8")
            continue
        script = re.sub(
            r"(scripts/quickstart\.sh(?:[^\n]|\\\n)*?)(\n|$)",
            r"\1 --seeds 1 --epochs 2\2",
            text.replace("\\\n", " "),
        )
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)

    trained, dry_run = outputs  # print-config + quickstart (+ its report); the dry run
    assert '"name": "lion"' in trained and '"dataset": "digits"' in trained
    assert '"plugins": [\n    "my_experiments/lion.py"\n  ]' in trained
    assert "[1/1] Lion" in trained
    rows = [line.split("|")[1].strip() for line in trained.splitlines() if line.startswith("| ")]
    assert rows == ["Method", "SGD", "Apollo", "Lion"]  # the paper's rows, then the new one
    lion = work / "runs" / "quickstart" / "current" / "Lion" / "cosine" / "seed1" / "results.json"
    assert '"finished": true' in lion.read_text()
    assert (work / "runs/quickstart/report/curves_quickstart_current_cosine.png").is_file()
    commands = dry_run.strip().splitlines()
    assert len(commands) == 14 and all("--row Lion" in c for c in commands)
    assert all(c.endswith("--plugin my_experiments/lion.py") for c in commands)
