"""docs/optimizers.md's "Adding an optimizer" example, run as written, through conformance."""

import pathlib
import re

import pytest

import apollo_optim as optim
from tests.optim.conformance import RULE_CHECKS, case_id, cases
from tests.optim.optimizer_infos import default_info

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "optimizers.md"


def example_code() -> str:
    section = DOC.read_text(encoding="utf-8").split("## Adding an optimizer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def registered_example():
    namespace = {}
    exec(compile(example_code(), str(DOC), "exec"), namespace)
    yield default_info("signsgd")
    optim.unregister("signsgd")


@pytest.mark.parametrize("check", RULE_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_docs_example_follows_the_rules(registered_example, check):
    check(registered_example)


@pytest.mark.parametrize("case", cases([default_info("signsgd")], fused=False), ids=case_id)
def test_docs_example_implementation(registered_example, case):
    check, _, impl, dtype = case
    check(registered_example, impl, dtype)
