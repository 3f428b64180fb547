"""pipeline.vad on the golden speech recordings (espeak Russian) and on synthetic probabilities."""

from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np
import pytest
import torch

from pipeline.decode import decode_media
from pipeline.vad import (
    FRAME,
    fixed_segments,
    load_vad_model,
    segment_speech,
    speech_probabilities,
    speech_regions,
)
from schemas.messages import Span
from tests.kit import AUDIO

GOLDEN_AUDIO = str(AUDIO)
SR = 16000
SPEECH_FILES = ["01_speech_2s.wav", "02_speech_5s.wav", "03_speech_9s.wav", "04_speech_23s.wav"]


def golden(name: str) -> np.ndarray:
    return decode_media(os.path.join(GOLDEN_AUDIO, name)).samples


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Steady timings on a busy machine, where two torch threads fight other processes for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    return [golden(name) for name in SPEECH_FILES]


def check_segments(segments: list[Span], num_samples: int, max_s: float = 25.0) -> None:
    duration = num_samples / SR
    for seg in segments:
        assert 0.0 <= seg.start < seg.end <= duration
        assert seg.end - seg.start <= max_s + 1e-9
        # Boundaries are whole samples.
        assert abs(seg.start * SR - round(seg.start * SR)) < 1e-6 and abs(seg.end * SR - round(seg.end * SR)) < 1e-6
    for a, b in zip(segments, segments[1:]):
        assert a.end <= b.start


def covered(segments: list[Span], start: float, end: float) -> float:
    """Fraction of [start, end) that lies inside some segment."""
    inside = sum(max(0.0, min(end, s.end) - max(start, s.start)) for s in segments)
    return inside / (end - start)


