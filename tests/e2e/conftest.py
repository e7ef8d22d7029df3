"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .agent_process import AgentProcess


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agent processes a test started (append them); each is stopped when the test ends."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()
