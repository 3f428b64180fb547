"""Decode + VAD speed on a 1-hour file, against silero's own one-frame-per-call loop.

    python -m bench.decode_vad [--minutes 60] [--format mp3] [--rate 44100] [--baseline-s 120] [--threads 1]

The file is the golden speech recordings with random pauses, encoded with PyAV into a temporary
folder (encoding is not timed). Output is plain text lines.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

import av
import numpy as np
import torch

from pipeline.decode import SAMPLE_RATE, decode_media
from pipeline.vad import load_vad_model, segment_speech, speech_probabilities, speech_regions
from tests.kit import AUDIO

GOLDEN = str(AUDIO)


def build_audio(seconds: float, seed: int = 0) -> np.ndarray:
    speech = [decode_media(p).samples for p in sorted(glob.glob(os.path.join(GOLDEN, "0[1-4]_speech_*.wav")))]
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    total = 0
    target = int(seconds * SAMPLE_RATE)
    while total < target:
        clip = speech[rng.integers(len(speech))]
        pause = np.zeros(int(rng.uniform(0.2, 5.0) * SAMPLE_RATE), dtype=np.int16)
        parts += [clip, pause]
        total += clip.shape[0] + pause.shape[0]
    return np.concatenate(parts)[:target]


def encode(path: str, samples: np.ndarray, codec: str, rate: int) -> None:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        for i in range(0, samples.shape[0], SAMPLE_RATE * 10):
            frame = av.AudioFrame.from_ndarray(samples[None, i : i + SAMPLE_RATE * 10], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for resampled in resampler.resample(frame):
                container.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))


def silero_wrapper() -> torch.jit.ScriptModule:
    """silero's stateful wrapper, as its own users load it (keeping our torch thread count)."""
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad  # importing it sets torch to 1 thread process-wide

    wrapper = load_silero_vad()
    torch.set_num_threads(threads)
    return wrapper


def naive_probabilities(samples: np.ndarray) -> np.ndarray:
    """One 512-sample call at a time, as get_speech_timestamps runs it, to check the batched output."""
    wrapper = silero_wrapper()
    audio = torch.from_numpy(samples.astype(np.float32) / 32768)
    audio = torch.nn.functional.pad(audio, (0, -audio.shape[0] % 512))
    with torch.inference_mode():
        return np.array([wrapper(audio[i : i + 512], SAMPLE_RATE).item() for i in range(0, audio.shape[0], 512)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--format", choices=("mp3", "wav"), default="mp3")
    parser.add_argument("--rate", type=int, default=44100, help="sample rate of the encoded file")
    parser.add_argument("--baseline-s", type=float, default=120.0, help="length of the naive-silero slice")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (0: torch's default); 1 holds up best on a busy machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    codec = {"mp3": "libmp3lame", "wav": "pcm_s16le"}[args.format]

    audio = build_audio(args.minutes * 60)
    load_vad_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"bench.{args.format}")
        t0 = time.perf_counter()
        encode(path, audio, codec, args.rate)
        setup = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 1e6
        t0 = time.perf_counter()
        decoded = decode_media(path)
        t_decode = time.perf_counter() - t0

    dur = decoded.duration
    t0 = time.perf_counter()
    probs = speech_probabilities(decoded.samples)
    t_probs = time.perf_counter() - t0
    t0 = time.perf_counter()
    segments = segment_speech(decoded.samples, probs=probs)
    t_segments = time.perf_counter() - t0
    t_vad = t_probs + t_segments
    speech_s = sum(s.end - s.start for s in segments)

    longest = max((s.end - s.start for s in segments), default=0.0)
    print(f"torch threads: {torch.get_num_threads()}, cpu cores: {os.cpu_count()}")
    print(f"file: {args.format} {args.rate} Hz mono, {dur:.1f} s, {size_mb:.1f} MB (encoded in {setup:.1f} s)")
    print(f"decode: {t_decode:.2f} s wall, {dur / t_decode:.0f}x real time")
    print(f"vad probabilities: {t_probs:.2f} s wall, {dur / t_probs:.0f}x real time")
    print(f"vad segmentation: {t_segments:.3f} s wall")
    print(f"vad total: {t_vad:.2f} s wall, {dur / t_vad:.0f}x real time")
    total = t_decode + t_vad
    print(f"decode + vad: {total:.2f} s wall for {dur / 3600:.2f} h of audio, {dur / total:.0f}x real time")
    print(f"segments: {len(segments)}, longest {longest:.2f} s, {speech_s:.0f} s of {dur:.0f} s kept")

    piece = decoded.samples[: int(args.baseline_s * SAMPLE_RATE)]
    piece_s = piece.shape[0] / SAMPLE_RATE
    wrapper = silero_wrapper()
    from silero_vad import get_speech_timestamps  # after silero_wrapper(), which restores the thread count

    t0 = time.perf_counter()
    get_speech_timestamps(torch.from_numpy(piece.astype(np.float32) / 32768), wrapper)
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    piece_probs = speech_probabilities(piece)
    segment_speech(piece, probs=piece_probs)
    t_piece = time.perf_counter() - t0
    reference = naive_probabilities(piece)
    diff = np.abs(reference - piece_probs)
    agree = np.mean((reference >= 0.5) == (piece_probs >= 0.5))
    same_regions = speech_regions(reference, piece.shape[0]) == speech_regions(piece_probs, piece.shape[0])

    naive_speed = piece_s / t_naive
    print(f"baseline get_speech_timestamps on {piece_s:.0f} s: {t_naive:.2f} s wall, {naive_speed:.0f}x real time")
    print(f"batched on the same {piece_s:.0f} s: {t_piece:.2f} s wall, {piece_s / t_piece:.0f}x real time")
    print(f"speedup on the same slice: {t_naive / t_piece:.1f}x")
    print(f"baseline extrapolated to {dur:.0f} s: {dur / naive_speed:.1f} s wall")
    print(f"speedup of batched vad on the full file over the baseline: {dur / t_vad / naive_speed:.1f}x")
    print(f"batched vs one-pass probabilities on the slice: max |diff| {diff.max():.4f}, mean {diff.mean():.6f}")
    print(f"same speech decision on {agree * 100:.2f} % of frames, identical speech regions: {same_regions}")

if __name__ == "__main__":
    main()
