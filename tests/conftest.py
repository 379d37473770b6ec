"""Shared fixtures: the anyio backend, a recording fake Danube, and helpers to start real processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from upstream import FakeUpstream


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


PYTHON = sys.executable
