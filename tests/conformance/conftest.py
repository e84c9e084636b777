"""The byte-level harnesses of the behaviour suite: in memory, asyncio, threads, trio."""

from __future__ import annotations

from ..behaviour.conftest import serve_bytes

__all__ = ["serve_bytes"]
