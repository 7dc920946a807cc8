"""Fixtures of the webhook tests (helpers live in webhook_fixtures.py)."""

import pytest
from fastapi.testclient import TestClient
from webhook_fixtures import ML_PLATFORM, make_client


@pytest.fixture
def client() -> TestClient:
    return make_client(ML_PLATFORM)
