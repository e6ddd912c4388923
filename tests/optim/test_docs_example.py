"""docs/optimizers.md's "Adding an optimizer" example, run as written, through conformance."""

import pathlib
import re

import pytest

import apollo_optim as optim
from tests.optim.conformance import CHECKS

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "optimizers.md"


def example_code() -> str:
    section = DOC.read_text(encoding="utf-8").split("## Adding an optimizer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def registered_example():
    namespace = {}
    exec(compile(example_code(), str(DOC), "exec"), namespace)
    yield "signsgd"
    optim.unregister("signsgd")


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_docs_example_passes_conformance(registered_example, check):
    assert registered_example in optim.names()
    check(registered_example)
