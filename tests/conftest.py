"""Shared pytest fixtures. Add new fixtures below the existing sections, each under its own header."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.natsserver import EmbeddedNats

# --------------------------------------------------------------------------- async tests and NATS broker
# `async def test_...` runs under asyncio.run: no pytest-asyncio needed. Fixtures stay synchronous;
# a test connects to `nats_server.url` itself.


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A fresh JetStream broker on a free port with its own store, stopped after the test."""
    with EmbeddedNats(tmp_path / "nats") as server:
        yield server
