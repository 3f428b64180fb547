"""Python clients for the REST API (docs/api.md): `GigaAMClient` (sync) and `AsyncGigaAMClient`.

They do what callers of the original guide's `GigaAMClient` wrote by hand, and the parts that are
easy to get wrong: waiting out 429 `Retry-After`, riding out network blips while polling, uploads
that are safe to retry (each `transcribe_file` sends its own `Idempotency-Key`, so a retried upload
never makes a second task), and errors as one typed exception carrying the API's machine code.

`subscribe_completions` is for integrations inside the deployment: it listens on NATS directly.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from schemas.messages import TaskEvent, decode
from schemas.subjects import event_subject

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed")
FINAL_EVENTS = ("completed", "failed", "deleted")
RATE_WAITS = 100  # 429 answers one call waits out before giving up
RETRYABLE_NETWORK = (httpx.TransportError,)  # connect, read, write, pool, protocol errors
StatusCallback = Callable[[dict[str, Any]], None]
OnRetry = Callable[[str, float], None]  # (why, seconds until the next try)


class GigaAMError(Exception):
    """An error answer (`code`, `message`, HTTP `status`), or `network_error` (status 0) once retries ran out."""

    def __init__(self, code: str, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" if status == 0 else f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event: `status`, `completed`, `failed` or `deleted`, with the task's status body."""

    name: str
    data: dict[str, Any]


def error_from(response: httpx.Response) -> GigaAMError:
    """The API's JSON error (`error.code`, `error.message`); anything else (a proxy's page) by status."""
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:200] or response.reason_phrase
    return GigaAMError(code, message, response.status_code, retry_after_of(response))


