"""fleetlift's own log records in pytest's ``caplog``."""

from __future__ import annotations

import logging

import pytest


def capture_fleetlift_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """fleetlift's logger writes to its own handler and does not propagate: listen on it directly."""
    logger = logging.getLogger("fleetlift")
    monkeypatch.setattr(logger, "level", logging.DEBUG)
    if caplog.handler not in logger.handlers:
        monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    monkeypatch.setattr(logger, "propagate", False)  # once, not again through the root logger
    caplog.set_level(logging.DEBUG)
