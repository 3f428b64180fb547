"""API limits on the real stack with two API worker processes: per-key rate limits shared across
workers, key revocation reaching every worker, the first key, SSRF-safe callbacks, and bounded
streamed uploads (a 2 GB stream against the real cap, with the server's memory measured)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apistack import ApiStack, rss_mb, speech_wav, upload_dir_files, wav_header, wav_of_size

pytestmark = [
    pytest.mark.timeout(300),
]

SMALL_CAP = 8 * 1024 * 1024  # the second worker's upload cap
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("limits")
    stack = ApiStack(root, GIGAAM_API_RATE_UPLOADS="3", GIGAAM_API_RATE_CALLS="6", GIGAAM_API_RATE_WINDOW="60").start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def second(api: ApiStack) -> str:
    """A second API worker process (same NATS, own port) with a small upload cap."""
    return api.add_worker(GIGAAM_API_MAX_UPLOAD_BYTES=str(SMALL_CAP))


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("media") / "short.wav")


def post_file(base: str, key: str, path: Path, **headers: str) -> httpx.Response:
    with open(path, "rb") as fh:
        return httpx.post(
            f"{base}/api/v1/transcribe", headers={"X-API-Key": key, **headers}, files={"file": fh}, timeout=120
        )


def code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def test_rate_limits_are_per_key_and_shared_by_every_worker(api: ApiStack, second: str, wav: Path) -> None:
    key, other = api.key("limited"), api.key("bystander")
    workers = [api.base, second]
    for i in range(6):  # 6 calls per window, spread over both workers
        ok = httpx.get(f"{workers[i % 2]}/api/v1/tasks", headers={"X-API-Key": key})
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-limit"] == "6" and ok.headers["x-ratelimit-remaining"] == str(5 - i)
    for base in workers:
        refused = httpx.get(f"{base}/api/v1/tasks", headers={"X-API-Key": key, "Accept-Language": "en"})
        assert refused.status_code == 429 and code(refused) == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["error"]["message"].startswith("Rate limit exceeded (6 per 60 s)")
    # uploads have their own budget, also shared: 3 per window
    uploads = [post_file(workers[i % 2], key, wav).status_code for i in range(4)]
    assert uploads == [202, 202, 202, 429]
    # another key is not affected, and public routes are never limited
    assert httpx.get(f"{second}/api/v1/tasks", headers={"X-API-Key": other}).status_code == 200
    assert all(httpx.get(f"{api.base}/health").status_code == 200 for _ in range(10))


def test_a_revoked_key_stops_working_on_every_worker_within_5_seconds(api: ApiStack, second: str) -> None:
    key = api.key("soon revoked")
    assert all(
        httpx.get(f"{b}/api/v1/tasks", headers={"X-API-Key": key}).status_code == 200 for b in (api.base, second)
    )
    listed = _cli(api, "keys", "list").stdout
    key_id = next(line.split()[0] for line in listed.splitlines() if line.endswith("soon revoked"))
    started = time.monotonic()
    revoked = _cli(api, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    pending = {api.base, second}
    while pending and time.monotonic() - started < 5.0:
        for base in list(pending):
            if httpx.get(f"{base}/api/v1/tasks", headers={"X-API-Key": key}).status_code == 401:
                pending.discard(base)
        time.sleep(0.05)
    assert not pending, f"still accepted after 5 s by {pending}"
    again = _cli(api, "keys", "list").stdout
    row = next(line for line in again.splitlines() if line.startswith(key_id))
    assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row)) == 3  # created, last used, revoked
    unknown = _cli(api, "keys", "revoke", "key_00000000")
    assert unknown.returncode == 2 and "no API key" in unknown.stderr


def _cli(api: ApiStack, *args: str) -> subprocess.CompletedProcess:
    env = {**api.stack.env, "GIGAAM_NATS_URL": api.stack.url}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_creates_keys_that_work_at_once(api: ApiStack, second: str) -> None:
    made = _cli(api, "keys", "create", "ci bot")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("gam_") and len(secret) == 36 and "ci bot" in made.stderr
    assert httpx.get(f"{second}/api/v1/tasks", headers={"X-API-Key": secret}).status_code == 200


def test_the_first_key_is_shown_once_on_the_console_and_never_logged(api: ApiStack, second: str) -> None:
    output = api.stack.log.read_text()
    secrets = {w for w in output.split() if w.startswith("gam_")}
    assert len(secrets) == 1, "exactly one key printed, by one worker"
    (secret,) = secrets
    lines = [line for line in output.splitlines() if secret in line]
    assert lines == [f"    {secret}"]  # the banner line alone: no log record carries it
    worker_log = next(api.root.glob("api-*.log")).read_text()
    assert "gam_" not in worker_log  # the second worker found the key made already
    assert httpx.get(f"{api.base}/api/v1/tasks", headers={"X-API-Key": secret}).status_code == 200


def test_callback_urls_to_internal_addresses_are_refused(api: ApiStack, second: str, wav: Path) -> None:
    for target in (
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://169.254.169.254/",
        "http://user:secret@example.com/",
        "gopher://example.com/",
        "http://no-such-host.invalid/",
    ):
        key = api.key("callbacks")  # a key per try: uploads are limited to 3 a minute here
        with open(wav, "rb") as fh:
            refused = httpx.post(
                f"{second}/api/v1/transcribe",
                headers={"X-API-Key": key},
                files={"file": fh},
                data={"callback_url": target},
            )
        assert refused.status_code == 400 and code(refused) == "bad_callback_url", target
    assert not upload_dir_files(api.stack.data_dir)


# --------------------------------------------------------------------------- bounded streamed uploads


def _stream(prefix: bytes, size: int, chunk: bytes) -> Iterator[bytes]:
    """A multipart body with a `size`-byte file, generated on the fly (nothing held in memory)."""
    yield b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n\r\n' + prefix
    left = size - len(prefix)
    while left > 0:
        piece = chunk[: min(left, len(chunk))]
        left -= len(piece)
        yield piece
    yield b"\r\n--b0undary--\r\n"


class _PeakRss:
    """Samples a process's resident memory in the background."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.base


