"""Shared pytest configuration: async tests run on asyncio through anyio's plugin."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # grpc.aio needs asyncio; labstream runs on asyncio everywhere.
    return "asyncio"
