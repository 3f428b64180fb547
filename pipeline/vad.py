"""Speech segments of at most `max_segment_s` for the ASR engine, from silero VAD.

Silero scores 512-sample frames (32 ms) one at a time with an LSTM state. Calling it frame by frame
over an hour is ~112k Python-level calls, so the audio is cut into up to `_MAX_ROWS` windows that
run side by side as the rows of one batched call per frame. Each window (except the first) starts
`_WARMUP_FRAMES` early and drops those outputs: the LSTM forgets its start state slowly, and
~6 s of real audio brings the probabilities within ~0.03 of a single pass over the whole file.

Threads are the caller's choice (torch's setting is process-wide). On a busy machine, e.g. next to
the infer service, one torch thread runs this several times faster than two fighting for cores.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings

import numpy as np
import torch

from schemas.messages import Span

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME = 512  # samples per silero frame at 16 kHz
FRAME_S = FRAME / SAMPLE_RATE

_CONTEXT = 64  # samples of the previous frame silero prepends to each frame
_STATE_SIZE = 128
_WARMUP_FRAMES = 192
_MIN_WINDOW_FRAMES = 750  # 24 s: keeps warm-up overhead at most ~25 %
_MAX_ROWS = 128  # past this, a bigger batch no longer lowers the cost per frame on CPU
_BLOCK_STEPS = 64  # frames per row gathered at once, so an hour never exists as float32

_model: torch.jit.ScriptModule | None = None
_model_lock = threading.Lock()


def load_vad_model() -> torch.jit.ScriptModule:
    """The silero network, loaded once per process.

    Returns the wrapper's inner network, `(frames [B, 576], state [2, B, 128]) -> (prob [B, 1],
    state)`: it keeps no state of its own, so threads can share it, unlike the wrapper, which
    stores context and state between calls.
    """
    global _model
    with _model_lock:
        if _model is None:
            threads = torch.get_num_threads()
            with warnings.catch_warnings():
                # Its loader trips deprecation warnings in importlib.resources and torch.jit.load.
                warnings.simplefilter("ignore", DeprecationWarning)
                from silero_vad import load_silero_vad  # importing it sets torch to 1 thread process-wide

                wrapper = load_silero_vad()
            torch.set_num_threads(threads)
            inner = wrapper._model
            if inner.context_size_samples != _CONTEXT:
                raise RuntimeError(f"unexpected silero context size {inner.context_size_samples}")
            _model = inner
            log.info("silero VAD loaded")
    return _model


def speech_probabilities(samples: np.ndarray) -> np.ndarray:
    """Speech probability of each 32 ms frame (frame i covers samples [512 i, 512 i + 512)).

    `samples`: 16 kHz mono, int16 or float in [-1, 1]. The last partial frame is zero-padded, as
    silero's own `get_speech_timestamps` does.
    """
    num_frames = -(-samples.shape[0] // FRAME)
    if num_frames == 0:
        return np.zeros(0, dtype=np.float32)
    model = load_vad_model()
    rows = max(1, min(_MAX_ROWS, num_frames // _MIN_WINDOW_FRAMES))
    hop = -(-num_frames // rows)
    warmup = _WARMUP_FRAMES if rows > 1 else 0
    steps = warmup + hop
    # Sample where each row's first step (warm-up included) takes its 64 context samples from.
    row_origin = (np.arange(rows, dtype=np.int64) * hop - warmup) * FRAME - _CONTEXT
    probs = np.empty((rows, hop), dtype=np.float32)
    state = torch.zeros(2, rows, _STATE_SIZE)
    with torch.inference_mode():
        for block in range(0, steps, _BLOCK_STEPS):
            block_steps = min(_BLOCK_STEPS, steps - block)
            audio = _gather(samples, row_origin + block * FRAME, block_steps * FRAME + _CONTEXT)
            frames = audio.unfold(1, FRAME + _CONTEXT, FRAME)
            for j in range(block_steps):
                step = block + j
                if warmup and step == warmup:
                    # Row 0 has no audio before the file: start it clean, as a single pass would.
                    state[:, 0].zero_()
                out, state = model(frames[:, j], state)
                if step >= warmup:
                    probs[:, step - warmup] = out[:, 0].numpy()
    return probs.reshape(-1)[:num_frames]


def speech_regions(
    probs: np.ndarray,
    num_samples: int,
    *,
    threshold: float = 0.5,
    neg_threshold: float = 0.35,
    min_speech_s: float = 0.25,
    min_silence_s: float = 0.1,
    pad_s: float = 0.1,
) -> list[tuple[int, int]]:
    """Speech as sorted, disjoint [start, end) sample ranges within [0, num_samples).

    Hysteresis: speech starts at a frame >= `threshold` and lasts while frames stay >=
    `neg_threshold`; pauses shorter than `min_silence_s` are bridged, then regions shorter than
    `min_speech_s` are dropped and the rest padded by `pad_s` on each side.
    """
    if probs.shape[0] == 0:
        return []
    index = np.arange(probs.shape[0])
    active = np.concatenate(([False], probs >= neg_threshold, [False]))
    edges = np.diff(active.astype(np.int8))
    run_start = np.flatnonzero(edges == 1)
    run_end = np.flatnonzero(edges == -1)
    # First frame at or after i that reaches `threshold` (len(probs) when none does).
    strong_at = np.where(probs >= threshold, index, probs.shape[0])
    next_strong = np.minimum.accumulate(strong_at[::-1])[::-1]
    onset = next_strong[run_start]
    keep = onset < run_end
    starts, ends = onset[keep], run_end[keep]
    if starts.shape[0] == 0:
        return []

    min_silence = math.ceil(min_silence_s / FRAME_S)
    new_region = np.concatenate(([True], starts[1:] - ends[:-1] >= min_silence))
    starts = starts[new_region]
    ends = ends[np.concatenate((new_region[1:], [True]))]
    long_enough = (ends - starts) * FRAME_S >= min_speech_s
    starts, ends = starts[long_enough], ends[long_enough]

    pad = round(pad_s * SAMPLE_RATE)
    regions: list[tuple[int, int]] = []
    for s, e in zip(starts * FRAME - pad, ends * FRAME + pad):
        s, e = max(0, int(s)), min(num_samples, int(e))
        if regions and s <= regions[-1][1]:
            regions[-1] = (regions[-1][0], e)
        elif s < e:
            regions.append((s, e))
    return regions


def segment_speech(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    max_segment_s: float = 25.0,
    *,
    target_segment_s: float = 15.0,
    max_gap_s: float = 2.0,
    probs: np.ndarray | None = None,
    threshold: float = 0.5,
    neg_threshold: float = 0.35,
    min_speech_s: float = 0.25,
    min_silence_s: float = 0.1,
    pad_s: float = 0.1,
) -> list[Span]:
    """Engine segments: sorted, disjoint, each at most `max_segment_s`, [] when nothing is speech.

    Neighbouring regions are packed into one segment, pauses included, like the reference
    long-form merger (fewer, longer segments batch better and give the model context): a segment
    grows until it reaches `target_segment_s`, the next region would push it past
    `max_segment_s`, or the pause before it exceeds `max_gap_s` (long silences are not worth
    transcribing). Speech longer than `max_segment_s` is cut at its quietest frame.

    `probs` reuses frame probabilities from `speech_probabilities` instead of running the model.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"VAD needs {SAMPLE_RATE} Hz audio, not {sample_rate}")
    if max_segment_s < 1.0:
        raise ValueError("max_segment_s must be at least 1 second")
    if probs is None:
        probs = speech_probabilities(samples)
    elif probs.shape[0] != -(-samples.shape[0] // FRAME):
        raise ValueError(f"{probs.shape[0]} probabilities do not match {samples.shape[0]} samples")
    regions = speech_regions(
        probs,
        samples.shape[0],
        threshold=threshold,
        neg_threshold=neg_threshold,
        min_speech_s=min_speech_s,
        min_silence_s=min_silence_s,
        pad_s=pad_s,
    )
    max_len = int(max_segment_s * SAMPLE_RATE)
    pieces = [piece for region in regions for piece in _split_long(region, max_len, probs, samples)]
    packed = _pack(pieces, max_len, int(target_segment_s * SAMPLE_RATE), int(max_gap_s * SAMPLE_RATE))
    log.debug(
        "%d speech regions -> %d segments, %.1f of %.1f s kept",
        len(regions),
        len(packed),
        sum(end - start for start, end in packed) / SAMPLE_RATE,
        samples.shape[0] / SAMPLE_RATE,
    )
    return [Span(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in packed]


def fixed_segments(duration: float, max_segment_s: float = 25.0) -> list[Span]:
    """Without VAD: the whole file when it fits one segment, else equal cuts on sample boundaries."""
    num_samples = round(duration * SAMPLE_RATE)
    if num_samples <= 0:
        return []
    parts = math.ceil(num_samples / (max_segment_s * SAMPLE_RATE))
    bounds = [i * num_samples // parts for i in range(parts + 1)]
    return [Span(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in zip(bounds, bounds[1:])]


def _gather(samples: np.ndarray, origins: np.ndarray, length: int) -> torch.Tensor:
    """Rows samples[o : o + length] as float32, zero outside the audio."""
    out = np.zeros((origins.shape[0], length), dtype=np.float32)
    n = samples.shape[0]
    for row, origin in enumerate(origins.tolist()):
        lo, hi = max(origin, 0), min(origin + length, n)
        if lo < hi:
            out[row, lo - origin : hi - origin] = samples[lo:hi]
    if samples.dtype == np.int16:
        out *= np.float32(1 / 32768)
    return torch.from_numpy(out)


def _split_long(region: tuple[int, int], max_len: int, probs: np.ndarray, samples: np.ndarray) -> list[tuple[int, int]]:
    """Cuts a region into pieces of at most `max_len`, each cut at the quietest frame of a window
    that keeps the piece at least half of `max_len` and leaves a remainder that still fits."""
    start, end = region
    pieces = []
    while end - start > max_len:
        remaining_pieces = math.ceil((end - start) / max_len) - 1
        lo = max(end - remaining_pieces * max_len, start + max_len // 2)
        cut = _quietest_point(lo, start + max_len, probs, samples)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def _quietest_point(lo: int, hi: int, probs: np.ndarray, samples: np.ndarray) -> int:
    """Centre of the frame in [lo, hi] with the lowest speech probability (to 0.01, so that near
    ties go by loudness), then the lowest RMS."""
    half = FRAME // 2
    first = -(-(lo - half) // FRAME)
    last = (hi - half) // FRAME
    frames = np.arange(first, last + 1)
    chunk = samples[first * FRAME : (last + 1) * FRAME].astype(np.float32)
    chunk = np.pad(chunk, (0, frames.shape[0] * FRAME - chunk.shape[0]))
    rms = np.sqrt(np.mean(np.square(chunk.reshape(-1, FRAME)), axis=1))
    best = np.lexsort((rms, np.round(probs[first : last + 1], 2)))[0]
    return int(frames[best]) * FRAME + half


def _pack(pieces: list[tuple[int, int]], max_len: int, target_len: int, max_gap: int) -> list[tuple[int, int]]:
    segments: list[tuple[int, int]] = []
    for start, end in pieces:
        if segments:
            seg_start, seg_end = segments[-1]
            if end - seg_start <= max_len and seg_end - seg_start < target_len and start - seg_end <= max_gap:
                segments[-1] = (seg_start, end)
                continue
        segments.append((start, end))
    return segments
