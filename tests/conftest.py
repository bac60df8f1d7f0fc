"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from core.store import Store


@pytest.fixture
def store(tmp_path):
    """A fresh, empty store in the test's temporary folder."""
    return Store(tmp_path / "studio.db")
