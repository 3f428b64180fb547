"""Media -> 16 kHz mono int16 audio, with PyAV.

Resampling goes through the same libswresample conversion to s16 that the reference gets from
`ffmpeg -ac 1 -ar 16000 -f s16le`, so `to_float()` (s / 32768) equals the reference's input.

Bad input raises `MediaError` with a human-readable reason. An `OSError` (missing or unreadable
path) propagates unchanged: that is a storage problem of the caller, not bad media.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import av
import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".mp3", ".wav", ".m4a", ".mp4", ".avi", ".mov", ".mkv", ".webm", ".flac", ".ogg", ".wma"}
)

Source = str | os.PathLike | BinaryIO

# Caps the up-front allocation when a (possibly corrupt) header claims an absurd duration.
_MAX_PREALLOC_SAMPLES = 4 * 3600 * SAMPLE_RATE
# Reading the headers of real media takes milliseconds; a crafted file (a RIFF header over gigabytes
# of empty chunks) keeps the demuxer scanning for minutes, so opening is cut off.
OPEN_TIMEOUT = 10.0


class MediaError(Exception):
    """The input cannot be turned into audio; `reason` is fit to show to the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """Decoded audio kept as int16: a float32 hour would take twice the memory."""

    samples: np.ndarray  # int16, mono
    sample_rate: int = SAMPLE_RATE

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def to_float(self) -> np.ndarray:
        out = self.samples.astype(np.float32)
        out *= np.float32(1 / 32768)  # a power of two: exact, same as dividing
        return out


@dataclass(frozen=True, slots=True)
class ProbeInfo:
    format_name: str
    codec: str
    duration: float | None  # seconds, when the container or stream says
    sample_rate: int
    channels: int


def probe_media(source: Source, *, open_timeout: float = OPEN_TIMEOUT) -> ProbeInfo:
    """Opens only the headers, so uploads that are not audio can be refused before any decoding."""
    with _open(source, open_timeout) as container:
        stream = _audio_stream(container)
        return ProbeInfo(
            format_name=container.format.name,
            codec=stream.codec_context.name,
            duration=_declared_duration(container, stream),
            sample_rate=int(stream.codec_context.sample_rate or 0),
            channels=int(stream.codec_context.channels or 0),
        )


def decode_media(source: Source) -> DecodedAudio:
    """Decodes the first audio stream. Like ffmpeg, corrupt packets are skipped and a truncated
    file yields what was decodable; only when nothing decodes is it an error."""
    with _open(source) as container:
        stream = _audio_stream(container)
        declared = _declared_duration(container, stream)
        buffer = _SampleBuffer(int(declared * SAMPLE_RATE * 1.01) + SAMPLE_RATE if declared else 0)
        resampler = _MonoResampler()
        skipped = 0
        failure: av.FFmpegError | None = None
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    skipped += 1
                    failure = exc
                    log.debug("skipping undecodable packet at pts %s: %s", packet.pts, exc)
                    continue
                for frame in frames:
                    buffer.extend(resampler.resample(frame))
        except av.FFmpegError as exc:
            failure = exc
            log.warning("stopped reading media after %.1f s of audio: %s", buffer.size / SAMPLE_RATE, exc)
        try:
            buffer.extend(resampler.flush())
        except av.FFmpegError as exc:
            log.warning("resampler flush failed: %s", exc)
        if skipped:
            log.warning("skipped %d undecodable audio packet(s)", skipped)
        if buffer.size == 0:
            if failure is not None:
                codec = stream.codec_context.name
                raise MediaError(f"the {codec} audio stream could not be decoded ({_ffmpeg_reason(failure)})")
            raise MediaError("the audio stream is empty (zero duration)")
        return DecodedAudio(buffer.finish())


def write_pcm(path: str | os.PathLike, samples: np.ndarray) -> None:
    """Raw little-endian int16, written to a side file and renamed so readers never see half of it."""
    if samples.dtype != np.int16:
        raise ValueError(f"PCM samples must be int16, not {samples.dtype}")
    tmp = f"{os.fspath(path)}.part"
    np.ascontiguousarray(samples, dtype="<i2").tofile(tmp)
    os.replace(tmp, path)


def read_pcm(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """`mmap=True` maps the file read-only, so slicing segments of a long file reads only those pages."""
    size = os.path.getsize(path)
    if size % 2:
        raise ValueError(f"{os.fspath(path)}: {size} bytes is not a whole number of int16 samples")
    if mmap:
        if size == 0:
            return np.zeros(0, dtype="<i2")
        return np.memmap(path, dtype="<i2", mode="r")
    return np.fromfile(path, dtype="<i2")


def _open(source: Source, timeout: float = OPEN_TIMEOUT) -> av.container.InputContainer:
    target = os.fspath(source) if isinstance(source, (str, os.PathLike)) else source
    started = time.monotonic()
    try:
        return av.open(target, mode="r", timeout=(timeout, None))
    except OSError:
        raise
    except av.FFmpegError as exc:
        if time.monotonic() - started >= timeout:
            reason = f"the media headers could not be read within {timeout:g} s (damaged or crafted file)"
            raise MediaError(reason) from None
        raise MediaError(f"not a media file or an unsupported format ({_ffmpeg_reason(exc)})") from None


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise MediaError("no audio stream in file")
    return container.streams.audio[0]


def _declared_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    return exc.strerror or type(exc).__name__


class _MonoResampler:
    """Wraps av.AudioResampler, which refuses frames whose input format changes mid-stream
    (some streams switch rate or layout): such a change flushes and starts a new resampler."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None

    def resample(self, frame: av.AudioFrame) -> Iterator[np.ndarray]:
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self._input:
            yield from self.flush()
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._input = shape
        for out in self._resampler.resample(frame):
            yield out.to_ndarray().reshape(-1)

    def flush(self) -> Iterator[np.ndarray]:
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
            self._resampler = None
            self._input = None


class _SampleBuffer:
    """Growing int16 buffer: amortised linear appends instead of a quadratic concatenate."""

    def __init__(self, expected: int) -> None:
        self._data = np.empty(min(max(expected, SAMPLE_RATE), _MAX_PREALLOC_SAMPLES), dtype=np.int16)
        self.size = 0

    def extend(self, chunks: Iterator[np.ndarray]) -> None:
        for chunk in chunks:
            end = self.size + chunk.shape[0]
            if end > self._data.shape[0]:
                grown = np.empty(max(end, self._data.shape[0] * 3 // 2), dtype=np.int16)
                grown[: self.size] = self._data[: self.size]
                self._data = grown
            self._data[self.size : end] = chunk
            self.size = end

    def finish(self) -> np.ndarray:
        """A view when the estimate was close; a trimmed copy when much of the buffer is unused."""
        if self._data.shape[0] - self.size > self.size // 8:
            return self._data[: self.size].copy()
        return self._data[: self.size]
