"""Every registered optimizer x its implementations x dtypes, through conformance.py:
registering is enough to join. The fused implementation runs in tests/optim/fused."""

import pytest
import torch

import apollo_optim as optim
from tests.optim.conformance import RULE_CHECKS, case_id, cases
from tests.optim.optimizer_infos import INFOS, default_info

INFOS_OF_REGISTERED = [default_info(name) for name in optim.names()]


@pytest.mark.parametrize("case", cases(INFOS_OF_REGISTERED, fused=False), ids=case_id)
def test_implementation(case):
    check, *args = case
    torch._dynamo.reset()  # compiled cases trace afresh (no recompile limit carried over)
    check(*args)


@pytest.mark.parametrize("check", RULE_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("info", INFOS_OF_REGISTERED, ids=str)
def test_rule(info, check):
    check(info)


def test_every_optimizer_of_the_package_has_its_info():
    assert sorted(INFOS) == optim.names()
