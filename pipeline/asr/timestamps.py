"""Word timestamps from token pieces and frames (SPEC §13)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

WORD_START = "\u2581"  # SentencePiece's "▁"


@dataclass(frozen=True, slots=True)
class TimedWord:
    word: str
    start: float
    end: float


def frame_shift(n_samples: int, encoded_len: int, sample_rate: int = 16000) -> float:
    """Seconds per encoder frame for this item: not exactly 0.04 (Quirk Q5)."""
    return n_samples / sample_rate / encoded_len if encoded_len > 0 else 0.0


def group_words(pieces: Sequence[str], frames: Sequence[int], shift: float) -> list[TimedWord]:
    words: list[TimedWord] = []
    current: list[tuple[str, int]] = []

    def close() -> None:
        if current:
            text = "".join(s for s, _ in current).strip()
            if text:
                words.append(TimedWord(text, current[0][1] * shift, (current[-1][1] + 1) * shift))
            current.clear()

    for piece, frame in zip(pieces, frames):
        if piece.startswith(WORD_START):
            close()
            current.append((piece[1:], frame))
        elif piece == " ":
            close()
        else:
            current.append((piece, frame))
    close()
    return words
