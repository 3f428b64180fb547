"""The REST API end to end: a real Sanic server on a socket in front of the real pipeline (embedded
nats-server, registry on DuckDB, decode/infer/format with the tiny model). Every call goes over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from pipeline.keys import hash_secret
from tests.apistack import ApiStack, speech_wav, upload_dir_files, wav_header

pytestmark = [
    pytest.mark.timeout(300),
]

STATUS_FIELDS = {
    "task_id",
    "status",
    "stage",
    "created_at",
    "started_at",
    "completed_at",
    "progress",
    "filename",
    "file_size",
    "message",
    "error",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("api")
    stack = ApiStack(
        root,
        GIGAAM_API_RATE_UPLOADS="0",
        GIGAAM_API_RATE_CALLS="0",
        GIGAAM_WEBHOOK_ALLOW_PRIVATE="1",
        GIGAAM_WEBHOOK_BACKOFF="0.3",
        GIGAAM_OUTPUT_REST="1",  # API results also land in the output folder, in these formats
        GIGAAM_OUTPUT_FORMATS="txt,vtt",
    ).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(api: ApiStack) -> str:
    return api.key("main")


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("media") / "Запись встречи.wav", "01_speech_2s", "02_speech_5s")


def client(api: ApiStack, key: str | None = None, **headers: str) -> httpx.Client:
    if key:
        headers["X-API-Key"] = key
    return httpx.Client(base_url=api.base, headers=headers, timeout=60.0)


def upload(http: httpx.Client, path: Path, name: str | None = None, **data: str) -> httpx.Response:
    with open(path, "rb") as fh:
        return http.post("/api/v1/transcribe", files={"file": (name or path.name, fh)}, data=data or None)


def wait_done(http: httpx.Client, task_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = http.get(f"/api/v1/tasks/{task_id}")
        assert status.status_code == 200, status.text
        body = status.json()
        if body["status"] in ("completed", "failed"):
            return body
        assert time.monotonic() < deadline, f"task still {body['status']}"
        time.sleep(0.2)


def seconds(wav: Path) -> float:
    return (wav.stat().st_size - 44) / 32000


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert body["detail"] == body["error"]["message"] and body["error"]["message"]
    return body["error"]["code"]


# --------------------------------------------------------------------------- service routes and docs


def test_info_and_health_answer_without_a_key(api: ApiStack) -> None:
    with client(api) as http:
        info = http.get("/").json()
        assert info["docs"] == "/docs" and info["health"] == "/health" and "wav" in info["supported_formats"]
        assert info["max_upload_bytes"] == 2 * 1024**3
        health = http.get("/health")
        assert health.status_code == 200, health.text
        body = health.json()
        assert body["status"] == "healthy" and body["missing"] == []
        assert set(body["checks"]) == {"nats", "registry", "decode", "infer", "format"}
        assert body["checks"]["infer"]["model"] == "v3_e2e_ctc"
        assert "pid" not in body["checks"]["infer"]  # no process details to the public


def test_docs_serve_swagger_ui_with_schemas_examples_and_security(api: ApiStack) -> None:
    with client(api) as http:
        ui = http.get("/docs", follow_redirects=True)
        assert ui.status_code == 200 and "swagger" in ui.text.lower()
        doc = http.get("/docs/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {
        "type": "apiKey",
        "name": "X-API-Key",
        "in": "header",
        "description": "`gam_...` key",
    }
    assert schemes["BearerAuth"]["scheme"] == "bearer"
    assert {"Error", "TaskAccepted", "TaskStatus", "TaskResult", "TaskList", "Health"} <= set(
        doc["components"]["schemas"]
    )
    expected = {
        ("get", "/"),
        ("get", "/health"),
        ("post", "/api/v1/transcribe"),
        ("get", "/api/v1/tasks"),
        ("get", "/api/v1/tasks/{task_id}"),
        ("get", "/api/v1/tasks/{task_id}/result"),
        ("get", "/api/v1/tasks/{task_id}/download"),
        ("delete", "/api/v1/tasks/{task_id}"),
        ("get", "/api/v1/tasks/{task_id}/events"),
        ("post", "/v1/audio/transcriptions"),
    }
    found = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert expected <= found
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            public = path in ("/", "/health")
            assert (op.get("security") is None) == public, (method, path)
            if not public:
                assert {"ApiKeyAuth": []} in op["security"] and {"BearerAuth": []} in op["security"]
            for status, response in op["responses"].items():
                for media in response["content"].values():
                    assert "example" in media, (method, path, status)
    upload_body = doc["paths"]["/api/v1/transcribe"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload_body["schema"]["properties"]["file"]["format"] == "binary"


def test_every_protected_operation_refuses_missing_and_wrong_keys(api: ApiStack, key: str) -> None:
    with client(api) as http:
        doc = http.get("/docs/openapi.json").json()
        for path, ops in doc["paths"].items():
            if path in ("/", "/health"):
                continue
            url = path.replace("{task_id}", "0" * 32)
            for method in ops:
                missing = http.request(method, url)
                assert missing.status_code == 401 and error_code(missing) == "missing_api_key", (method, path)
                if method == "get":  # no way around the guard through a HEAD request either
                    assert (
                        http.head(url).status_code in (401, 405)
                        and http.head(url, headers={"X-API-Key": key}).status_code == 405
                    )
                wrong = http.request(method, url, headers={"X-API-Key": "gam_" + "x" * 32, "Accept-Language": "en"})
                assert wrong.status_code == 401 and error_code(wrong) == "invalid_api_key"
                assert wrong.json()["error"]["message"] == "Invalid or revoked API key"
        # the same key works as a bearer token, as OpenAI clients send it
        assert http.get("/api/v1/tasks", headers={"Authorization": f"Bearer {key}"}).status_code == 200


# --------------------------------------------------------------------------- the guide's client flows


class GuideStyleClient:
    """A client written the way the original API guide's examples use the API: `requests`, the
    X-API-Key header, upload, poll status and progress, then fetch the result."""

    def __init__(self, api_key: str, base_url: str) -> None:
        self.base_url = base_url
        self.headers = {"X-API-Key": api_key}

    def transcribe_file(self, file_path: str, poll_interval: float = 0.3) -> dict:
        import requests

        with open(file_path, "rb") as f:
            response = requests.post(f"{self.base_url}/api/v1/transcribe", headers=self.headers, files={"file": f})
        if response.status_code != 202:
            raise RuntimeError(f"upload failed: {response.text}")
        task_id = response.json()["task_id"]
        while True:
            status = requests.get(f"{self.base_url}/api/v1/tasks/{task_id}", headers=self.headers).json()
            print(f"{status['status']} - {status['progress']}%")
            if status["status"] == "completed":
                break
            if status["status"] == "failed":
                raise RuntimeError(f"processing failed: {status.get('error')}")
            time.sleep(poll_interval)
        result = requests.get(f"{self.base_url}/api/v1/tasks/{task_id}/result", headers=self.headers).json()
        print(f"done in {result['processing_time']:.1f}s")
        return result


def test_guide_style_python_client_flow(api: ApiStack, key: str, wav: Path, tmp_path: Path) -> None:
    import requests

    result = GuideStyleClient(key, api.base).transcribe_file(str(wav))
    assert result["status"] == "completed" and result["transcription"]
    assert result["transcription_with_timecodes"].startswith("[00:00:00 - ")
    # downloads and list, as in the guide
    headers = {"X-API-Key": key}
    url = f"{api.base}/api/v1/tasks/{result['task_id']}/download"
    txt = requests.get(url, headers=headers, params={"format": "txt"})
    assert txt.text.split() == result["transcription"].split()
    listed = requests.get(f"{api.base}/api/v1/tasks", headers=headers, params={"limit": 50}).json()
    assert result["task_id"] in [t["task_id"] for t in listed["tasks"]]
    # errors surface through raise_for_status with the guide's codes
    bad = requests.get(f"{api.base}/api/v1/tasks", headers={"X-API-Key": "nope"})
    with pytest.raises(requests.exceptions.HTTPError) as caught:
        bad.raise_for_status()
    assert caught.value.response.status_code == 401
    deleted = requests.delete(f"{api.base}/api/v1/tasks/{result['task_id']}", headers=headers).json()
    assert result["task_id"] in deleted["message"]


BASH_FLOW = r"""
set -eu
FILE="$1"
RESPONSE=$(curl -s -X POST "$BASE_URL/api/v1/transcribe" -H "X-API-Key: $API_KEY" -F "file=@$FILE")
TASK_ID=$(echo "$RESPONSE" | jq -r '.task_id')
echo "Task ID: $TASK_ID"
while true; do
    STATUS=$(curl -s -H "X-API-Key: $API_KEY" "$BASE_URL/api/v1/tasks/$TASK_ID" | jq -r '.status')
    PROGRESS=$(curl -s -H "X-API-Key: $API_KEY" "$BASE_URL/api/v1/tasks/$TASK_ID" | jq -r '.progress')
    echo "Status: $STATUS - $PROGRESS%"
    if [ "$STATUS" = "completed" ]; then break; fi
    if [ "$STATUS" = "failed" ]; then exit 3; fi
    sleep 0.3
