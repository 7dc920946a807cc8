"""Fixtures shared by the operator tests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture
def executor():
    """The thread pool the operator runs blocking API calls on."""
    with ThreadPoolExecutor(2) as pool:
        yield pool
