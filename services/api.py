"""API service: the REST API (and its OpenAI-compatible and live-progress routes) over the pipeline.

Stateless: uploads become objects and jobs, task state comes from the registry, keys, rate counters,
idempotency claims and webhook registrations live in NATS KV. Run as many workers, on as many hosts,
as needed; `GIGAAM_API_WORKERS` > 1 lets several processes share one port (SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from pipeline.api import server
from pipeline.api.app import create_app, open_api
from pipeline.api.uploads import prepare_upload_dir
from pipeline.keys import any_key_made, bootstrap_key
from pipeline.service import ServiceContext, main

log = logging.getLogger(__name__)

KEYS_LOAD_TIMEOUT = 30.0


def announce_first_key(secret: str) -> None:
    """On the console only (stdout): the one time the secret is ever shown, never in a log."""
    bar = "=" * 72
    sys.stdout.write(
        f"\n{bar}\n  FIRST API KEY (shown once, keep it now):\n\n    {secret}\n\n"
        f"  Send it as X-API-Key. More keys: gigaam-transcriber keys create NAME\n{bar}\n\n"
    )
    sys.stdout.flush()


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    # Bound first: an API that cannot listen must not announce a first key nobody can use.
    sock = server.bind_port(settings.api_host, settings.api_port, reuse_port=settings.api_workers > 1)
    api = await open_api(settings, ctx.bus, ctx.store, prepare_upload_dir(ctx.work_dir), ctx.metrics)
    first = await bootstrap_key(ctx.bus) if settings.api_first_key else None
    if first is not None:
        secret, record = first
        announce_first_key(secret)
        log.info("first API key %s created and shown on the console", record.id)
    elif settings.api_keys_required and not await any_key_made(ctx.bus):
        log.warning("no API key exists yet: create one with `gigaam-transcriber keys create NAME`")
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(api.keys.run(ctx.stop))
        tasks.create_task(api.webhooks.run(ctx.stop))
        await api.keys.wait_loaded(KEYS_LOAD_TIMEOUT)
        app = create_app(api)
        http = await server.start(app, sock)
        try:
            await ctx.stop.wait()
        finally:
            await server.stop(http)


if __name__ == "__main__":
    main("api", serve)
