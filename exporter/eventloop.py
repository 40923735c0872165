"""The daemon's event loop: uvloop where it is installed (it is a dependency on Linux and macOS), else asyncio's.

uvloop moves the socket and timer work of the loop into C: /probe's per-request cost drops, which is what
lets one process keep up with blackbox_exporter (bench/probe_vs_blackbox.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional


def loop_factory() -> Optional[Callable[[], asyncio.AbstractEventLoop]]:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Awaitable[Any]) -> Any:
    """asyncio.run(main) on the fastest loop available (asyncio's own on Python 3.10, which lacks Runner)."""
    factory = loop_factory()
    if factory is None or not hasattr(asyncio, "Runner"):
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
