"""Every registered optimizer x every check in conformance.py: registering is enough."""

import pytest

import apollo_optim as optim
from tests.optim.conformance import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", optim.names())
def test_conformance(name, check):
    check(name)
