"""Where model files live: resolve a name or path to a local checkpoint, pull official files, verify.

Downloads go to a temporary name in the target folder and are renamed into place only after the
MD5 matches, so an interrupted or corrupt download never looks like a model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.asr.catalog import ModelInfo, resolve_name
from pipeline.asr.checkpoint import CheckpointError, md5sum

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]  # (label, bytes done, total or None)


class ModelNotFound(FileNotFoundError):
    pass


class DownloadError(RuntimeError):
    pass


def model_dir(configured: str | os.PathLike) -> Path:
    return Path(configured).expanduser()


def resolve_model(spec: str, directory: str | os.PathLike) -> Path:
    """A `.ckpt` path is used as is; a name or alias is looked up in the model directory."""
    if spec.endswith(".ckpt") or os.sep in spec or Path(spec).is_file():
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelNotFound(f"model file {path} does not exist")
        return path
    info = resolve_name(spec)
    path = model_dir(directory) / info.filename
    if not path.is_file():
        raise ModelNotFound(
            f"model {info.name} is not downloaded (looked in {path.parent}); run "
            f"`gigaam-transcriber models pull {info.name}` or set GIGAAM_MODEL to a local .ckpt"
        )
    return path


def _fetch(url: str, target: Path, label: str, progress: Progress | None, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https URL or operator's mirror
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"{url}: server answered HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"cannot reach {url}: {reason} (no network? use a local .ckpt)") from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                done = 0
                while True:
                    try:
                        block = resp.read(1 << 20)
                    except OSError as exc:
                        raise DownloadError(f"{url}: connection lost after {done} bytes: {exc}") from None
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(label, done, total)
                if total is not None and done != total:
                    raise DownloadError(f"{url}: got {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # mkstemp makes 0600; services may run as another user
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pull(
    info: ModelInfo | str,
    directory: str | os.PathLike,
    *,
    base_url: str | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download a model (and its tokenizer) unless an intact copy is already there."""
    if isinstance(info, str):
        info = resolve_name(info)
    folder = model_dir(directory)
    base = (base_url or info.url.rsplit("/", 1)[0]).rstrip("/")
    target = folder / info.filename
    if target.is_file() and md5sum(target) == info.md5:
        log.info("model %s already present at %s", info.name, target)
    else:
        partial = folder / f"{info.filename}.download"
        _fetch(f"{base}/{info.filename}", partial, info.filename, progress, timeout)
        got = md5sum(partial)
        if got != info.md5:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{info.filename}: checksum mismatch (MD5 {got}, expected {info.md5}); file discarded")
        os.replace(partial, target)
    if info.tokenizer:
        tok = folder / info.tokenizer_filename
        if not tok.is_file():
            _fetch(f"{base}/{info.tokenizer_filename}", tok, info.tokenizer_filename, progress, timeout)
    return target


@dataclass
class Verification:
    path: Path
    md5: str
    official_name: str | None  # the catalog entry whose MD5 matches, if any
    model_name: str
    kind: str
    parameters: int
    vocabulary: int


def verify(path: str | os.PathLike) -> Verification:
    """Load the file the same safe way the engine does and report what it is."""
    from pipeline.asr.catalog import MODELS
    from pipeline.asr.checkpoint import load_checkpoint
    from pipeline.asr.model import build_model, count_parameters

    path = Path(path)
    ckpt = load_checkpoint(path)
    model, tokenizer = build_model(ckpt)
    digest = md5sum(path)
    official = next((m.name for m in MODELS.values() if m.md5 == digest), None)
    if official is None and model.name in MODELS:
        log.warning("%s: MD5 %s is not the official one for %s", path, digest, model.name)
    return Verification(path, digest, official, model.name, model.kind, count_parameters(model), tokenizer.size)


__all__ = ["ModelNotFound", "DownloadError", "CheckpointError", "resolve_model", "pull", "verify", "Verification"]
