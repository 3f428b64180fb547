"""pipeline.decode on real media files, generated here with PyAV's own encoders."""

from __future__ import annotations

import glob
import io
import os
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode import (
    SUPPORTED_EXTENSIONS,
    DecodedAudio,
    MediaError,
    _MonoResampler,
    _SampleBuffer,
    decode_media,
    probe_media,
    read_pcm,
    write_pcm,
)
from tests.kit import AUDIO

GOLDEN_AUDIO = str(AUDIO)
TONE_HZ = 440.0
TONE_S = 2.0


def tone(rate: int, seconds: float = TONE_S, amplitude: int = 10000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * TONE_HZ * t) * amplitude).astype(np.int16)


def encode(
    path: str | Path | io.BytesIO,
    audio: np.ndarray | None,
    rate: int,
    codec: str,
    *,
    layout: str = "mono",
    video: str | None = None,
    container_format: str | None = None,
    bit_rate: int | None = None,
) -> None:
    """Writes `audio` ([channels, n] or [n] int16) and/or a small black video stream."""
    with av.open(path, "w", format=container_format) as out:
        vstream = None
        if video:
            vstream = out.add_stream(video, rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        if audio is not None:
            astream = out.add_stream(codec, rate=rate, layout=layout)
            if bit_rate:
                astream.bit_rate = bit_rate
            interleaved = audio.reshape(1, -1) if audio.ndim == 1 else audio.T.reshape(1, -1)
            channels = 1 if audio.ndim == 1 else audio.shape[0]
            step = (astream.codec_context.frame_size or 1024) * channels
            for i in range(0, interleaved.shape[1], step):
                chunk = np.ascontiguousarray(interleaved[:, i : i + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=layout)
                frame.sample_rate = rate
                frame.pts = i // channels
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
        if vstream is not None:
            black = np.zeros((48, 64, 3), dtype=np.uint8)
            for i in range(int(TONE_S * 25)):
                vframe = av.VideoFrame.from_ndarray(black, format="rgb24")
                vframe.pts = i
                out.mux(vstream.encode(vframe))
            out.mux(vstream.encode(None))


def dominant_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / samples.shape[0])


def wav_samples(path: str) -> np.ndarray:
    with wave.open(path) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


# name, codec, rate, video codec, extra encode kwargs
FORMATS = [
    ("tone.mp3", "libmp3lame", 44100, None, {}),
    ("tone.flac", "flac", 22050, None, {}),
    ("tone.ogg", "libopus", 48000, None, {}),
    ("tone.m4a", "aac", 44100, None, {}),
    ("tone.mkv", "flac", 48000, None, {}),
    ("tone.webm", "libopus", 48000, None, {}),
    ("tone.wma", "wmav2", 44100, None, {"bit_rate": 64000}),
    ("tone.wav", "pcm_s16le", 8000, None, {}),
    ("video.mp4", "aac", 48000, "libx264", {}),
    ("video.avi", "libmp3lame", 44100, "mpeg4", {}),
    ("video.mov", "aac", 44100, "mpeg4", {}),
]


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    for name, codec, rate, video, extra in FORMATS:
        encode(root / name, tone(rate), rate, codec, video=video, **extra)
    return root


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GOLDEN_AUDIO, "*.wav"))), ids=os.path.basename)
def test_golden_wavs_decode_to_their_exact_samples(path: str) -> None:
    expected = wav_samples(path)
    decoded = decode_media(path)
    assert decoded.samples.dtype == np.int16
    assert decoded.sample_rate == 16000
    np.testing.assert_array_equal(decoded.samples, expected)
    assert decoded.duration == expected.shape[0] / 16000
    assert decoded.num_samples == expected.shape[0]


def test_golden_wavs_exist() -> None:
    assert len(glob.glob(os.path.join(GOLDEN_AUDIO, "*.wav"))) == 6


@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_each_format_decodes_to_16k_mono(media_dir: Path, name: str) -> None:
    path = media_dir / name
    decoded = decode_media(path)
    assert decoded.samples.dtype == np.int16 and decoded.samples.ndim == 1
    # Encoders add priming/padding of a few tens of ms at most.
    assert decoded.duration == pytest.approx(TONE_S, abs=0.08)
    assert dominant_hz(decoded.samples) == pytest.approx(TONE_HZ, abs=2)
    assert np.abs(decoded.samples).max() > 5000

    info = probe_media(path)
    assert info.duration == pytest.approx(TONE_S, abs=0.1)
    assert info.sample_rate > 0 and info.channels == 1
    assert info.codec and info.format_name


def test_supported_extensions_cover_the_tested_formats() -> None:
    assert {Path(f[0]).suffix for f in FORMATS} <= SUPPORTED_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in SUPPORTED_EXTENSIONS)


def test_file_object_source_matches_path(media_dir: Path) -> None:
    path = media_dir / "tone.mp3"
    from_path = decode_media(path)
    from_file = decode_media(io.BytesIO(path.read_bytes()))
    np.testing.assert_array_equal(from_path.samples, from_file.samples)
    assert decode_media(str(path)).num_samples == from_path.num_samples


def test_stereo_44k_becomes_mono_16k_by_averaging() -> None:
    left = tone(44100, seconds=3.0)
    same, opposite = io.BytesIO(), io.BytesIO()
    encode(same, np.stack([left, left]), 44100, "pcm_s16le", layout="stereo", container_format="wav")
    encode(opposite, np.stack([left, -left]), 44100, "pcm_s16le", layout="stereo", container_format="wav")
    same.seek(0)
    opposite.seek(0)

    decoded = decode_media(same)
    assert decoded.num_samples == 48000
    assert decoded.duration == 3.0
    assert dominant_hz(decoded.samples) == pytest.approx(TONE_HZ, abs=1)
    assert np.abs(decoded.samples).max() == pytest.approx(10000, abs=50)
    # A real downmix, not the left channel: opposite channels cancel.
    assert np.abs(decode_media(opposite).samples).max() <= 1


