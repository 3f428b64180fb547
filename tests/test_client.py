"""The Python clients and `gigaam-transcriber transcribe` against the real stack with the API (tiny model),
plus the retry rules on a scripted transport (network blips cannot be staged reliably on a real socket).
The stack allows one upload per key every 2 s, so back-to-back uploads go through a real 429."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline.client import AsyncGigaAMClient, GigaAMClient, GigaAMError, subscribe_completions
from schemas.messages import TaskEvent
from tests.apistack import ApiStack, speech_wav

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def key(client_api: ApiStack) -> str:
    return client_api.key("client")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("client-media")
    speech_wav(folder / "Запись встречи.wav", "01_speech_2s")
    speech_wav(folder / "second.wav", "02_speech_5s")
    (folder / "broken.mp3").write_bytes(b"this is not audio at all" * 100)
    return folder


def test_sync_client_covers_the_guide(client_api: ApiStack, key: str, media: Path, tmp_path: Path) -> None:
    retries: list[str] = []
    with GigaAMClient(client_api.base, key, on_retry=lambda why, delay: retries.append(why)) as client:
        result = client.transcribe_file(media / "Запись встречи.wav", poll_interval=0.2)
        assert result["status"] == "completed" and result["transcription"].strip()
        assert result["filename"] == "Запись встречи.wav"
        task_id = result["task_id"]
        assert client.get_status(task_id)["progress"] == 100
        assert client.get_result(task_id)["transcription"] == result["transcription"]
        srt = client.download(task_id, "srt", tmp_path / "out.srt")
        assert srt.startswith(b"1\n00:00:") and (tmp_path / "out.srt").read_bytes() == srt
        listed = client.list_tasks(status="completed", limit=50)
        assert task_id in {t["task_id"] for t in listed["tasks"]} and listed["total"] >= 1
        # The second upload within the 2 s window is refused once with 429 and retried after Retry-After.
        text = client.transcribe_file(media / "second.wav", poll_interval=0.2, format="txt")
        assert isinstance(text, str) and text.strip()
        assert "rate limited" in retries
        client.delete_task(task_id)
        with pytest.raises(GigaAMError) as gone:
            client.get_status(task_id)
        assert (gone.value.code, gone.value.status) == ("task_not_found", 404)


def test_errors_are_typed(client_api: ApiStack, key: str, media: Path) -> None:
    with GigaAMClient(client_api.base, "gam_" + "x" * 32, language="en") as client:
        with pytest.raises(GigaAMError) as refused:
            client.list_tasks()
    assert (refused.value.code, refused.value.status) == ("invalid_api_key", 401) and refused.value.message
    with GigaAMClient(client_api.base, key, language="en") as client:
        with pytest.raises(GigaAMError) as bad:
            client.upload(media / "broken.mp3")
        assert bad.value.status == 400 and bad.value.code in ("bad_media", "unsupported_format")
        with pytest.raises(GigaAMError) as missing:
            client.get_result("0" * 32)
        assert missing.value.code == "task_not_found"


async def test_async_client_events_and_nats_completions(client_api: ApiStack, key: str, media: Path) -> None:
    seen: list[TaskEvent] = []
    stop = asyncio.Event()
    listener = asyncio.create_task(subscribe_completions(client_api.stack.url, seen.append, stop=stop))
    await asyncio.sleep(0.5)  # subscribed before the task can complete
    async with AsyncGigaAMClient(client_api.base, key) as client:
        task_id = (await client.upload(media / "Запись встречи.wav"))["task_id"]
        events = [event async for event in client.events(task_id)]
        assert events[-1].name == "completed" and events[-1].data["progress"] == 100
        progress = [e.data["progress"] for e in events]
        assert progress == sorted(progress)
        assert (await client.get_result(task_id))["transcription"].strip()
        assert (await client.list_tasks(limit=1))["total"] >= 1
    deadline = time.monotonic() + 10
    while not any(e.task_id == task_id for e in seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await listener
    done = next(e for e in seen if e.task_id == task_id)
    assert done.type == "completed" and done.text


def _scripted(*steps: object) -> httpx.MockTransport:
    """Answers requests with the given steps in order: an exception to raise, or a response."""
    queue = list(steps)

    def handle(request: httpx.Request) -> httpx.Response:
        step = queue.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, httpx.Response)
        return step

    return httpx.MockTransport(handle)


def test_polling_rides_out_network_blips() -> None:
    blip = httpx.ConnectError("connection refused")
    running = httpx.Response(200, json={"task_id": "t", "status": "processing", "progress": 50})
    done = httpx.Response(200, json={"task_id": "t", "status": "completed", "progress": 100})
    statuses: list[int] = []
    transport = _scripted(blip, running, blip, blip, done)
    with GigaAMClient("http://api", "k", max_retries=3, transport=transport) as client:
        final = client.wait("t", poll_interval=0.01, on_status=lambda s: statuses.append(s["progress"]))
    assert final["status"] == "completed" and statuses == [50, 100]


def test_retry_budget_and_error_body() -> None:
    blip = httpx.ReadError("reset")
    with GigaAMClient("http://api", "k", max_retries=1, transport=_scripted(blip, blip)) as client:
        with pytest.raises(GigaAMError) as lost:
            client.get_status("t")
    assert (lost.value.code, lost.value.status) == ("network_error", 0)
    limited = httpx.Response(
        429,
        headers={"Retry-After": "0"},
        json={"error": {"code": "rate_limited", "message": "slow down", "type": "rate_limit_error"}},
    )
    waits: list[str] = []
    ok = httpx.Response(200, json={"total": 0, "tasks": []})
    transport = _scripted(limited, limited, ok)
    on_retry = lambda why, _: waits.append(why)  # noqa: E731
    with GigaAMClient("http://api", "k", max_retries=0, on_retry=on_retry, transport=transport) as client:
        assert client.list_tasks() == {"total": 0, "tasks": []}  # 429 waits do not spend the retry budget
    assert waits == ["rate limited", "rate limited"]
    bad = httpx.Response(
        400, json={"error": {"code": "bad_parameter", "message": "limit: 1..1000", "type": "invalid_request_error"}}
    )
    with GigaAMClient("http://api", "k", transport=_scripted(bad)) as client:
        with pytest.raises(GigaAMError) as refused:
            client.list_tasks(limit=0)
    assert (refused.value.code, refused.value.message, refused.value.status) == ("bad_parameter", "limit: 1..1000", 400)
    with GigaAMClient("http://api", "k", transport=_scripted(httpx.Response(502, text="Bad Gateway"))) as client:
        with pytest.raises(GigaAMError) as proxy:
            client.get_status("t")
    assert (proxy.value.code, proxy.value.status) == ("http_502", 502)


def test_event_stream_is_reopened_after_a_drop() -> None:
    first = b'retry: 3000\n\nevent: status\ndata: {"status": "processing", "progress": 40}\n\n'
    full = first + b': keepalive\n\nevent: completed\ndata: {"status": "completed", "progress": 100}\n\n'
    transport = _scripted(httpx.Response(200, content=first), httpx.Response(200, content=full))
    with GigaAMClient("http://api", "k", transport=transport) as client:
        events = [(e.name, e.data["progress"]) for e in client.events("t")]
    assert events == [("status", 40), ("status", 40), ("completed", 100)]


def _cli(*args: str, cwd: Path, key: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIGAAM_API_KEY": key, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "transcribe", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=150,
    )


def test_transcribe_cli_writes_results_and_reports_failures(
    client_api: ApiStack, key: str, media: Path, tmp_path: Path
) -> None:
    files = [str(media / name) for name in ("Запись встречи.wav", "second.wav", "broken.mp3")] + ["missing.wav"]
    out = str(tmp_path / "out")
    run = _cli(*files, "--server", client_api.base, "--format", "srt", "-o", out, cwd=tmp_path, key=key)
    assert run.returncode == 1, run.stderr
    assert (tmp_path / "out" / "Запись встречи.srt").read_text(encoding="utf-8").startswith("1\n00:00:")
    assert (tmp_path / "out" / "second.srt").read_text(encoding="utf-8").strip()
    assert "broken.mp3: failed:" in run.stderr and "missing.wav: failed: no such file" in run.stderr
    assert "second.wav -> " in run.stdout


def test_transcribe_cli_default_folder_and_bad_key(client_api: ApiStack, key: str, media: Path, tmp_path: Path) -> None:
    ok = _cli(str(media / "second.wav"), "--server", client_api.base, cwd=tmp_path, key=key)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "second.txt").read_text(encoding="utf-8").strip()
    wav = str(media / "second.wav")
    refused = _cli(wav, "--server", client_api.base, "--api-key", "gam_nope", cwd=tmp_path, key=key)
    assert refused.returncode == 1 and "second.wav: failed:" in refused.stderr