@pytest.mark.parametrize("name", SPEECH_FILES)
def test_speech_files_are_mostly_speech(name: str) -> None:
    samples = golden(name)
    probs = speech_probabilities(samples)
    assert probs.shape == (-(-samples.shape[0] // FRAME),)
    assert probs.dtype == np.float32 and probs.max() > 0.9
    segments = segment_speech(samples)
    check_segments(segments, samples.shape[0])
    assert segments
    assert covered(segments, 0.0, samples.shape[0] / SR) > 0.8


@pytest.mark.parametrize("name", ["05_noise_1p5s.wav", "06_silence_0p5s.wav"])
def test_noise_and_silence_have_no_speech(name: str) -> None:
    assert segment_speech(golden(name)) == []


def test_long_digital_silence_has_no_speech() -> None:
    assert segment_speech(np.zeros(SR * 70, dtype=np.int16)) == []


def test_empty_audio() -> None:
    assert speech_probabilities(np.zeros(0, dtype=np.int16)).shape == (0,)
    assert segment_speech(np.zeros(0, dtype=np.int16)) == []


def test_three_minutes_of_speech_and_pauses(speech: list[np.ndarray]) -> None:
    rng = np.random.default_rng(7)
    parts, clips, pauses, offset = [], [], [], 0
    while offset < SR * 180:
        clip = speech[int(rng.integers(len(speech)))]
        pause = int(rng.uniform(0.3, 1.5) * SR if len(clips) % 2 else rng.uniform(2.5, 6.0) * SR)
        parts += [clip, np.zeros(pause, dtype=np.int16)]
        clips.append((offset, clip))
        pauses.append((offset + clip.shape[0], offset + clip.shape[0] + pause))
        offset += clip.shape[0] + pause
    audio = np.concatenate(parts)

    probs = speech_probabilities(audio)
    segments = segment_speech(audio, probs=probs)
    check_segments(segments, audio.shape[0])
    assert segments == segment_speech(audio)

    # Whatever VAD finds in a clip on its own is inside the long file's segments, give or take
    # an onset that comes a few frames later after a pause than at the very start of a file.
    for start, clip in clips:
        for seg in segment_speech(clip):
            missed = (1 - covered(segments, start / SR + seg.start, start / SR + seg.end)) * (seg.end - seg.start)
            assert missed < 0.25
    # Pauses longer than max_gap_s (2 s) plus padding are not transcribed.
    for start, end in pauses:
        if end - start > 2.5 * SR:
            middle = (start + end) / 2 / SR
            assert not any(s.start <= middle <= s.end for s in segments)
    # Packing: clips with a short pause between them share a segment.
    assert any(s.start <= a / SR and b / SR <= s.end for s in segments for a, b in pauses)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_batched_probabilities_match_one_frame_at_a_time(speech: list[np.ndarray]) -> None:
    """The windowed batch must give the regions silero's own sequential loop gives."""
    from silero_vad import get_speech_timestamps, load_silero_vad

    gap = np.zeros(SR, dtype=np.int16)
    audio = np.concatenate([part for clip in speech * 3 for part in (clip, gap)])  # ~2 min: 5 windows
    threads = torch.get_num_threads()
    wrapper = load_silero_vad()
    torch.set_num_threads(threads)
    expected = get_speech_timestamps(
        torch.from_numpy(audio.astype(np.float32) / 32768),
        wrapper,
        threshold=0.5,
        neg_threshold=0.35,
        min_speech_duration_ms=250,
        min_silence_duration_ms=100,
        speech_pad_ms=100,
    )
    # Where two padded regions meet, silero splits the pause between them; ours joins them.
    joined: list[tuple[int, int]] = []
    for ref in expected:
        if joined and ref["start"] <= joined[-1][1]:
            joined[-1] = (joined[-1][0], ref["end"])
        else:
            joined.append((ref["start"], ref["end"]))
    ours = speech_regions(speech_probabilities(audio), audio.shape[0])
    assert len(ours) == len(joined) > 20
    for (start, end), (ref_start, ref_end) in zip(ours, joined):
        assert abs(start - ref_start) <= 2 * FRAME and abs(end - ref_end) <= 2 * FRAME


def test_float_input_matches_int16(speech: list[np.ndarray]) -> None:
    samples = speech[2]
    np.testing.assert_allclose(
        speech_probabilities(samples), speech_probabilities(samples.astype(np.float32) / 32768), atol=1e-6
    )


def test_continuous_minute_of_speech_is_split(speech: list[np.ndarray]) -> None:
    audio = np.concatenate(speech * 2)[: SR * 62]
    segments = segment_speech(audio)
    check_segments(segments, audio.shape[0])
    assert len(segments) >= 3
    assert covered(segments, 0.0, audio.shape[0] / SR) > 0.9
    for max_s in (10.0, 5.0):
        short = segment_speech(audio, max_segment_s=max_s)
        check_segments(short, audio.shape[0], max_s=max_s)
        assert covered(short, 0.0, audio.shape[0] / SR) > 0.9


def test_split_goes_to_the_lowest_probability() -> None:
    frames = round(40 * SR / FRAME)
    probs = np.full(frames, 0.95, dtype=np.float32)
    dip = round(17.0 * SR / FRAME)
    probs[dip] = 0.4  # still speech (above the 0.35 exit threshold)
    samples = np.full(frames * FRAME, 3000, dtype=np.int16)
    segments = segment_speech(samples, probs=probs)
    cut = (dip * FRAME + FRAME // 2) / SR
    assert segments == [Span(0.0, cut), Span(cut, frames * FRAME / SR)]


def test_split_ties_go_to_the_quietest_frame() -> None:
    frames = round(40 * SR / FRAME)
    probs = np.full(frames, 0.95, dtype=np.float32)
    samples = np.full(frames * FRAME, 3000, dtype=np.int16)
    quiet = round(21.0 * SR / FRAME)
    samples[quiet * FRAME : (quiet + 1) * FRAME] = 10
    segments = segment_speech(samples, probs=probs)
    cut = (quiet * FRAME + FRAME // 2) / SR
    assert [s.start for s in segments] == [0.0, cut]
    check_segments(segments, samples.shape[0])


def test_very_long_speech_splits_into_balanced_pieces() -> None:
    frames = round(130 * SR / FRAME)
    probs = np.full(frames, 0.9, dtype=np.float32)
    samples = np.random.default_rng(0).integers(-3000, 3000, frames * FRAME).astype(np.int16)
    segments = segment_speech(samples, probs=probs)
    check_segments(segments, samples.shape[0])
    assert len(segments) == 6
    assert all(s.end - s.start >= 12.5 for s in segments[:-1])
    assert segments[0].start == 0.0 and segments[-1].end == samples.shape[0] / SR
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))


def probs_from(pattern: list[tuple[float, float]]) -> np.ndarray:
    """(seconds, probability) runs -> frame probabilities."""
    return np.concatenate([np.full(round(s * SR / FRAME), p, dtype=np.float32) for s, p in pattern])


def test_regions_use_hysteresis() -> None:
    # Starts only at >= 0.5, then holds through 0.4 (>= 0.35) until 0.2.
    probs = probs_from([(1.0, 0.4), (1.0, 0.6), (1.0, 0.4), (1.0, 0.2)])
    regions = speech_regions(probs, probs.shape[0] * FRAME, pad_s=0.0)
    assert regions == [(31 * FRAME, 93 * FRAME)]


def test_regions_bridge_short_pauses_and_drop_blips() -> None:
    probs = probs_from([(1.0, 0.0), (1.0, 0.9), (0.064, 0.1), (1.0, 0.9), (1.0, 0.0), (0.1, 0.9), (1.0, 0.0)])
    n = probs.shape[0] * FRAME
    regions = speech_regions(probs, n, pad_s=0.0)
    assert len(regions) == 1  # the 64 ms pause is bridged, the 100 ms blip dropped
    assert regions[0] == (31 * FRAME, (31 + 31 + 2 + 31) * FRAME)
    padded = speech_regions(probs, n, pad_s=0.1)
    assert padded == [(regions[0][0] - 1600, regions[0][1] + 1600)]


def test_regions_are_clipped_and_merged_by_padding() -> None:
    probs = probs_from([(1.0, 0.9), (0.15, 0.0), (1.0, 0.9)])
    n = probs.shape[0] * FRAME - 100  # last frame is partial
    regions = speech_regions(probs, n, pad_s=0.1)
    assert regions == [(0, n)]  # the 150 ms pause closes up under 2 x 100 ms of padding
    assert speech_regions(probs, n, pad_s=0.0) != [(0, n)]


def test_packing_respects_target_max_and_gap() -> None:
    # 5 s speech / 1 s pause, x10, then a 4 s pause and one more run.
    pattern = [(5.0, 0.9), (1.0, 0.0)] * 10 + [(3.0, 0.0), (5.0, 0.9)]
    probs = probs_from(pattern)
    samples = np.full(probs.shape[0] * FRAME, 1000, dtype=np.int16)
    segments = segment_speech(samples, probs=probs, pad_s=0.0)
    check_segments(segments, samples.shape[0])
    lengths = [s.end - s.start for s in segments]
    assert all(15.0 <= length <= 25.0 for length in lengths[:-2])
    assert segments[-1].end - segments[-1].start == pytest.approx(5.0, abs=0.05)  # not merged over 4 s
    assert segments[-1].start - segments[-2].end == pytest.approx(4.0, abs=0.05)


def test_fixed_segments() -> None:
    assert fixed_segments(0.0) == []
    assert fixed_segments(10.0) == [Span(0.0, 10.0)]
    assert fixed_segments(25.0) == [Span(0.0, 25.0)]
    cuts = fixed_segments(60.0, 25.0)
    assert cuts == [Span(0.0, 20.0), Span(20.0, 40.0), Span(40.0, 60.0)]
    odd = fixed_segments(100.01, 25.0)
    check_segments(odd, round(100.01 * SR))
    assert len(odd) == 5 and odd[-1].end == round(100.01 * SR) / SR


def test_rejects_other_rates_and_tiny_caps() -> None:
    with pytest.raises(ValueError, match="16000"):
        segment_speech(np.zeros(8000, dtype=np.int16), sample_rate=8000)
    with pytest.raises(ValueError, match="max_segment_s"):
        segment_speech(np.zeros(8000, dtype=np.int16), max_segment_s=0.5)
    with pytest.raises(ValueError, match="probabilities"):
        segment_speech(np.zeros(8000, dtype=np.int16), probs=np.zeros(3, dtype=np.float32))


def test_model_is_shared_and_thread_safe(speech: list[np.ndarray]) -> None:
    assert load_vad_model() is load_vad_model()
    audio = np.concatenate(speech * 2)
    expected = speech_probabilities(audio)
    results: list[np.ndarray] = []
    workers = [threading.Thread(target=lambda: results.append(speech_probabilities(audio))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 3
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_loading_keeps_the_process_thread_count() -> None:
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(2)\n"
        "from pipeline.vad import load_vad_model; load_vad_model()\n"
        "print(torch.get_num_threads())"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
