"""From an upload request to a queued task, shared by /api/v1/transcribe and the OpenAI endpoint:
stream the body to disk, check it is media, optionally register a webhook, submit, clean up."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
from sanic import Request

from pipeline.api.context import api_of
from pipeline.api.errors import ApiError
from pipeline.api.i18n import Both
from pipeline.api.tasks import wait_registered
from pipeline.api.uploads import FORM_OVERHEAD, probe, receive_upload, refuse_too_large
from pipeline.api.webhooks import TargetRefused, base_url, check_target
from pipeline.bus import BusTimeout
from pipeline.logs import task_logger
from pipeline.submit import submit_file
from schemas.messages import TaskOptions

log = logging.getLogger(__name__)

CALLBACK_FIELD = "callback_url"


@dataclass(frozen=True, slots=True)
class Accepted:
    task_id: str
    filename: str
    file_size: int
    media_duration: float | None  # as the container declares it; None when it does not say


async def accept(
    request: Request,
    task_id: str,
    text_fields: frozenset[str],
    check_fields: Callable[[dict[str, list[str]]], None] | None = None,
) -> Accepted:
    """Everything that can refuse the upload runs before it is submitted; the temporary file is
    gone when this returns, whatever happened."""
    api = api_of(request)
    principal = request.ctx.principal
    upload = await receive_upload(request, api.upload_dir, api.settings.api_max_upload_bytes, text_fields)
    try:
        if check_fields is not None:
            check_fields(upload.fields)
        info = await probe(upload)
        callback = upload.field(CALLBACK_FIELD) if CALLBACK_FIELD in text_fields else None
        if callback:
            await _register_callback(request, task_id, callback)
        assert upload.filename is not None
        try:
            await submit_file(
                api.bus,
                upload.path,
                filename=upload.filename,
                options=TaskOptions(formats=api.settings.output_formats, source="api"),
                owner=principal.owner,
                task_id=task_id,
            )
        except (nats.errors.Error, BusTimeout, TimeoutError) as exc:
            if callback:
                await api.webhooks.forget(task_id)
            log.warning("submit of %s failed: %s", task_id, exc)
            raise ApiError(
                503,
                "service_unavailable",
                reason=Both("шина сообщений не приняла задачу", "the message bus did not take the task"),
            ) from None
    finally:
        upload.discard()
    tlog = task_logger(log, task_id, "api")
    tlog.info("accepted %r (%d bytes, %s, owner %s)", upload.filename, upload.size, info.format_name, principal.owner)
    if not await wait_registered(api.bus, task_id, principal.owner):
        tlog.warning("the registry has not recorded the task yet; answering anyway")
    return Accepted(task_id, upload.filename, upload.size, info.duration)


async def _register_callback(request: Request, task_id: str, url: str) -> None:
    api = api_of(request)
    principal = request.ctx.principal
    if principal.key_hash is None:
        raise ApiError(
            400,
            "bad_callback_url",
            reason=Both(
                "вебхук подписывается API ключом: передайте ключ", "webhooks are signed with your API key: send one"
            ),
        )
    try:
        await check_target(url, api.settings.webhook_allow_private)
    except TargetRefused as exc:
        raise ApiError(400, "bad_callback_url", reason=str(exc)) from None
    await api.webhooks.register(task_id, url, principal.key_hash, principal.owner, base_url(request, api.settings))


async def drain(request: Request, limit: int) -> None:
    """Reads a body we do not need, so the connection stays usable and the client sees our answer."""
    received = 0
    while (chunk := await request.stream.read()) is not None:
        received += len(chunk)
        if received > limit + FORM_OVERHEAD:
            raise refuse_too_large(request, limit)
