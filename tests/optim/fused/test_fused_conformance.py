"""The fused implementation of every optimizer that has one, through conformance.py's
implementation checks (on CUDA, or on CPU tensors under Triton's interpreter)."""

import pytest

import apollo_optim as optim
from tests.optim.conformance import case_id, cases
from tests.optim.optimizer_infos import default_info

from .common import needs_fused

pytestmark = [
    needs_fused,
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
]


@pytest.mark.parametrize(
    "case", cases([default_info(n) for n in optim.names()], fused=True), ids=case_id
)
def test_implementation(case):
    check, *args = case
    check(*args)
