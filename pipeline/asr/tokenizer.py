"""Vocabularies (SPEC §10): 33 Russian characters, or a SentencePiece model for the e2e models."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

CHAR_VOCAB: tuple[str, ...] = (" ",) + tuple(chr(c) for c in range(0x430, 0x450))


class Tokenizer(Protocol):
    size: int

    def decode(self, ids: Sequence[int]) -> str: ...

    def piece(self, token_id: int) -> str: ...


class CharTokenizer:
    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.vocab = list(vocabulary)
        self.size = len(self.vocab)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def piece(self, token_id: int) -> str:
        return self.vocab[token_id]


class SentencePieceTokenizer:
    def __init__(self, model_path: str | Path) -> None:
        import sentencepiece

        self.path = Path(model_path)
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{self.path}: not a SentencePiece model ({exc})") from None
        self.size = self.sp.get_piece_size()
        self._pieces = [self.sp.id_to_piece(i) for i in range(self.size)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def piece(self, token_id: int) -> str:
        return self._pieces[token_id]
