"""Fixtures for every test folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: the tests' tiny models and optimizer steps run
    many times slower with two OpenMP threads on a shared 2-core CPU (a tiny two-epoch run
    took 12 s with the default thread count and 0.8 s with one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
