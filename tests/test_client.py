"""The Python clients and `gigaam-transcriber transcribe` against the real stack with the API (tiny model),
plus the retry rules on a scripted transport. Outages and concurrency are staged on `_Proxy`, a TCP hop
in front of the real API that can be cut and restored and that logs the requests passing through.
The stack allows one upload per key every 2 s, so back-to-back uploads go through a real 429."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from pipeline.client import TERMINAL, AsyncGigaAMClient, GigaAMClient, GigaAMError, subscribe_completions
from schemas.messages import TaskEvent
from tests.apistack import ApiStack, speech_wav
from tests.stack import free_port

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


class _RequestHeads:
    """Splits one connection's client-to-server bytes into HTTP/1.1 requests (bodies by Content-Length,
    which httpx sends for files) and hands each head on as soon as it is complete."""

    def __init__(self, note: Callable[[str, str, dict[str, str]], None]) -> None:
        self.note = note
        self.buffer = b""
        self.body_left = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            skipped = min(self.body_left, len(self.buffer))
            self.buffer, self.body_left = self.buffer[skipped:], self.body_left - skipped
            end = self.buffer.find(b"\r\n\r\n")
            if self.body_left or end < 0:
                return
            line, *fields = self.buffer[:end].decode("latin-1").split("\r\n")
            self.buffer = self.buffer[end + 4 :]
            headers = {name.strip().lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
            self.body_left = int(headers.get("content-length", 0))
            method, target, _version = line.split(" ", 2)
            self.note(method, target, headers)


class _Proxy:
    """A TCP hop in front of the real API. `cut()` ends every open connection and refuses new ones (the
    port stops listening) until `restore()`. `requests` lists (method, path, headers) in the order they
    reached the proxy, each noted before it is passed on, so the order is the order the client sent them."""

    def __init__(self, upstream: str) -> None:
        url = httpx.URL(upstream)
        self.upstream = (url.host, url.port)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def __enter__(self) -> _Proxy:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the pumps see EOF, close their ends and exit

    def _note(self, method: str, target: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, target, headers))

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                live = self._listener is listener  # a cut between accept() and here ends this one too
                if live:
                    self._open |= {client, server}
            if not live:
                client.close()
                server.close()
                return
            heads = _RequestHeads(self._note)
            threading.Thread(target=self._pump, args=(client, server, heads.feed), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, inspect: Callable[[bytes], None] | None) -> None:
        try:
            while data := src.recv(65536):
                if inspect is not None:
                    inspect(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)  # one side gone: the other pump stops too
            with self._lock:
                self._open.discard(src)
            src.close()


@pytest.fixture
def fresh_key(client_api: ApiStack) -> str:
    """A key of its own: no 429 wait left over from another test's upload."""
    return client_api.key("client-fresh")


async def test_async_client_waits_through_a_network_outage(client_api: ApiStack, fresh_key: str, media: Path) -> None:
    """The async twin of the sync client's blip handling, on real sockets: the connection to the API drops
    and stays refused for 1.5 s while the client polls a running task; it must retry, not give up."""
    retries: list[str] = []
    statuses: list[str] = []
    cut_at: list[float] = []
    loop = asyncio.get_running_loop()
    with _Proxy(client_api.base) as proxy:

        def on_status(body: dict) -> None:
            statuses.append(body["status"])
            if not cut_at and body["status"] not in TERMINAL:
                proxy.cut()
                cut_at.append(time.monotonic())
                loop.call_later(1.5, proxy.restore)

        on_retry = lambda why, _: retries.append(why)  # noqa: E731
        async with AsyncGigaAMClient(proxy.base, fresh_key, on_retry=on_retry) as client:
            task_id = (await client.upload(media / "second.wav"))["task_id"]
            final = await client.wait(task_id, poll_interval=0.1, on_status=on_status)
            waited = time.monotonic() - cut_at[0] if cut_at else 0.0
            result = await client.get_result(task_id)
    assert cut_at, f"the task was never seen running: {statuses}"
    assert "network error" in retries and waited >= 1.5
    assert final["status"] == "completed" and statuses[-1] == "completed"
    assert result["task_id"] == task_id and result["transcription"].strip()


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


def test_transcribe_cli_runs_at_most_three_files_at_once(
    client_api: ApiStack, fresh_key: str, tmp_path: Path
) -> None:
    """Six files, `CONCURRENCY` (3) jobs at a time. A job is open from its first upload attempt (a 429 wait
    counts) until it asks for its download, read off the requests in the order they reached the proxy."""
    wavs = [str(speech_wav(tmp_path / f"clip{i}.wav")) for i in range(6)]
    with _Proxy(client_api.base) as proxy:
        run = _cli(*wavs, "--server", proxy.base, "-o", str(tmp_path / "out"), cwd=tmp_path, key=fresh_key)
    assert run.returncode == 0, run.stderr
    written = sorted((tmp_path / "out").glob("*.txt"))
    assert [p.name for p in written] == [f"clip{i}.txt" for i in range(6)]
    assert all(p.read_text(encoding="utf-8").strip() for p in written)
    uploads: set[str] = set()
    open_jobs = peak = downloads = 0
    for method, target, headers in proxy.requests:
        if method == "POST" and target == "/api/v1/transcribe" and headers["idempotency-key"] not in uploads:
            uploads.add(headers["idempotency-key"])  # a retried upload keeps its key: the same job
            open_jobs += 1
        elif method == "GET" and target.split("?")[0].endswith("/download"):
            open_jobs -= 1
            downloads += 1
        peak = max(peak, open_jobs)
    assert (len(uploads), downloads) == (6, 6)
    assert 2 <= peak <= 3, f"{peak} jobs open at once"
