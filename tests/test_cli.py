"""`gigaam-transcriber models ...` and `local`, run as real processes; downloads from a loopback server."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pipeline.asr.catalog import ModelInfo
from pipeline.asr.checkpoint import md5sum
from pipeline.asr.store import DownloadError, ModelNotFound, pull, resolve_model
from tests.stack import free_port, speech, write_wav
from tests.kit import GOLDEN



def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server over a folder: stands in for the official CDN."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def test_pull_downloads_verifies_and_places_model_and_tokenizer(mirror, tmp_path: Path) -> None:  # noqa: ANN001
    url, root = mirror
    src = GOLDEN / "models"
    for name in ("v3_e2e_ctc.ckpt", "v3_e2e_ctc_tokenizer.model"):
        (root / name).write_bytes((src / name).read_bytes())
    info = ModelInfo("v3_e2e_ctc", "ctc", md5sum(src / "v3_e2e_ctc.ckpt"), True, True)
    seen: list[int] = []
    target = pull(info, tmp_path / "models", base_url=url, progress=lambda label, done, total: seen.append(done))
    assert target == tmp_path / "models" / "v3_e2e_ctc.ckpt" and md5sum(target) == info.md5
    assert (tmp_path / "models" / "v3_e2e_ctc_tokenizer.model").is_file()
    assert target.stat().st_size in seen
    assert target.stat().st_mode & 0o044  # readable by the service user, not mkstemp's 0600
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["v3_e2e_ctc.ckpt", "v3_e2e_ctc_tokenizer.model"]
    # already present and intact: nothing is fetched again
    (root / "v3_e2e_ctc.ckpt").unlink()
    assert pull(info, tmp_path / "models", base_url=url) == target


def test_checksum_mismatch_discards_the_download(mirror, tmp_path: Path) -> None:  # noqa: ANN001
    url, root = mirror
    (root / "v3_ctc.ckpt").write_bytes(b"tampered" * 1000)
    r = cli("models", "pull", "ctc", "--base-url", url, env={"GIGAAM_MODEL_DIR": str(tmp_path / "m")})
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and "Traceback" not in r.stderr
    assert not any((tmp_path / "m").iterdir())


def test_unreachable_server_and_missing_file_give_one_line_errors(mirror, tmp_path: Path) -> None:  # noqa: ANN001
    url, _ = mirror
    r = cli("models", "pull", "rnnt", "--base-url", url, env={"GIGAAM_MODEL_DIR": str(tmp_path)})
    assert r.returncode == 2 and "HTTP 404" in r.stderr
    r = cli("models", "pull", "rnnt", "--base-url", "http://127.0.0.1:9", env={"GIGAAM_MODEL_DIR": str(tmp_path)})
    assert r.returncode == 2 and "cannot reach" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(DownloadError):
        pull("v3_ctc", tmp_path, base_url="http://127.0.0.1:9", timeout=2)


def test_unknown_model_name_is_refused() -> None:
    r = cli("models", "pull", "v4_magic")
    assert r.returncode == 2 and "unknown model 'v4_magic'" in r.stderr and "e2e_rnnt" in r.stderr


def test_models_list_and_verify(tmp_path: Path) -> None:
    r = cli("models", "list", env={"GIGAAM_MODEL_DIR": str(tmp_path)})
    assert r.returncode == 0 and "v3_e2e_rnnt" in r.stdout and "e2e_rnnt" in r.stdout
    r = cli("models", "verify", str(GOLDEN / "models" / "v3_e2e_rnnt.ckpt"))
    assert r.returncode == 0 and "683,521 parameters" in r.stdout and "1024 tokens" in r.stdout
    bad = tmp_path / "x.ckpt"
    bad.write_text("hello")
    r = cli("models", "verify", str(bad))
    assert r.returncode == 2 and "not a PyTorch checkpoint" in r.stderr


def test_resolve_model_by_path_and_by_name(tmp_path: Path) -> None:
    assert resolve_model(str(GOLDEN / "models" / "v3_ctc.ckpt"), tmp_path).name == "v3_ctc.ckpt"
    with pytest.raises(ModelNotFound, match="models pull v3_e2e_rnnt"):
        resolve_model("e2e_rnnt", tmp_path)
    (tmp_path / "v3_ctc.ckpt").write_bytes(b"x")
    assert resolve_model("ctc", tmp_path) == tmp_path / "v3_ctc.ckpt"


def test_local_transcribes_files_in_json_and_srt(tmp_path: Path) -> None:
    model = str(GOLDEN / "models" / "v3_e2e_rnnt.ckpt")
    wav = str(GOLDEN / "audio" / "04_speech_23s.wav")
    r = cli("local", "--model", model, "--format", "json", wav)
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["text"] and doc["segments"] and doc["words"]
    assert set(doc["segments"][0]) >= {"start", "end", "text"} and set(doc["words"][0]) == {"word", "start", "end"}
    assert all(0 <= w["start"] <= w["end"] <= 23.4 for w in doc["words"])
    r = cli("local", "--model", model, "--format", "srt", "--no-vad", "-o", str(tmp_path), wav)
    assert r.returncode == 0, r.stderr
    assert "-->" in (tmp_path / "04_speech_23s.srt").read_text()


def test_local_reports_bad_files_and_continues(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00junk" * 50)
    good = str(GOLDEN / "audio" / "01_speech_2s.wav")
    r = cli("local", "--model", str(GOLDEN / "models" / "v3_ctc.ckpt"), str(junk), good, str(tmp_path / "nope.wav"))
    assert r.returncode == 1
    assert "junk.mp3: not a media file" in r.stderr and "nope.wav" in r.stderr and "Traceback" not in r.stderr
    assert "==> " + good in r.stdout
    r = cli("local", "--model", str(tmp_path / "missing.ckpt"), good)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_commands_for_a_stack_that_is_not_there_say_so_in_one_line(tmp_path: Path) -> None:
    """No traceback and no retry chatter: one line naming the URL and why it failed."""
    url = f"nats://127.0.0.1:{free_port()}"
    wav = write_wav(tmp_path / "a.wav", speech("01_speech_2s"))
    procs = [  # in parallel: each waits out the CLI's 10 s connect timeout
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "GIGAAM_NATS_URL": url, "GIGAAM_LOG_LEVEL": "INFO"},
        )
        for args in (("submit", str(wav)), ("keys", "list"))
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and out == ""
        [line] = err.splitlines()
        assert line.startswith(f"error: cannot reach NATS at {url}: ") and line.endswith("is the stack up?"), line


def test_unwritable_model_and_data_dirs_give_one_line_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = cli("models", "pull", "ctc", "--base-url", "http://127.0.0.1:9", env={"GIGAAM_MODEL_DIR": str(blocker / "m")})
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"error: cannot write to the model directory {blocker / 'm'}: Not a directory"
    ]
    r = cli("up", env={"GIGAAM_DATA_DIR": str(blocker / "data")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == f"error: {blocker / 'data'}: Not a directory"


def test_submit_to_a_nats_without_a_stack_says_so_in_one_line(nats_server, tmp_path: Path) -> None:  # noqa: ANN001
    wav = write_wav(tmp_path / "a.wav", speech("01_speech_2s"))
    r = cli("submit", str(wav), env={"GIGAAM_NATS_URL": nats_server.url})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1] == (
        f"error: NATS at {nats_server.url} holds no stack: start one with `gigaam-transcriber up`"
    ), r.stderr
    assert "Traceback" not in r.stderr