def test_video_without_audio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    encode(path, None, 0, "", video="libx264")
    with pytest.raises(MediaError, match="no audio stream"):
        probe_media(path)
    with pytest.raises(MediaError, match="no audio stream"):
        decode_media(path)


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio\n" * 200)
    with pytest.raises(MediaError):
        probe_media(path)
    with pytest.raises(MediaError):
        decode_media(path)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_are_refused(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(seed).bytes(64_000))
    with pytest.raises(MediaError) as err:
        decode_media(path)
    assert err.value.reason == str(err.value)
    with pytest.raises(MediaError):
        probe_media(path)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(MediaError):
        decode_media(path)
    with pytest.raises(MediaError):
        decode_media(io.BytesIO(b""))
    with pytest.raises(MediaError):
        probe_media(path)


def test_zero_length_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    assert probe_media(path).codec == "pcm_s16le"
    with pytest.raises(MediaError, match="empty"):
        decode_media(path)


def test_a_header_over_endless_empty_chunks_is_cut_off_quickly(tmp_path: Path) -> None:
    """A RIFF header over 2 GB of zeros keeps ffmpeg's WAV demuxer walking empty chunks for minutes."""
    path = tmp_path / "crafted.wav"
    size = 2 << 30
    with open(path, "wb") as fh:
        fh.write(b"RIFF" + (size - 8).to_bytes(4, "little") + b"WAVE")
        fh.truncate(size)  # sparse: no disk used
    started = time.monotonic()
    with pytest.raises(MediaError, match="could not be read within 0.5 s"):
        probe_media(path, open_timeout=0.5)
    assert time.monotonic() - started < 5.0


def test_truncated_mp3_decodes_what_is_there(media_dir: Path) -> None:
    data = (media_dir / "tone.mp3").read_bytes()
    half = decode_media(io.BytesIO(data[: len(data) // 2]))
    assert 0.3 * TONE_S < half.duration < 0.7 * TONE_S
    assert dominant_hz(half.samples) == pytest.approx(TONE_HZ, abs=3)
    with pytest.raises(MediaError):
        decode_media(io.BytesIO(data[:40]))


def test_corrupt_middle_is_skipped_like_ffmpeg(media_dir: Path) -> None:
    data = bytearray((media_dir / "tone.mp3").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(0).bytes(2000)
    decoded = decode_media(io.BytesIO(bytes(data)))
    assert 0.7 * TONE_S < decoded.duration <= TONE_S


def test_audio_that_never_decodes_is_refused(media_dir: Path) -> None:
    data = bytearray((media_dir / "tone.m4a").read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov")
    assert 4 < start < end  # samples first, index last: the index survives, the samples do not
    data[start:end] = bytes(end - start)
    with pytest.raises(MediaError, match="could not be decoded"):
        decode_media(io.BytesIO(bytes(data)))


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_media(tmp_path / "absent.mp3")


def test_to_float_scales_by_32768() -> None:
    audio = DecodedAudio(np.array([-32768, 0, 16384, 32767], dtype=np.int16))
    out = audio.to_float()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([-1.0, 0.0, 0.5, 32767 / 32768], dtype=np.float32))
    assert audio.duration == 4 / 16000


def test_pcm_round_trip(tmp_path: Path) -> None:
    samples = np.random.default_rng(0).integers(-32768, 32768, 50_001).astype(np.int16)
    path = tmp_path / "audio.pcm"
    write_pcm(path, samples)
    assert path.stat().st_size == samples.shape[0] * 2
    assert path.read_bytes()[:2] == samples[:1].astype("<i2").tobytes()
    assert not list(tmp_path.glob("*.part"))
    np.testing.assert_array_equal(read_pcm(path), samples)
    mapped = read_pcm(path, mmap=True)
    np.testing.assert_array_equal(mapped[1000:2000], samples[1000:2000])

    empty = tmp_path / "empty.pcm"
    write_pcm(empty, np.zeros(0, dtype=np.int16))
    assert read_pcm(empty).shape == (0,) and read_pcm(empty, mmap=True).shape == (0,)


def test_pcm_rejects_wrong_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int16"):
        write_pcm(tmp_path / "x.pcm", np.zeros(10, dtype=np.float32))
    odd = tmp_path / "odd.pcm"
    odd.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="whole number"):
        read_pcm(odd)


def test_sample_buffer_grows_past_its_estimate() -> None:
    rng = np.random.default_rng(1)
    chunks = [rng.integers(-100, 100, int(n)).astype(np.int16) for n in rng.integers(1, 40_000, 60)]
    buffer = _SampleBuffer(expected=10)
    buffer.extend(iter(chunks))
    np.testing.assert_array_equal(buffer.finish(), np.concatenate(chunks))


def test_resampler_survives_a_mid_stream_rate_change() -> None:
    resampler = _MonoResampler()
    out: list[np.ndarray] = []
    for rate, layout in ((44100, "mono"), (48000, "stereo"), (22050, "mono")):
        channels = 2 if layout == "stereo" else 1
        frame = av.AudioFrame.from_ndarray(np.full((1, rate * channels), 1000, np.int16), format="s16", layout=layout)
        frame.sample_rate = rate
        out += resampler.resample(frame)
    out += resampler.flush()
    assert sum(chunk.shape[0] for chunk in out) == 48000
