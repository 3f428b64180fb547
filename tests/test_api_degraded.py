"""The API over a pipeline with no workers (only the registry runs): health says what is missing,
uploads are queued rather than refused, and everything that needs a finished task says so clearly.
Keys are optional here (GIGAAM_API_KEYS_REQUIRED=0), for the anonymous mode."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from tests.apistack import ApiStack, speech_wav

pytestmark = [
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    stack = ApiStack(
        tmp_path_factory.mktemp("degraded"),
        services="registry,api",
        GIGAAM_API_RATE_CALLS="0",
        GIGAAM_API_KEYS_REQUIRED="0",
        GIGAAM_API_PROXIES="1",  # as behind the shipped nginx
    )
    stack.start(stages=("registry", "api"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(api: ApiStack) -> str:
    return api.key("degraded")


def test_health_is_503_and_names_the_missing_stages(api: ApiStack) -> None:
    response = httpx.get(f"{api.base}/health", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and body["missing"] == ["decode", "infer", "format"]
    assert body["checks"]["nats"] == {"ok": True} and body["checks"]["registry"] == {"ok": True}


def test_uploads_queue_up_without_promising_seconds_and_results_wait(api: ApiStack, key: str, tmp_path: Path) -> None:
    """No inference worker answers: tasks are queued, and their answers say they wait for it instead
    of an estimate in seconds (the estimate's arithmetic is tested in tests/test_estimate.py)."""
    wav = speech_wav(tmp_path / "queued.wav", "03_speech_9s")
    headers = {"X-API-Key": key}
    accepted = []
    for _ in range(4):
        with open(wav, "rb") as fh:
            response = httpx.post(f"{api.base}/api/v1/transcribe", headers=headers, files={"file": fh}, timeout=30)
        assert response.status_code == 202, response.text
        accepted.append(response.json())
    assert [a["estimated_seconds"] for a in accepted] == [None] * 4
    assert all(a["message"].endswith("задача ждёт её: no inference worker answers") for a in accepted), accepted
    task_id = accepted[0]["task_id"]
    status = httpx.get(f"{api.base}/api/v1/tasks/{task_id}", headers=headers).json()
    assert (status["status"], status["stage"], status["progress"]) == ("pending", "queued", 0)
    assert status["message"].startswith("Задача ждёт модель распознавания") and status["started_at"] is None
    for path in ("result", "download?format=srt"):
        waiting = httpx.get(f"{api.base}/api/v1/tasks/{task_id}/{path}", headers={**headers, "Accept-Language": "en"})
        assert waiting.status_code == 409
        assert waiting.json()["error"] == {
            "code": "task_not_completed",
            "message": "The task is not finished yet: pending, 0%",
            "type": "conflict_error",
        }
    listed = httpx.get(f"{api.base}/api/v1/tasks", headers=headers, params={"status_filter": "pending"}).json()
    assert listed["total"] == 4


def test_events_stream_shows_the_current_state_and_ends_on_delete(api: ApiStack, key: str, tmp_path: Path) -> None:
    wav = speech_wav(tmp_path / "watched.wav")
    headers = {"X-API-Key": key}
    with open(wav, "rb") as fh:
        task_id = httpx.post(f"{api.base}/api/v1/transcribe", headers=headers, files={"file": fh}).json()["task_id"]
    frames: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{api.base}/api/v1/tasks/{task_id}/events", headers=headers, timeout=30) as stream:
        deleter = threading.Timer(1.0, lambda: httpx.delete(f"{api.base}/api/v1/tasks/{task_id}", headers=headers))
        deleter.start()
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                frames.append((name, json.loads(line[6:])))
        deleter.join()
    assert frames[0][0] == "status" and frames[0][1]["status"] == "pending"
    assert frames[-1] == ("deleted", {"task_id": task_id})
    assert httpx.get(f"{api.base}/api/v1/tasks/{task_id}", headers=headers).status_code == 404


def test_without_required_keys_anonymous_callers_share_one_space(api: ApiStack, key: str, tmp_path: Path) -> None:
    wav = speech_wav(tmp_path / "anonymous.wav")
    with open(wav, "rb") as fh:
        accepted = httpx.post(f"{api.base}/api/v1/transcribe", files={"file": fh})
    assert accepted.status_code == 202, accepted.text
    task_id = accepted.json()["task_id"]
    assert httpx.get(f"{api.base}/api/v1/tasks/{task_id}").status_code == 200
    assert httpx.get(f"{api.base}/api/v1/tasks/{task_id}", headers={"X-API-Key": key}).status_code == 404
    wrong = httpx.get(f"{api.base}/api/v1/tasks", headers={"X-API-Key": "gam_wrong"})
    assert wrong.status_code == 401  # a key that is sent must still be valid
    with open(wav, "rb") as fh:
        hooked = httpx.post(
            f"{api.base}/api/v1/transcribe", files={"file": fh}, data={"callback_url": "https://example.com/hook"}
        )
    assert hooked.status_code == 400 and hooked.json()["error"]["code"] == "bad_callback_url"


def test_behind_a_proxy_anonymous_rate_limits_follow_the_forwarded_client(api: ApiStack, tmp_path: Path) -> None:
    """Behind nginx every request comes from 127.0.0.1: with GIGAAM_API_PROXIES=1 each client behind
    it gets its own anonymous upload budget instead of all sharing the proxy's."""
    wav = speech_wav(tmp_path / "forwarded.wav")

    def remaining(client_ip: str) -> int:
        with open(wav, "rb") as fh:
            response = httpx.post(
                f"{api.base}/api/v1/transcribe", files={"file": fh}, headers={"X-Forwarded-For": client_ip}, timeout=30
            )
        assert response.status_code == 202, response.text
        return int(response.headers["X-RateLimit-Remaining"])

    first = remaining("203.0.113.7")
    assert remaining("203.0.113.7") == first - 1  # the same client spends its own budget
    assert remaining("198.51.100.23") == first  # another client behind the same proxy starts full
