"""Shared pytest fixtures. Add new fixtures below the existing sections, each under its own header."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sanic import Sanic

from pipeline.natsserver import EmbeddedNats

# Several in-process API apps start in one test run (tests/test_api_errors.py, tests/test_api_cors.py).
# Sanic rewrites some of its own methods at each start; test mode makes it start from the originals.
Sanic.test_mode = True

if TYPE_CHECKING:
    from tests.apistack import ApiStack

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


# --------------------------------------------------------------------------- API stack for clients and metrics
# One real stack (tiny model) shared by tests/test_client.py and tests/test_metrics.py. One upload per
# key every 2 s, so the clients' 429 handling runs for real without slowing the tests much.


@pytest.fixture(scope="session")
def client_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator["ApiStack"]:
    from tests.apistack import ApiStack

    stack = ApiStack(
        tmp_path_factory.mktemp("client-api"),
        GIGAAM_API_RATE_UPLOADS="1",
        GIGAAM_API_RATE_WINDOW="2",
        GIGAAM_API_RATE_CALLS="0",
    ).start()
    yield stack
    stack.stop()


# --------------------------------------------------------------------------- test tiers
# unit: no broker, no processes (make test-fast); bus: a real nats-server; stack: whole stacks of
# service processes; browser: headless Chromium. A module or test may mark itself; otherwise the
# tier follows what it uses, so a new test lands in the right tier without anyone remembering to.
TIERS = ("unit", "bus", "stack", "browser")


def _tier(item: pytest.Item) -> str:
    names = set(getattr(item, "fixturenames", ()))
    module = vars(getattr(item, "module", None) or object())
    if {"client_api"} & names or {"Stack", "ApiStack"} & module.keys():
        return "stack"
    if "nats_server" in names or "EmbeddedNats" in module:
        return "bus"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(_tier(item))
