"""A first run that explains itself: `up` without a model it can get, or on a port in use, stops with
one line that says what to do; a stack whose model does not load says why in /health and in the
answers for tasks that wait for it."""

from __future__ import annotations

import functools
import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.natsserver import EmbeddedNats
from tests.apistack import ApiStack, speech_wav
from tests.stack import free_port

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]


def run_up(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    import os

    full = {
        **os.environ,
        "GIGAAM_DATA_DIR": str(tmp_path / "data"),
        "GIGAAM_MODEL_DIR": str(tmp_path / "models"),
        "GIGAAM_API_PORT": str(free_port()),
        "GIGAAM_DEVICE": "cpu",
        **env,
    }
    full.pop("GIGAAM_NATS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "up"], env=full, capture_output=True, text=True, timeout=120
    )


def assert_one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_up_offline_without_the_model_names_the_setting_and_starts_nothing(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: as offline as it gets, at once
    line = assert_one_line(run_up(tmp_path, GIGAAM_MODEL="v3_ctc", GIGAAM_MODEL_BASE_URL=closed))
    assert "GIGAAM_MODEL=v3_ctc" in line and "models pull v3_ctc" in line and ".ckpt" in line
    assert not (tmp_path / "data" / "nats.url").exists()  # no broker, no services were started
    assert not list((tmp_path / "models").glob("*.ckpt"))


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """A model mirror on loopback serving a file that is not the official checkpoint."""
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "v3_ctc.ckpt").write_bytes(b"not the official weights" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_up_refuses_a_download_with_a_bad_checksum(tmp_path: Path, mirror: str) -> None:
    line = assert_one_line(run_up(tmp_path, GIGAAM_MODEL="v3_ctc", GIGAAM_MODEL_BASE_URL=mirror))
    assert "checksum mismatch" in line and "GIGAAM_MODEL=v3_ctc" in line
    assert not any((tmp_path / "models").iterdir())  # nothing that looks like a model is left


def test_up_on_a_port_in_use_names_the_port_and_the_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_up(tmp_path, GIGAAM_API_PORT=str(port), GIGAAM_MODEL="/nonexistent/never-read.ckpt")
    line = assert_one_line(result)
    assert f"port {port}" in line and "GIGAAM_API_PORT" in line
    assert "FIRST API KEY" not in result.stdout


def test_api_service_on_a_port_in_use_exits_for_good_without_a_first_key(tmp_path: Path) -> None:
    import os

    with EmbeddedNats(tmp_path / "nats") as nats, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "GIGAAM_NATS_URL": nats.url,
            "GIGAAM_DATA_DIR": str(tmp_path / "data"),
            "GIGAAM_API_PORT": str(port),
        }
        result = subprocess.run(
            [sys.executable, "-m", "services.api"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 78  # EX_CONFIG: the supervisor does not restart it
    assert f"port {port}" in result.stderr and "GIGAAM_API_PORT" in result.stderr
    assert "FIRST API KEY" not in result.stdout and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    root = tmp_path_factory.mktemp("broken-model")
    bad = root / "v3_ctc.ckpt"
    bad.write_bytes(b"PK\x03\x04 a truncated download")
    stack = ApiStack(root, GIGAAM_MODEL=str(bad), GIGAAM_API_RATE_CALLS="0", GIGAAM_API_RATE_UPLOADS="0")
    stack.start(stages=("registry", "decode", "format", "api"))
    yield stack
    stack.stop()


def infer_health(stack: ApiStack, timeout: float = 60.0) -> dict:
    """/health's infer check once the worker has tried (and failed) to load the model."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{stack.base}/health", timeout=10).json()
        if "error" in body["checks"]["infer"] or time.monotonic() > deadline:
            return body
        time.sleep(0.3)


def test_health_gives_the_model_error(broken_model: ApiStack) -> None:
    body = infer_health(broken_model)
    assert body["status"] == "unhealthy" and "infer" in body["missing"]
    assert body["checks"]["infer"]["ok"] is False
    assert "GIGAAM_MODEL=" in body["checks"]["infer"]["error"]


def test_a_task_accepted_without_a_model_says_it_waits_and_why(broken_model: ApiStack, tmp_path: Path) -> None:
    infer_health(broken_model)
    key = broken_model.key("waiting")
    wav = speech_wav(tmp_path / "waits.wav")
    with open(wav, "rb") as fh:
        accepted = httpx.post(
            f"{broken_model.base}/api/v1/transcribe",
            headers={"X-API-Key": key, "Accept-Language": "en"},
            files={"file": fh},
            timeout=30,
        )
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["message"].startswith("File accepted, but the speech model is not ready") and "GIGAAM_MODEL=" in body["message"]
    assert body["estimated_seconds"] is None and "s" != body["estimated_time"][-1]  # no promise in seconds
    status = httpx.get(f"{broken_model.base}/api/v1/tasks/{body['task_id']}", headers={"X-API-Key": key}).json()
    assert status["status"] in ("pending", "processing")
    assert status["message"].startswith("Задача ждёт модель распознавания") and "GIGAAM_MODEL=" in status["message"]