def retry_after_of(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def backoff(attempt: int, base: float = 0.5, cap: float = 8.0) -> float:
    """Exponential with jitter, so many clients that lost the server together do not return together."""
    return min(cap, base * 2**attempt) * (0.5 + random.random() / 2)


class _SSE:
    """Incremental `text/event-stream` parser: feed lines, get events (comments and `retry:` ignored)."""

    def __init__(self) -> None:
        self.name = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self.data:
                return None
            event = Event(self.name, orjson.loads("\n".join(self.data)))
            self.name, self.data = "message", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self.name = value
        elif field == "data":
            self.data.append(value)
        return None


class _Retries:
    """One call's retry budget. Network errors and 503 spend it (exponential backoff); 429 waits as long
    as `Retry-After` says without spending it, up to RATE_WAITS times: the server asked for exactly that."""

    def __init__(self, budget: int, on_retry: OnRetry | None, what: str) -> None:
        self.budget = budget
        self.on_retry = on_retry
        self.what = what
        self.spent = 0
        self.rate_waits = 0

    def reset(self) -> None:
        self.spent = 0

    def delay(self, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next try, or None to give up (`response` None: a network error)."""
        if response is not None and response.status_code == 429:
            if self.rate_waits >= RATE_WAITS:
                return None
            self.rate_waits += 1
            after = retry_after_of(response)
            delay = (backoff(self.rate_waits) if after is None else after) + random.random() * 0.2
            why = "rate limited"
        elif response is None or response.status_code == 503:
            if self.spent >= self.budget:
                return None
            delay = backoff(self.spent)
            self.spent += 1
            why = "network error" if response is None else "service unavailable"
        else:
            return None
        log.info("%s: %s, retrying in %.1f s", self.what, why, delay)
        if self.on_retry is not None:
            self.on_retry(why, delay)
        return delay


class _Base:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        language: str | None,
        on_retry: OnRetry | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.on_retry = on_retry
        self.headers = {"User-Agent": "gigaam-client"}
        if api_key:
            self.headers["X-API-Key"] = api_key
        if language:
            self.headers["Accept-Language"] = language
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))

    def _retries(self, method: str, path: str) -> _Retries:
        return _Retries(self.max_retries, self.on_retry, f"{method} {path}")

    @staticmethod
    def _network_error(exc: Exception) -> GigaAMError:
        return GigaAMError("network_error", str(exc) or type(exc).__name__, 0)

    @staticmethod
    def _list_params(status: str | None, limit: int, offset: int) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status_filter"] = status
        return params


class GigaAMClient(_Base):
    """Blocking client. Use as a context manager or call `close()`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        max_retries: int = 5,
        language: str | None = None,
        on_retry: OnRetry | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, language, on_retry)
        self.http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def __enter__(self) -> GigaAMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> httpx.Response:
        retries = self._retries(method, path)
        upload: tuple[str, Path] | None = kwargs.pop("open_files", None)
        while True:
            try:
                if upload is not None:  # re-opened on every try: a retried upload starts from byte 0
                    with open(upload[1], "rb") as fh:
                        response = self.http.request(method, path, files={"file": (upload[0], fh)}, **kwargs)
                else:
                    response = self.http.request(method, path, **kwargs)
            except RETRYABLE_NETWORK as exc:
                delay = retries.delay(None) if idempotent else None
                if delay is None:
                    raise self._network_error(exc) from exc
            else:
                if response.is_success:
                    return response
                delay = retries.delay(response)
                if delay is None:
                    raise error_from(response)
            time.sleep(delay)

    def upload(
        self, path: str | Path, *, callback_url: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """`POST /api/v1/transcribe`; the 202 body (`task_id`, `estimated_seconds`...)."""
        path = Path(path)
        key = idempotency_key or uuid.uuid4().hex
        data = {"callback_url": callback_url} if callback_url else None
        return self._request(
            "POST", "/api/v1/transcribe", open_files=(path.name, path), data=data, headers={"Idempotency-Key": key}
        ).json()

    def get_status(self, task_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/tasks/{task_id}").json()

    def get_result(self, task_id: str) -> dict[str, Any]:
        """The transcript; `GigaAMError` `task_failed` (with the reason) or `task_not_completed` otherwise."""
        return self._request("GET", f"/api/v1/tasks/{task_id}/result").json()

    def download(self, task_id: str, format: str = "txt", dest: str | Path | None = None) -> bytes:
        """The result file's bytes; also written to `dest` when given."""
        body = self._request("GET", f"/api/v1/tasks/{task_id}/download", params={"format": format}).content
        if dest is not None:
            Path(dest).write_bytes(body)
        return body

    def list_tasks(self, status: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return self._request("GET", "/api/v1/tasks", params=self._list_params(status, limit, offset)).json()

    def delete_task(self, task_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/api/v1/tasks/{task_id}", idempotent=False).json()

    def wait(self, task_id: str, poll_interval: float = 2.0, on_status: StatusCallback | None = None) -> dict[str, Any]:
        """Polls until completed or failed; the final status. Network blips are retried; each success
        resets the retry budget, so only an outage longer than the budget ends the wait."""
        while True:
            status = self.get_status(task_id)
            if on_status is not None:
                on_status(status)
            if status["status"] in TERMINAL:
                return status
            time.sleep(poll_interval)

    def transcribe_file(
        self, path: str | Path, poll_interval: float = 2.0, format: str | None = None
    ) -> dict[str, Any] | str:
        """Upload, wait, return the result (`format=None`) or the text of that download format."""
        task_id = self.upload(path)["task_id"]
        self.wait(task_id, poll_interval)
        if format is None:
            return self.get_result(task_id)  # raises task_failed with the reason
        return self.download(task_id, format).decode("utf-8")

    def events(self, task_id: str) -> Iterator[Event]:
        """Server-Sent Events until the final one. A dropped stream is reopened: the server replays the
        task from its start, so already-seen states repeat but nothing is missed."""
        retries = self._retries("GET", f"/api/v1/tasks/{task_id}/events")
        while True:
            parser = _SSE()
            try:
                with self.http.stream(
                    "GET", f"/api/v1/tasks/{task_id}/events", timeout=httpx.Timeout(self.timeout.connect, read=60.0)
                ) as response:
                    if not response.is_success:
                        response.read()
                        delay = retries.delay(response)
                        if delay is None:
                            raise error_from(response)
                    else:
                        for line in response.iter_lines():
                            event = parser.feed(line)
                            if event is None:
                                continue
                            retries.reset()
                            yield event
                            if event.name in FINAL_EVENTS:
                                return
                        delay = retries.delay(None)  # closed before the end
                        if delay is None:
                            raise GigaAMError("network_error", "the event stream ended before the task did", 0)
            except RETRYABLE_NETWORK as exc:
                delay = retries.delay(None)
                if delay is None:
                    raise self._network_error(exc) from exc
            time.sleep(delay)


class AsyncGigaAMClient(_Base):
    """The same calls as `GigaAMClient`, awaitable (httpx.AsyncClient). Use `async with` or `aclose()`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        max_retries: int = 5,
        language: str | None = None,
        on_retry: OnRetry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, language, on_retry)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncGigaAMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> httpx.Response:
        retries = self._retries(method, path)
        upload: tuple[str, Path] | None = kwargs.pop("open_files", None)
        while True:
            try:
                if upload is not None:  # re-read on every try: a retried upload starts from byte 0
                    with open(upload[1], "rb") as fh:
                        response = await self.http.request(method, path, files={"file": (upload[0], fh)}, **kwargs)
                else:
                    response = await self.http.request(method, path, **kwargs)
            except RETRYABLE_NETWORK as exc:
                delay = retries.delay(None) if idempotent else None
                if delay is None:
                    raise self._network_error(exc) from exc
            else:
                if response.is_success:
                    return response
                delay = retries.delay(response)
                if delay is None:
                    raise error_from(response)
            await asyncio.sleep(delay)

    async def upload(
        self, path: str | Path, *, callback_url: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        path = Path(path)
        key = idempotency_key or uuid.uuid4().hex
        data = {"callback_url": callback_url} if callback_url else None
        response = await self._request(
            "POST", "/api/v1/transcribe", open_files=(path.name, path), data=data, headers={"Idempotency-Key": key}
        )
        return response.json()

    async def get_status(self, task_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/api/v1/tasks/{task_id}")).json()

    async def get_result(self, task_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/api/v1/tasks/{task_id}/result")).json()

    async def download(self, task_id: str, format: str = "txt", dest: str | Path | None = None) -> bytes:
        response = await self._request("GET", f"/api/v1/tasks/{task_id}/download", params={"format": format})
        if dest is not None:
            Path(dest).write_bytes(response.content)
        return response.content

    async def list_tasks(self, status: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return (await self._request("GET", "/api/v1/tasks", params=self._list_params(status, limit, offset))).json()

    async def delete_task(self, task_id: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/api/v1/tasks/{task_id}", idempotent=False)).json()

    async def wait(
        self, task_id: str, poll_interval: float = 2.0, on_status: StatusCallback | None = None
    ) -> dict[str, Any]:
        while True:
            status = await self.get_status(task_id)
            if on_status is not None:
                on_status(status)
            if status["status"] in TERMINAL:
                return status
            await asyncio.sleep(poll_interval)

    async def transcribe_file(
        self, path: str | Path, poll_interval: float = 2.0, format: str | None = None
    ) -> dict[str, Any] | str:
        task_id = (await self.upload(path))["task_id"]
        await self.wait(task_id, poll_interval)
        if format is None:
            return await self.get_result(task_id)
        return (await self.download(task_id, format)).decode("utf-8")

    async def events(self, task_id: str) -> AsyncIterator[Event]:
        retries = self._retries("GET", f"/api/v1/tasks/{task_id}/events")
        while True:
            parser = _SSE()
            try:
                async with self.http.stream(
                    "GET", f"/api/v1/tasks/{task_id}/events", timeout=httpx.Timeout(self.timeout.connect, read=60.0)
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        delay = retries.delay(response)
                        if delay is None:
                            raise error_from(response)
                    else:
                        async for line in response.aiter_lines():
                            event = parser.feed(line)
                            if event is None:
                                continue
                            retries.reset()
                            yield event
                            if event.name in FINAL_EVENTS:
                                return
                        delay = retries.delay(None)
                        if delay is None:
                            raise GigaAMError("network_error", "the event stream ended before the task did", 0)
            except RETRYABLE_NETWORK as exc:
                delay = retries.delay(None)
                if delay is None:
                    raise self._network_error(exc) from exc
            await asyncio.sleep(delay)


async def subscribe_completions(
    nats_url: str,
    callback: Callable[[TaskEvent], Awaitable[None] | None],
    *,
    include_failed: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Calls `callback(TaskEvent)` for every task that completes (and fails, with `include_failed`),
    of every owner, until `stop` is set or the task is cancelled. For integrations inside the deployment
    (the bus is not exposed to API users). A plain subscription: events while disconnected are missed;
    use webhooks, or a durable JetStream consumer on the events stream, where none may be lost."""
    import nats

    nc = await nats.connect(nats_url, name="gigaam-completions")
    types = ("completed", "failed") if include_failed else ("completed",)

    async def on_message(msg) -> None:  # noqa: ANN001 - nats Msg
        try:
            event = decode(TaskEvent, msg.data)
        except (ValueError, TypeError, KeyError):
            log.warning("malformed event on %s skipped", msg.subject)
            return
        try:
            outcome = callback(event)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # noqa: BLE001 - one bad callback must not end the subscription
            log.exception("completion callback failed for task %s", event.task_id)

    try:
        for type_ in types:
            await nc.subscribe(event_subject(type_, ">"), cb=on_message)
        await nc.flush()
        await (stop or asyncio.Event()).wait()
    finally:
        await nc.drain()
