"""``pip install .`` (not editable) into a fresh venv: one top-level package, ``apollo_optim``;
and the documented commands work from another directory, the checkout's scripts called by path.

Fast on purpose: the venv sees this interpreter's packages (torch, numpy, ...) through a
``.pth`` line and the project is installed with ``--no-deps --no-build-isolation``, from a copy
of the checkout (a build writes ``build/`` and ``*.egg-info`` next to the sources).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.scripts.conftest import ENV, REPO

SKIP = (".git", "runs", "data", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".venv")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding ``pip install .`` of a copy of this checkout; its python."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*SKIP), symlinks=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # this interpreter's packages (torch, ...) after the venv's own, as --system-site-packages
    # would give a venv made from the base interpreter; .pth files there are not run
    parents = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    Path(site, "parent_site_packages.pth").write_text("\n".join(sorted(parents)) + "\n")
    install = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*install, "--no-index", str(source)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


def _run(cmd: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_install_holds_one_top_level_package(venv: Path, tmp_path: Path) -> None:
    """The wheel's RECORD names apollo_optim and its dist-info, nothing else: no engine,
    scripts or task tree in site-packages; the library imports from anywhere."""
    code = (
        "import importlib.metadata as m, json; d = m.distribution('apollo-optim'); "
        "print(json.dumps([sorted({f.parts[0] for f in d.files}), d.read_text('top_level.txt')]))"
    )
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = _run([venv, "-c", code], tmp_path, clean)
    assert proc.returncode == 0, proc.stderr
    tops, top_level = json.loads(proc.stdout)
    assert [t for t in tops if not t.endswith(".dist-info")] == ["apollo_optim"], tops
    assert top_level is None or top_level.split() == ["apollo_optim"]
    imported = _run(
        [venv, "-c", "import apollo_optim as optim; print(optim.__file__, optim.names())"],
        tmp_path,
        clean,
    )
    assert imported.returncode == 0, imported.stderr
    assert str(venv.parent.parent) in imported.stdout and "apollo" in imported.stdout
    names = ["engine", "scripts", "classification", "language_model", "nmt", "benchmarks"]
    code = f"import importlib.util as u; print([n for n in {names} if u.find_spec(n)])"
    found = _run([venv, "-c", code], tmp_path, clean)
    assert found.returncode == 0 and found.stdout.strip() == "[]", found.stdout + found.stderr


@pytest.mark.slow
def test_the_documented_commands_work_from_another_directory(venv: Path, tmp_path: Path) -> None:
    """The quickstart and a table script called by path from elsewhere: paths are the caller's."""
    env = {**ENV, "PYTHON": str(venv), "PATH": os.pathsep.join([str(venv.parent), ENV["PATH"]])}
    env.pop("PYTHONPATH", None)
    quick = ["bash", REPO / "scripts/quickstart.sh", "--rows", "SGD", "--seeds", "1"]
    quick = _run([*quick, "--epochs", "1", "--out-dir", "out"], tmp_path, env)
    assert quick.returncode == 0, quick.stdout + quick.stderr
    results = tmp_path / "out/quickstart/current/SGD/cosine/seed1/results.json"
    assert json.loads(results.read_text())["finished"]
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    for script in ("cifar10.sh", "imagenet.sh", "lm1b.sh", "wmt14.sh"):
        dry = ["bash", REPO / "scripts" / script, "--data-dir", "data/cifar10", "--seeds", "1"]
        dry = _run([*dry, "--gpus", "0", "--dry-run"], tmp_path, env)
        assert dry.returncode == 0, script + dry.stderr
        commands = dry.stdout.splitlines()
        assert commands and all("--data-dir data/cifar10 --device cpu" in c for c in commands)
        assert all(f"--config {REPO / 'configs'}/" in c for c in commands if ".train" in c)
