"""Stage work functions and the cross-job batcher, without NATS: real files, real tiny models."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import orjson
import pytest

from pipeline.batcher import SegmentBatcher
from pipeline.decode import MediaError
from pipeline.stages import transcribing_progress
from pipeline.stages.decode import decode_to_pcm
from pipeline.stages.format import render_all, write_to_output_dir
from pipeline.stages.infer import transcribe_job
from pipeline.transcribe import transcribe_file
from schemas.messages import InferJob, TaskOptions, Transcript, decode
from tests.test_engine_conformance import engine, read_wav



def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((samples * 32768).astype(np.int16).tobytes())
    return path


@pytest.fixture
def long_wav(tmp_path: Path) -> Path:
    """~50 s: speech files with pauses, so VAD yields several segments."""
    silence = np.zeros(16000, dtype=np.float32)
    parts = []
    for name in ("02_speech_5s", "04_speech_23s", "03_speech_9s", "01_speech_2s", "04_speech_23s"):
        parts += [read_wav(name), silence]
    return write_wav(tmp_path / "long.wav", np.concatenate(parts))


def test_pipeline_stages_equal_local_transcription(long_wav: Path, tmp_path: Path) -> None:
    eng = engine("v3_e2e_rnnt")
    outcome = decode_to_pcm(long_wav, tmp_path / "audio.pcm", vad=True, max_segment_s=25.0)
    assert len(outcome.segments) >= 2
    assert all(s.end - s.start <= 25.0 for s in outcome.segments)
    assert outcome.duration == pytest.approx(long_wav.stat().st_size / 32000, abs=0.01)
    job = InferJob("t1", "t1/audio", outcome.num_samples, outcome.duration, outcome.segments, "long.wav")
    progress: list[tuple[int, int]] = []

    async def on_progress(done: int, total: int) -> None:
        progress.append((done, total))

    async def run() -> Transcript:
        batcher = SegmentBatcher(eng.transcribe, max_batch=4)
        try:
            return await transcribe_job(batcher, tmp_path / "audio.pcm", job, model=eng.name, on_progress=on_progress)
        finally:
            await batcher.close()

    via_stages = asyncio.run(run())
    local = transcribe_file(eng.transcribe, long_wav, model=eng.name)
    assert via_stages.segments == local.segments and via_stages.text == local.text and local.text
    assert [d for d, _ in progress] == sorted(d for d, _ in progress) and progress[-1][0] == progress[-1][1]
    assert via_stages.task_id == "t1"


def test_batcher_pools_segments_of_concurrent_jobs() -> None:
    eng = engine("v3_ctc")
    pieces = [read_wav(n) for n in ("01_speech_2s", "02_speech_5s", "03_speech_9s", "05_noise_1p5s")]
    expected = [r.token_ids for r in eng.transcribe(pieces)]
    calls: list[int] = []

    def recognize(batch: list[np.ndarray]):  # noqa: ANN202
        calls.append(len(batch))
        return eng.transcribe(batch)

    async def run() -> list[list[list[int]]]:
        batcher = SegmentBatcher(recognize, max_batch=16, max_wait=0.2)
        try:
            jobs = [batcher.transcribe(pieces[:2]), batcher.transcribe(pieces[2:]), batcher.transcribe(pieces)]
            results = await asyncio.gather(*jobs)
            return [[r.token_ids for r in res] for res in results]
        finally:
            await batcher.close()

    a, b, c = asyncio.run(run())
    assert a + b == expected and c == expected
    assert calls == [8]  # three jobs, one engine call
    assert sum(calls) == 8


def test_batcher_reports_engine_errors_to_the_job_and_keeps_running() -> None:
    eng = engine("v3_ctc")

    def recognize(batch: list[np.ndarray]):  # noqa: ANN202
        if any(b.shape[0] == 1234 for b in batch):
            raise RuntimeError("engine exploded")
        return eng.transcribe(batch)

    async def run() -> tuple[str, str]:
        batcher = SegmentBatcher(recognize, max_batch=1, max_wait=0)
        try:
            with pytest.raises(RuntimeError, match="engine exploded"):
                await batcher.transcribe([np.zeros(1234, np.float32)])
            (ok,) = await batcher.transcribe([read_wav("01_speech_2s")])
            return ok.text, eng.transcribe([read_wav("01_speech_2s")])[0].text
        finally:
            await batcher.close()

    got, want = asyncio.run(run())
    assert got == want and got


def test_decode_stage_refuses_non_media(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp3"
    bad.write_text("this is not audio at all")
    with pytest.raises(MediaError):
        decode_to_pcm(bad, tmp_path / "a.pcm", vad=True, max_segment_s=25.0)


def test_silence_gives_no_segments_and_an_empty_transcript(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(16000 * 3, np.float32))
    outcome = decode_to_pcm(wav, tmp_path / "q.pcm", vad=True, max_segment_s=25.0)
    assert outcome.segments == ()
    t = transcribe_file(engine("v3_ctc").transcribe, wav, model="v3_ctc")
    assert t.text == "" and t.segments == () and t.duration == 3.0


def test_format_stage_renders_every_format_and_writes_chosen_ones(long_wav: Path, tmp_path: Path) -> None:
    t = transcribe_file(engine("v3_e2e_rnnt").transcribe, long_wav, model="v3_e2e_rnnt")
    t = Transcript(t.text, t.duration, t.model, t.segments, task_id="task-1", filename="встреча.mp3")
    rendered = render_all(t)
    assert set(rendered) == {"txt", "timecodes", "srt", "vtt", "json"}
    assert decode(Transcript, orjson.loads(rendered["json"])).text == t.text
    opts = TaskOptions(formats=("txt", "srt"), output_dir="team/a")
    paths = write_to_output_dir(tmp_path / "out", t, opts, rendered)
    assert sorted(Path(p).name for p in paths) == ["встреча.srt", "встреча.txt"]
    assert (tmp_path / "out" / "team" / "a" / "встреча.txt").read_bytes() == rendered["txt"]
    assert (tmp_path / "out" / ".stignore").is_file()
    # a redelivery of the same task rewrites in place, no suffix
    assert write_to_output_dir(tmp_path / "out", t, opts, rendered) == paths


def test_progress_scale() -> None:
    assert transcribing_progress(0, 10) == 10
    assert transcribing_progress(10, 10) == 94
    assert transcribing_progress(0, 0) == 94


def test_a_short_job_is_not_stuck_behind_a_long_one() -> None:
    eng = engine("v3_ctc")
    order: list[str] = []

    def recognize(batch: list[np.ndarray]):  # noqa: ANN202
        order.extend("short" if b.shape[0] == 999 else "long" for b in batch)
        return eng.transcribe(batch)

    async def run() -> None:
        batcher = SegmentBatcher(recognize, max_batch=2, max_wait=0)
        try:
            long_job = asyncio.ensure_future(batcher.transcribe([read_wav("01_speech_2s")] * 10))
            await asyncio.sleep(0)
            short_job = asyncio.ensure_future(batcher.transcribe([np.zeros(999, np.float32)]))
            await asyncio.gather(long_job, short_job)
        finally:
            await batcher.close()

    asyncio.run(run())
    assert order.count("short") == 1 and order.count("long") == 10
    assert order.index("short") <= 4  # served within the next couple of batches, not after all ten
