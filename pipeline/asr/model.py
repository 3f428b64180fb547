"""A GigaAM ASR model assembled from a checkpoint's config, with strict weight loading.

`_target_` names are matched against a fixed table (never imported), so a config can only select
the components this package implements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.asr.checkpoint import Checkpoint, CheckpointError
from pipeline.asr.encoder import ConformerEncoder
from pipeline.asr.features import FeatureExtractor
from pipeline.asr.heads import CTCHead, RNNTHead
from pipeline.asr.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer

_PREPROCESSORS = {"FeatureExtractor"}
_ENCODERS = {"ConformerEncoder"}
_HEADS = {"CTCHead": "ctc", "RNNTHead": "rnnt"}
_DECODINGS = {"CTCGreedyDecoding": "ctc", "RNNTGreedyDecoding": "rnnt"}


def _target(section: dict[str, Any], allowed: set[str] | dict[str, str], what: str) -> str:
    name = str(section.get("_target_", "")).rsplit(".", 1)[-1]
    if name not in allowed:
        raise CheckpointError(f"unsupported {what} {section.get('_target_')!r}")
    return name


def _kwargs(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "_target_"}


class ASRModel(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        _target(cfg["preprocessor"], _PREPROCESSORS, "preprocessor")
        _target(cfg["encoder"], _ENCODERS, "encoder")
        head_kind = _HEADS[_target(cfg["head"], _HEADS, "head")]
        decoding_kind = _DECODINGS[_target(cfg["decoding"], _DECODINGS, "decoding")]
        if head_kind != decoding_kind:
            raise CheckpointError(f"head {head_kind} does not match decoding {decoding_kind}")
        self.kind = head_kind
        self.name = str(cfg.get("model_name") or "")
        self.preprocessor = FeatureExtractor(**_kwargs(cfg["preprocessor"]))
        self.encoder = ConformerEncoder(**_kwargs(cfg["encoder"]))
        self.head: nn.Module = (CTCHead if head_kind == "ctc" else RNNTHead)(**_kwargs(cfg["head"]))
        self.num_classes = int(self.head.num_classes)
        self.blank_id = self.num_classes - 1
        self.max_symbols = int(cfg["decoding"].get("max_symbols_per_step") or 10)

    @property
    def frame_rate_samples(self) -> int:
        return self.preprocessor.hop_length * 4


def build_model(ckpt: Checkpoint) -> tuple[ASRModel, Tokenizer]:
    try:
        model = ASRModel(ckpt.cfg)
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{ckpt.path}: unsupported model config: {exc}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise CheckpointError(f"{ckpt.path}: weights do not match the config: {' '.join(first[:3])[:400]}") from None
    model.eval()
    tokenizer = _tokenizer(ckpt, model)
    if tokenizer.size + 1 != model.num_classes:
        raise CheckpointError(
            f"{ckpt.path}: tokenizer has {tokenizer.size} tokens but the head has {model.num_classes} classes"
        )
    return model, tokenizer


def _tokenizer(ckpt: Checkpoint, model: ASRModel) -> Tokenizer:
    decoding = ckpt.cfg["decoding"]
    vocab = decoding.get("vocabulary")
    if vocab:
        return CharTokenizer(vocab)
    if not decoding.get("model_path"):
        raise CheckpointError(f"{ckpt.path}: config has neither a vocabulary nor a tokenizer model")
    path = find_tokenizer(ckpt.path, model.name, str(decoding["model_path"]))
    try:
        return SentencePieceTokenizer(path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def find_tokenizer(ckpt_path: Path, model_name: str, stored: str) -> Path:
    """The tokenizer lives beside the checkpoint, as `<model_name>_tokenizer.model` (as upstream)."""
    folder = ckpt_path.parent
    candidates = [
        folder / f"{model_name}_tokenizer.model" if model_name else None,
        folder / Path(stored).name,
        folder / f"{ckpt_path.stem}_tokenizer.model",
    ]
    for cand in candidates:
        if cand is not None and cand.is_file():
            return cand
    names = ", ".join(sorted({c.name for c in candidates if c is not None}))
    raise CheckpointError(f"{ckpt_path}: tokenizer not found beside the checkpoint (looked for {names})")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_model(cfg: dict[str, Any], seed: int = 0) -> ASRModel:
    """Full-size model with PyTorch's default random init, for benchmarks (same compute as the real one)."""
    torch.manual_seed(seed)
    return ASRModel(cfg).eval()