done
curl -s -H "X-API-Key: $API_KEY" "$BASE_URL/api/v1/tasks/$TASK_ID/result" | jq -r '.transcription' > result.txt
curl -s -H "X-API-Key: $API_KEY" "$BASE_URL/api/v1/tasks/$TASK_ID/download?format=timecodes" -o result_timecodes.txt
"""


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq") and shutil.which("bash")), reason="needs bash, curl, jq"
)
def test_guide_style_bash_flow_with_curl_and_jq(api: ApiStack, key: str, wav: Path, tmp_path: Path) -> None:
    script = tmp_path / "transcribe.sh"
    script.write_text(BASH_FLOW)
    env = {"PATH": "/usr/bin:/bin", "API_KEY": key, "BASE_URL": api.base}
    done = subprocess.run(
        ["bash", str(script), str(wav)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Status: completed - 100%" in done.stdout
    assert (tmp_path / "result.txt").read_text().strip()
    assert (tmp_path / "result_timecodes.txt").read_text().startswith("[00:00:00 - ")


# --------------------------------------------------------------------------- the contract in detail


def test_upload_status_result_and_downloads_follow_the_contract(api: ApiStack, key: str, wav: Path) -> None:
    with client(api, key) as http:
        accepted = upload(http, wav)
        assert accepted.status_code == 202, accepted.text
        body = accepted.json()
        assert set(body) == {"task_id", "message", "filename", "file_size", "estimated_time", "estimated_seconds"}
        assert body["filename"] == "Запись встречи.wav" and body["file_size"] == wav.stat().st_size
        assert body["message"] == "Файл успешно загружен и отправлен на обработку"
        assert body["estimated_time"].startswith("≈") and body["estimated_seconds"] > 0
        task_id = body["task_id"]
        status = http.get(f"/api/v1/tasks/{task_id}")  # right away: the registry already knows it
        assert status.status_code == 200 and set(status.json()) == STATUS_FIELDS
        final = wait_done(http, task_id)
        assert final["status"] == "completed" and final["stage"] == "done" and final["progress"] == 100
        assert final["message"] == "Транскрибация успешно завершена" and final["error"] is None
        assert final["created_at"] <= final["started_at"] <= final["completed_at"]
        assert final["created_at"].endswith("+00:00")
        result = http.get(f"/api/v1/tasks/{task_id}/result").json()
        assert set(result) == {
            "task_id",
            "status",
            "filename",
            "transcription",
            "transcription_with_timecodes",
            "processing_time",
            "media_duration",
        }
        assert result["media_duration"] == pytest.approx(seconds(wav), abs=0.05) and result["processing_time"] > 0
        types = {
            "txt": "text/plain; charset=utf-8",
            "timecodes": "text/plain; charset=utf-8",
            "srt": "application/x-subrip; charset=utf-8",
            "vtt": "text/vtt; charset=utf-8",
            "json": "application/json; charset=utf-8",
        }
        suffixes = {"txt": ".txt", "timecodes": "_timecodes.txt", "srt": ".srt", "vtt": ".vtt", "json": ".json"}
        for fmt, content_type in types.items():
            download = http.get(f"/api/v1/tasks/{task_id}/download", params={"format": fmt})
            assert download.status_code == 200 and download.headers["content-type"] == content_type
            disposition = download.headers["content-disposition"]
            assert disposition.startswith("attachment; ")
            encoded = disposition.split("filename*=UTF-8''")[1]
            assert httpx.URL("/" + encoded).path[1:] == "Запись встречи" + suffixes[fmt]
        assert json.loads(http.get(f"/api/v1/tasks/{task_id}/download?format=json").text)["task_id"] == task_id
        assert (
            http.get(f"/api/v1/tasks/{task_id}/download").text
            == http.get(f"/api/v1/tasks/{task_id}/download?format=txt").text
        )  # txt is the default
        wrong = http.get(f"/api/v1/tasks/{task_id}/download", params={"format": "docx"})
        assert wrong.status_code == 400 and error_code(wrong) == "bad_parameter"
        english = http.get(f"/api/v1/tasks/{task_id}", headers={"Accept-Language": "en-US,en;q=0.9"}).json()
        assert english["message"] == "Transcription completed"


def test_output_rest_writes_api_results_into_the_output_folder(api: ApiStack, key: str, wav: Path, tmp_path: Path) -> None:
    named = tmp_path / "rest-output-check.wav"
    named.write_bytes(wav.read_bytes())
    with client(api, key) as http:
        task_id = upload(http, named).json()["task_id"]
        assert wait_done(http, task_id)["status"] == "completed"
        text = http.get(f"/api/v1/tasks/{task_id}/download", params={"format": "txt"}).text
    written = sorted(p.name for p in api.stack.output_dir.glob("rest-output-check*"))
    assert written == ["rest-output-check.txt", "rest-output-check.vtt"]  # GIGAAM_OUTPUT_FORMATS, not the default
    assert (api.stack.output_dir / "rest-output-check.txt").read_text().strip() == text.strip()


def test_list_filters_pages_and_leaves_out_transcripts(api: ApiStack, wav: Path) -> None:
    own = api.key("lister")
    with client(api, own) as http:
        ids = [upload(http, wav, name=f"part {i}.wav").json()["task_id"] for i in range(3)]
        for task_id in ids:
            wait_done(http, task_id)
        page = http.get("/api/v1/tasks", params={"limit": 2}).json()
        assert page["total"] == 3 and len(page["tasks"]) == 2
        assert all(set(t) == STATUS_FIELDS for t in page["tasks"])  # no transcript in list items
        rest = http.get("/api/v1/tasks", params={"limit": 2, "offset": 2}).json()
        assert {t["task_id"] for t in page["tasks"] + rest["tasks"]} == set(ids)
        assert http.get("/api/v1/tasks", params={"status_filter": "completed"}).json()["total"] == 3
        assert http.get("/api/v1/tasks", params={"status_filter": "failed"}).json() == {"total": 0, "tasks": []}
        bad = ({"status_filter": "done"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}, {"offset": 2**70})
        for params in bad:
            refused = http.get("/api/v1/tasks", params=params)
            assert refused.status_code == 400 and error_code(refused) == "bad_parameter", params


def test_a_key_sees_and_deletes_only_its_own_tasks(api: ApiStack, wav: Path) -> None:
    alice, bob = api.key("alice"), api.key("bob")
    with client(api, alice) as a, client(api, bob) as b:
        task_id = upload(a, wav).json()["task_id"]
        wait_done(a, task_id)
        for method, path in [
            ("GET", f"/api/v1/tasks/{task_id}"),
            ("GET", f"/api/v1/tasks/{task_id}/result"),
            ("GET", f"/api/v1/tasks/{task_id}/download"),
            ("GET", f"/api/v1/tasks/{task_id}/events"),
            ("DELETE", f"/api/v1/tasks/{task_id}"),
        ]:
            other = b.request(method, path)
            assert other.status_code == 404 and error_code(other) == "task_not_found", path
        assert task_id not in [t["task_id"] for t in b.get("/api/v1/tasks").json()["tasks"]]
        assert a.get(f"/api/v1/tasks/{task_id}").status_code == 200  # bob's delete did nothing
        deleted = a.delete(f"/api/v1/tasks/{task_id}")
        assert deleted.status_code == 200 and deleted.json() == {"message": f"Задача {task_id} удалена"}
        gone = a.get(f"/api/v1/tasks/{task_id}")
        assert gone.status_code == 404 and error_code(gone) == "task_not_found"
        assert a.delete(f"/api/v1/tasks/{task_id}").status_code == 404
    assert not _objects_of(api, task_id)


def _objects_of(api: ApiStack, task_id: str) -> list[str]:
    import asyncio

    from pipeline.bus import connect, object_names, object_store

    async def names() -> list[str]:
        bus = await connect(api.stack.url, "gigaam-test-objects", first_connect_timeout=10)
        try:
            store = await object_store(bus.js)
            return [name for name in await object_names(store) if name.startswith(f"{task_id}/")]
        finally:
            await bus.close()

    return asyncio.run(names())


def test_a_failed_task_reports_its_reason_and_has_no_result(api: ApiStack, key: str, tmp_path: Path) -> None:
    empty = tmp_path / "silence.wav"
    empty.write_bytes(wav_header(0))  # probes fine (a WAV header), but has no audio at all
    with client(api, key) as http:
        task_id = upload(http, empty).json()["task_id"]
        final = wait_done(http, task_id)
        assert final["status"] == "failed" and "silence.wav" in final["error"]
        assert final["message"].startswith("Ошибка обработки: ")
        for path in (f"/api/v1/tasks/{task_id}/result", f"/api/v1/tasks/{task_id}/download"):
            refused = http.get(path)
            assert refused.status_code == 409 and error_code(refused) == "task_failed"


# --------------------------------------------------------------------------- what uploads refuse

BOUNDARY = "gigaamtestboundary"


def _multipart(*parts: bytes, close: bool = True) -> bytes:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + BOUNDARY.encode() + b"--\r\n" if close else b"")


def _file_part(filename: str, content: bytes, name: str = "file") -> bytes:
    head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
    return head + b"Content-Type: application/octet-stream\r\n\r\n" + content


def _field_part(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


@pytest.fixture(scope="module")
def wav_bytes(wav: Path) -> bytes:
    return wav.read_bytes()


@pytest.mark.parametrize(
    "case,content_type,body,code",
    [
        ("json body", "application/json", lambda w: b'{"file": "x"}', "not_multipart"),
        ("no boundary", "multipart/form-data", lambda w: _multipart(_file_part("a.wav", w)), "not_multipart"),
        ("no file part", None, lambda w: _multipart(_field_part("callback_url", b"")), "file_missing"),
        ("file without filename", None, lambda w: _multipart(_field_part("file", w)), "file_missing"),
        ("empty file", None, lambda w: _multipart(_file_part("a.wav", b"")), "empty_file"),
        ("exe", None, lambda w: _multipart(_file_part("setup.exe", w)), "unsupported_format"),
        ("no extension", None, lambda w: _multipart(_file_part("audio", w)), "unsupported_format"),
        ("text as mp3", None, lambda w: _multipart(_file_part("song.mp3", b"not audio at all " * 500)), "bad_media"),
        ("truncated header", None, lambda w: _multipart(_file_part("clip.mp4", w[:30])), "bad_media"),
        ("cut off", None, lambda w: _multipart(_file_part("a.wav", w), close=False)[:-10], "bad_multipart"),
        (
            "wrong boundary",
            None,
            lambda w: _multipart(_file_part("a.wav", w)).replace(BOUNDARY.encode(), b"other"),
            "bad_multipart",
        ),
        ("two files", None, lambda w: _multipart(_file_part("a.wav", w), _file_part("b.wav", w)), "bad_multipart"),
        ("part without disposition", None, lambda w: _multipart(b"X-Nothing: 1\r\n\r\nabc"), "bad_multipart"),
        (
            "headers without end",
            None,
            lambda w: b"--" + BOUNDARY.encode() + b"\r\n" + b"X: " + b"y" * 20000,
            "bad_multipart",
        ),
        (
            "huge text field",
            None,
            lambda w: _multipart(_field_part("callback_url", b"h" * 70000), _file_part("a.wav", w)),
            "bad_parameter",
        ),
        (
            "private callback is fine here, but not ftp",
            None,
            lambda w: _multipart(_field_part("callback_url", b"ftp://example.com/x"), _file_part("a.wav", w)),
            "bad_callback_url",
        ),
    ],
)
def test_bad_uploads_are_refused_with_a_reason_and_leave_nothing(
    api: ApiStack, key: str, wav_bytes: bytes, case: str, content_type: str | None, body, code: str
) -> None:
    with client(api, key) as http:
        response = http.post(
            "/api/v1/transcribe",
            content=body(wav_bytes),
            headers={"Content-Type": content_type or f"multipart/form-data; boundary={BOUNDARY}"},
        )
    assert response.status_code == 400, (case, response.text)
    assert error_code(response) == code, case
    assert not upload_dir_files(api.stack.data_dir)


def test_bad_media_reason_is_shown(api: ApiStack, key: str) -> None:
    with client(api, key, **{"Accept-Language": "en"}) as http:
        response = http.post("/api/v1/transcribe", files={"file": ("song.mp3", b"not audio at all " * 500)})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("The file is not readable audio or video: ")


@pytest.mark.parametrize(
    "sent,stored",
    [
        ("../../../etc/passwd.wav", "passwd.wav"),
        ("..\\..\\windows\\system32\\evil.wav", "evil.wav"),
        ("/abs/path/Интервью с директором.wav", "Интервью с директором.wav"),
        ("bad\x00\x07name\u202e.wav", "badname.wav"),  # NUL, bell, right-to-left override
        ("  ...hidden   file.wav  ", "hidden file.wav"),
        ("Запись встречи №5 (финал).wav", "Запись встречи №5 (финал).wav"),
    ],
)
def test_file_names_are_sanitised_but_cyrillic_survives(
    api: ApiStack, key: str, wav_bytes: bytes, sent: str, stored: str
) -> None:
    body = _multipart(_file_part(sent.replace('"', "%22"), wav_bytes))
    with client(api, key) as http:
        response = http.post(
            "/api/v1/transcribe", content=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        )
        assert response.status_code == 202, response.text
        assert response.json()["filename"] == stored
        assert http.get(f"/api/v1/tasks/{response.json()['task_id']}").json()["filename"] == stored
    assert not list(Path("/etc").glob("passwd.wav*"))


def test_absurdly_long_names_are_cut_keeping_the_extension(api: ApiStack, key: str, wav: Path) -> None:
    with client(api, key) as http:
        name = upload(http, wav, name="Очень длинное название " * 40 + ".wav").json()["filename"]
        rfc5987 = http.post(
            "/api/v1/transcribe",
            content=_multipart(
                b'Content-Disposition: form-data; name="file"; filename="fallback.wav"; '
                b"filename*=UTF-8''%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82.wav\r\n\r\n" + wav.read_bytes()
            ),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        ).json()["filename"]
    assert name.endswith(".wav") and len(name.encode()) <= 200 and name.startswith("Очень длинное")
    assert rfc5987 == "Привет.wav"


# --------------------------------------------------------------------------- live progress, webhooks, idempotency


def test_events_stream_progress_until_the_end(api: ApiStack, key: str, wav: Path) -> None:
    with client(api, key) as http:
        task_id = upload(http, wav).json()["task_id"]
        events = []
        with http.stream("GET", f"/api/v1/tasks/{task_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
        names = [n for n, _ in events]
        assert names[-1] == "completed" and set(names[:-1]) <= {"status"}
        progress = [d["progress"] for _, d in events]
        assert progress == sorted(progress) and progress[-1] == 100
        assert all(set(d) == STATUS_FIELDS for _, d in events)
        # the end of the stream means the result is there
        assert http.get(f"/api/v1/tasks/{task_id}/result").status_code == 200
        # a late subscriber gets the final state at once
        late = http.get(f"/api/v1/tasks/{task_id}/events").text
        assert late.count("event: ") == 1 and "event: completed" in late


class _Receiver(BaseHTTPRequestHandler):
    calls: list[tuple[dict, bytes]] = []
    answers: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append((dict(self.headers), body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    _Receiver.calls, _Receiver.answers = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/hook", _Receiver  # a name: delivery pins its address
    server.shutdown()


def test_webhook_is_signed_retried_and_links_the_result(
    api: ApiStack, key: str, wav: Path, receiver, tmp_path: Path
) -> None:
    url, seen = receiver
    seen.answers = [500, 503]  # two failures, then success
    with client(api, key) as http:
        task_id = upload(http, wav, callback_url=url).json()["task_id"]
        deadline = time.monotonic() + 30
        while len(seen.calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(seen.calls) == 3
        time.sleep(1.0)
        assert len(seen.calls) == 3  # delivered: no more attempts
        for attempt, (headers, body) in enumerate(seen.calls, start=1):
            expected = "sha256=" + hmac.new(hash_secret(key).encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Signature"], expected)
            assert headers["X-Webhook-Attempt"] == str(attempt) and headers["X-Webhook-Id"] == f"{task_id}.completed"
            assert headers["Host"] == url.split("/")[2]
        payload = json.loads(seen.calls[-1][1])
        assert payload["event"] == "task.completed" and payload["status"] == "completed"
        assert payload["links"]["result"] == f"{api.base}/api/v1/tasks/{task_id}/result"
        # the links work at once
        assert http.get(payload["links"]["result"]).status_code == 200
        assert http.get(payload["links"]["downloads"]["srt"]).status_code == 200
        # failures are reported too
        broken = tmp_path / "broken.wav"
        broken.write_bytes(wav_header(0))
        failed_id = upload(http, broken, callback_url=url).json()["task_id"]
        deadline = time.monotonic() + 30
        while len(seen.calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        failure = json.loads(seen.calls[3][1])
        assert failure["task_id"] == failed_id and failure["status"] == "failed" and failure["error"]


def test_idempotency_key_returns_the_first_task(api: ApiStack, key: str, wav: Path) -> None:
    other = api.key("idempotent-other")
    with client(api, key, **{"Idempotency-Key": "order-42"}) as http:
        first = upload(http, wav)
        again = upload(http, wav)
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    with client(api, other, **{"Idempotency-Key": "order-42"}) as http:
        assert upload(http, wav).json()["task_id"] != first.json()["task_id"]  # keys are per API key
    with client(api, key) as http:  # concurrent requests with one fresh key still make one task

        def post(_: int) -> str:
            files = {"file": ("same.wav", wav.read_bytes())}
            return http.post("/api/v1/transcribe", files=files, headers={"Idempotency-Key": "burst-1"}).json()[
                "task_id"
            ]

        with ThreadPoolExecutor(4) as pool:
            ids = set(pool.map(post, range(4)))
        assert len(ids) == 1
        refused = http.post(
            "/api/v1/transcribe", files={"file": ("a.wav", b"x")}, headers={"Idempotency-Key": "x" * 300}
        )
        assert refused.status_code == 400 and error_code(refused) == "bad_parameter"


# --------------------------------------------------------------------------- OpenAI compatibility


def test_official_openai_client_works_against_v1(api: ApiStack, key: str, wav: Path, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    ai = openai.OpenAI(base_url=f"{api.base}/v1", api_key=key, max_retries=0, timeout=120)
    with open(wav, "rb") as fh:
        plain = ai.audio.transcriptions.create(model="whisper-1", file=fh)
    assert plain.text
    with open(wav, "rb") as fh:
        as_text = ai.audio.transcriptions.create(model="whisper-1", file=fh, response_format="text")
    assert isinstance(as_text, str) and as_text.split() == plain.text.split()
    with open(wav, "rb") as fh:
        srt = ai.audio.transcriptions.create(model="whisper-1", file=fh, response_format="srt")
    assert "-->" in srt and srt.startswith("1\n")
    with open(wav, "rb") as fh:
        vtt = ai.audio.transcriptions.create(model="whisper-1", file=fh, response_format="vtt")
    assert vtt.startswith("WEBVTT")
    with open(wav, "rb") as fh:
        verbose = ai.audio.transcriptions.create(
            model="whisper-1",
            file=fh,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="ru",
        )
    assert verbose.duration == pytest.approx(seconds(wav), abs=0.05) and verbose.text == plain.text
    assert verbose.words and verbose.segments and verbose.words[0].start <= verbose.words[-1].end
    bad = tmp_path / "notes.mp3"
    bad.write_bytes(b"plain text, not audio " * 100)
    with open(bad, "rb") as fh, pytest.raises(openai.BadRequestError) as caught:
        ai.audio.transcriptions.create(model="whisper-1", file=fh)
    assert caught.value.body["code"] == "bad_media"
    with open(wav, "rb") as fh, pytest.raises(openai.BadRequestError):
        ai.audio.transcriptions.create(model="whisper-1", file=fh, response_format="docx")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{api.base}/v1", api_key="gam_wrong", max_retries=0).audio.transcriptions.create(
            model="whisper-1", file=open(wav, "rb")
        )


# --------------------------------------------------------------------------- errors


def test_errors_are_json_with_stable_codes_in_both_languages(api: ApiStack, key: str) -> None:
    with client(api, key) as http:
        unknown = http.get("/api/v2/nothing")
        assert unknown.status_code == 404 and error_code(unknown) == "not_found"
        assert unknown.json()["error"]["message"] == "Ресурс не найден"
        method = http.put("/api/v1/tasks")
        assert method.status_code == 405 and error_code(method) == "method_not_allowed"
        missing = http.get("/api/v1/tasks/none", headers={"Accept-Language": "de, en;q=0.5, ru;q=0.3"})
        assert missing.json()["error"] == {
            "code": "task_not_found",
            "message": "Task none not found",
            "type": "not_found_error",
        }
        russian = http.get("/api/v1/tasks/none", headers={"Accept-Language": "ru-RU, en;q=0.8"})
        assert russian.json()["error"]["message"] == "Задача none не найдена"
    import socket

    with socket.create_connection(("127.0.0.1", api.port)) as raw:
        raw.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        answer = raw.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 400") and '"code":"bad_request"' in answer
    assert "Traceback" not in answer


def test_no_server_errors_anywhere_in_the_openapi_document(api: ApiStack, key: str) -> None:
    """Schemathesis generates valid and invalid requests for every documented operation."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    doc = httpx.get(f"{api.base}/docs/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=75, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case) -> None:  # noqa: ANN001 - schemathesis Case
                response = case.call(base_url=api.base, headers={"X-API-Key": key}, timeout=60)
                content_type = (response.headers.get("content-type") or [""])[0]
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")
                elif response.status_code >= 400 and not content_type.startswith("application/json"):
                    failures.append(f"{case.method} {case.path}: {response.status_code} without a JSON body")
                elif response.status_code >= 400:
                    assert response.json()["error"]["code"]

            try:
                check()
            except Unsatisfiable:  # nothing to get wrong: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert not failures, failures[:5]
    assert not upload_dir_files(api.stack.data_dir)
