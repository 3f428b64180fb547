"""Safe reading of official `.ckpt` files: `torch.load(weights_only=True)` with an explicit allowlist.

The config inside is pickled omegaconf objects; allowing exactly the types upstream writes (SPEC §2.1)
lets us read it without executing arbitrary pickled code. Anything else is refused.
"""

from __future__ import annotations

import collections
import hashlib
import os
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """The file is not a GigaAM checkpoint we can load; the message says why."""


def _allowed_globals() -> list[Any]:
    from omegaconf import base, dictconfig, listconfig, nodes

    return [
        dictconfig.DictConfig,
        listconfig.ListConfig,
        base.ContainerMetadata,
        base.Metadata,
        nodes.AnyNode,
        typing.Any,
        dict,
        list,
        int,
        collections.defaultdict,
    ]


@dataclass
class Checkpoint:
    cfg: dict[str, Any]  # plain containers, no omegaconf objects
    state_dict: dict[str, torch.Tensor]
    path: Path


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a torch.save zip archive; truncated?)")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, zip errors...
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Unsupported global" in str(exc) or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path}: refused: the pickle references a type outside the allowlist ({_global_name(exc)})"
            ) from None
        raise CheckpointError(f"{path}: cannot read checkpoint: {text}") from None
    return _validate(obj, path)


def _global_name(exc: Exception) -> str:
    msg = str(exc)
    marker = "Unsupported global: GLOBAL "
    if marker in msg:
        return msg.split(marker, 1)[1].split()[0]
    return "unknown global"


def _validate(obj: Any, path: Path) -> Checkpoint:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict with 'cfg' and 'state_dict', got {type(obj).__name__}")
    if "hyper_parameters" in obj and "cfg" not in obj:
        raise CheckpointError(
            f"{path}: this is a PyTorch Lightning fine-tuning checkpoint; export it to the official "
            "{cfg, state_dict} format first"
        )
    missing = [k for k in ("cfg", "state_dict") if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: not a GigaAM checkpoint (missing {', '.join(missing)})")
    from omegaconf import DictConfig, OmegaConf

    cfg = obj["cfg"]
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: 'cfg' is not a mapping")
    for section in ("preprocessor", "encoder", "head", "decoding"):
        if not isinstance(cfg.get(section), dict):
            raise CheckpointError(f"{path}: config has no '{section}' section (an SSL or emotion model?)")
    sd = obj["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    return Checkpoint(cfg=cfg, state_dict=dict(sd), path=path)
