"""Test isolation shared by every test module."""

from __future__ import annotations

import logging

import pytest
import structlog


@pytest.fixture(autouse=True)
def restore_logging():
    """A command run in-process (cli.main) points structlog and the root logger at the stream pytest gave it
    for that test; once pytest closes that stream, any later test that logs would fail writing to it."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
