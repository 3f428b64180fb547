"""The inference engine: a list of 16 kHz mono waveforms in, text, tokens and timed words out.

Batches are sorted by length and padded; decisions equal one-by-one runs (SPEC §11). Segments over
`max_samples` are refused before any compute so a bad caller gets an error, not an OOM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.asr.checkpoint import load_checkpoint
from pipeline.asr.decoding import Hypothesis, ctc_greedy, rnnt_greedy
from pipeline.asr.model import ASRModel, build_model
from pipeline.asr.timestamps import TimedWord, frame_shift, group_words
from pipeline.asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_SEGMENT_SECONDS = 30.0
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class SegmentTooLong(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class EngineResult:
    text: str
    token_ids: list[int]
    token_frames: list[int]
    token_times: list[float]  # seconds from the segment start
    words: list[TimedWord]


def resolve_device(device: str) -> torch.device:
    """Every unusable setting is a ValueError, which the CLI and the infer service report as a
    configuration mistake; torch's own RuntimeError for unparsable strings would crash them."""
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision in ("", "auto"):
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose from auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; use bf16 or int8 on CPU")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on CPU only")
    return precision


def configure_cpu_threads(threads: int = 0) -> int:
    """Intra-op threads = the setting, or the cores this process may run on (its affinity, not the
    host's count). Inter-op threads stay at torch's default: they can be set only once per process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads or cores))
    return torch.get_num_threads()


class Engine:
    def __init__(
        self,
        model: ASRModel,
        tokenizer: Tokenizer,
        *,
        device: str = "auto",
        precision: str = "auto",
        name: str = "",
        max_batch: int = 16,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.tokenizer = tokenizer
        self.name = name or model.name
        self.max_batch = max_batch
        self.max_samples = int(MAX_SEGMENT_SECONDS * SAMPLE_RATE)
        self.min_samples = model.preprocessor.n_fft if not model.preprocessor.center else 1
        self._lock = threading.Lock()  # one forward at a time per engine; batching happens outside
        self.model = self._prepare(model)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> "Engine":
        ckpt = load_checkpoint(path)
        model, tokenizer = build_model(ckpt)
        kwargs.setdefault("name", model.name or Path(path).stem)
        return cls(model, tokenizer, **kwargs)

    def _prepare(self, model: ASRModel) -> ASRModel:
        model = model.to(self.device).eval()
        if self.precision == "fp16":
            model.encoder.half()
        elif self.precision == "bf16":
            model.encoder.to(torch.bfloat16)
        elif self.precision == "int8":
            from torch.ao.quantization import quantize_dynamic

            model.encoder = quantize_dynamic(model.encoder, {torch.nn.Linear}, dtype=torch.qint8)
        return model

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- public API -------------------------------------------------------------------------

    def transcribe(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[EngineResult]:
        """Transcribe segments (float samples in [-1, 1), 16 kHz mono), batched by length."""
        tensors = [self._as_tensor(w, i) for i, w in enumerate(waveforms)]
        results: list[EngineResult | None] = [None] * len(tensors)
        runnable = []
        for i, w in enumerate(tensors):
            if w.numel() < self.min_samples:
                results[i] = EngineResult("", [], [], [], [])  # shorter than one analysis window
            else:
                runnable.append(i)
        runnable.sort(key=lambda i: tensors[i].numel(), reverse=True)
        for start in range(0, len(runnable), self.max_batch):
            chunk = runnable[start : start + self.max_batch]
            for i, res in zip(chunk, self._run_batch([tensors[i] for i in chunk])):
                results[i] = res
        return results  # type: ignore[return-value]

    def _as_tensor(self, w: np.ndarray | torch.Tensor, index: int) -> torch.Tensor:
        t = torch.from_numpy(np.array(w, copy=not w.flags.writeable)) if isinstance(w, np.ndarray) else w
        if t.dim() != 1:
            raise ValueError(f"segment {index}: expected a 1-D mono waveform, got shape {tuple(t.shape)}")
        if t.numel() > self.max_samples:
            raise SegmentTooLong(
                f"segment {index}: {t.numel() / SAMPLE_RATE:.2f} s exceeds the engine limit of "
                f"{MAX_SEGMENT_SECONDS:.0f} s; split long audio with VAD first"
            )
        if t.dtype == torch.int16:
            t = t.float() / 32768.0
        return t.float()

    @torch.inference_mode()
    def forward(self, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[Hypothesis]]:
        """Padded batch -> (encoded `[B, D, T']`, lengths', hypotheses)."""
        lengths = torch.tensor([w.numel() for w in batch], dtype=torch.long)
        wav = torch.zeros(len(batch), int(lengths.max()))
        for i, w in enumerate(batch):
            wav[i, : w.numel()] = w
        wav, lengths = wav.to(self.device, non_blocking=True), lengths.to(self.device)
        with self._lock:
            feats, feat_lens = self.model.preprocessor(wav, lengths)
            with self._autocast():
                encoded, enc_lens = self.model.encoder(feats, feat_lens)
            encoded = encoded.float()
            if self.model.kind == "ctc":
                hyps = ctc_greedy(self.model.head(encoded), enc_lens, self.model.blank_id)
            else:
                hyps = rnnt_greedy(self.model.head, encoded, enc_lens, self.model.max_symbols)
        return encoded, enc_lens, hyps

    def _run_batch(self, batch: list[torch.Tensor]) -> list[EngineResult]:
        _, enc_lens, hyps = self.forward(batch)
        out = []
        for w, n_frames, hyp in zip(batch, enc_lens.tolist(), hyps):
            shift = frame_shift(w.numel(), n_frames, SAMPLE_RATE)
            pieces = [self.tokenizer.piece(i) for i in hyp.token_ids]
            out.append(
                EngineResult(
                    text=self.tokenizer.decode(hyp.token_ids),
                    token_ids=hyp.token_ids,
                    token_frames=hyp.token_frames,
                    token_times=[f * shift for f in hyp.token_frames],
                    words=group_words(pieces, hyp.token_frames, shift),
                )
            )
        return out
