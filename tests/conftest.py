"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from core.store import Store


@pytest.fixture
def store(tmp_path):
    """A fresh, empty store in the test's temporary folder."""
    return Store(tmp_path / "studio.db")


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (reproducible reductions, no oversubscription on the
    2-core CI machine); the previous setting is restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