def test_a_2gb_stream_is_cut_at_the_cap_in_constant_memory(api: ApiStack) -> None:
    """The real 2 GiB cap: 2 GiB + 1 MiB streamed (chunked, no Content-Length) from a generator."""
    key = api.key("big")
    cap = 2 * 1024**3
    body = _stream(wav_header(cap), cap + MiB, b"\0" * MiB)
    headers = {"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=b0undary"}
    started = time.monotonic()
    with _PeakRss(api.api_pid()) as rss:
        response = httpx.post(f"{api.base}/api/v1/transcribe", content=body, headers=headers, timeout=300)
    elapsed = time.monotonic() - started
    print(
        f"2 GiB + 1 MiB refused after {elapsed:.1f} s ({cap / elapsed / 1e6:.0f} MB/s); RSS growth {rss.growth:.0f} MB"
    )
    assert response.status_code == 413 and code(response) == "file_too_large"
    assert str(cap) in response.json()["error"]["message"]
    assert rss.growth < 200
    assert not upload_dir_files(api.stack.data_dir)
    assert httpx.get(f"{api.base}/", timeout=10).status_code == 200  # the worker is fine


def test_a_large_upload_is_accepted_in_constant_memory(api: ApiStack, wav: Path) -> None:
    key = api.key("large")
    speech = wav.read_bytes()[44:]
    size = 300 * MiB
    # a short WAV followed by non-audio bytes: the transcript stays short, the upload is big
    body = _stream(wav_header(len(speech)) + speech, size, os.urandom(MiB))
    headers = {"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=b0undary"}
    started = time.monotonic()
    with _PeakRss(api.api_pid()) as rss:
        response = httpx.post(f"{api.base}/api/v1/transcribe", content=body, headers=headers, timeout=300)
    elapsed = time.monotonic() - started
    rate = size / elapsed / 1e6
    print(f"300 MiB accepted in {elapsed:.1f} s ({rate:.0f} MB/s incl. object store); RSS growth {rss.growth:.0f} MB")
    assert response.status_code == 202, response.text
    assert response.json()["file_size"] == size
    assert rss.growth < 200
    assert not upload_dir_files(api.stack.data_dir)


def test_the_cap_holds_to_the_byte(api: ApiStack, second: str, tmp_path: Path) -> None:
    """Second worker, 8 MiB cap: a file of exactly the cap is taken, one byte more is not."""
    key = api.key("boundary")
    exact = wav_of_size(tmp_path / "exact.wav", SMALL_CAP)
    over = wav_of_size(tmp_path / "over.wav", SMALL_CAP + 1)
    assert post_file(second, key, exact).status_code == 202
    refused = post_file(second, key, over)
    assert refused.status_code == 413 and code(refused) == "file_too_large"
    chunked = httpx.post(  # the same without Content-Length: cut as soon as the bytes pass the cap
        f"{second}/api/v1/transcribe",
        content=_stream(wav_header(SMALL_CAP), SMALL_CAP + 1, b"\1" * 65536),
        headers={"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert chunked.status_code == 413
    assert not upload_dir_files(api.stack.data_dir)


def test_a_declared_length_over_the_cap_is_refused_before_reading(api: ApiStack, second: str) -> None:
    key = api.key("declared")
    host, port = second.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            f"POST /api/v1/transcribe HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: {5 * 1024**3}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        raw.settimeout(5)
        started = time.monotonic()
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ") and b"file_too_large" in answer
    assert b"100 Continue" not in answer  # the client is never invited to send the body
    assert time.monotonic() - started < 1.0  # answered and closed at once


def test_an_upload_cut_off_by_the_client_leaves_nothing(api: ApiStack) -> None:
    key = api.key("quitter")
    with socket.create_connection(("127.0.0.1", api.port)) as raw:
        raw.sendall(
            f"POST /api/v1/transcribe HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: {50 * MiB}\r\n\r\n".encode()
            + b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="gone.wav"\r\n\r\n'
            + wav_header(50 * MiB)
            + b"\0" * (5 * MiB)
        )
        deadline = time.monotonic() + 5
        while not upload_dir_files(api.stack.data_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert upload_dir_files(api.stack.data_dir)  # the upload is being written
    deadline = time.monotonic() + 5
    while upload_dir_files(api.stack.data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not upload_dir_files(api.stack.data_dir)
    assert httpx.get(f"{api.base}/", timeout=10).status_code == 200
