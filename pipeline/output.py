"""Write results into the output folder that Syncthing shares with peers.

A peer must never sync a half-written file, so every file is written under a temp name that the
folder's `.stignore` excludes, fsynced, and renamed into place.

Which task owns a file stem is recorded in claim files `<dir>/.gigaam/<stem>.<generation>.claim`
(also ignored, so they stay on this machine). A claim is taken with an exclusive create, so two
processes racing for one stem cannot both win; the loser moves on to `<stem> (2)`, `<stem> (3)`, ...
A redelivered task finds its own claim and overwrites its files in place. Once a task has finished
and a user deleted all its files, the stem is free again: the next task takes the next generation.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from pipeline.formats import EXTENSIONS

TEMP_PREFIX = ".~gigaam-"
TEMP_SUFFIX = ".tmp"
MANIFEST_DIR = ".gigaam"
# Glob patterns (fnmatch and Syncthing agree on these) for names no peer should ever receive.
TEMP_PATTERNS: tuple[str, ...] = (f"{TEMP_PREFIX}*{TEMP_SUFFIX}", MANIFEST_DIR)

DEFAULT_STEM = "transcript"

_STIGNORE = (
    "// Written by gigaam-transcriber: its temp files and ownership records are never synced.\n"
    "// (?d) lets Syncthing delete them when a peer removes the folder that holds them.\n"
    + "".join(f"(?d){pattern}\n" for pattern in TEMP_PATTERNS)
)

# Room for " (NNN)", the longest extension and the claim suffix within a 255-byte file name.
_MAX_NAME_BYTES = 200
# Reserved on Windows peers, where Syncthing would refuse to create the file.
_RESERVED = str.maketrans({c: "_" for c in '<>:"/\\|?*'})
_CLAIM = re.compile(r"^(?P<stem>.+)\.(?P<gen>\d+)\.claim$")
# Errors os.link raises on filesystems without hard links (exFAT, some FUSE and network mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a mix, and a crash cannot lose the rename."""
    path = Path(path)
    tmp = _write_temp(path.parent, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def ensure_stignore(root: Path) -> None:
    """Never touches an existing `.stignore`: the folder's owner may have written their own."""
    path = Path(root) / ".stignore"
    if not os.path.lexists(path):
        _create_exclusive(path, _STIGNORE.encode())


def write_outputs(
    root: Path,
    rel_dir: str,
    stem: str,
    rendered: Mapping[str, bytes | str],
    task_id: str,
) -> list[Path]:
    """Paths of the files written; a redelivered task gets the same paths back, rewritten in place."""
    if not task_id or task_id.split() != [task_id]:
        raise ValueError(f"task_id must be one word, got {task_id!r}")
    unknown = sorted(set(rendered) - EXTENSIONS.keys())
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; choose from {list(EXTENSIONS)}")
    if not rendered:
        return []
    directory = safe_dir(Path(root), rel_dir)
    ensure_stignore(Path(root))
    base, claim = _claim_stem(directory, clean_name(stem) or DEFAULT_STEM, task_id)
    written = []
    for fmt, content in rendered.items():
        path = directory / f"{base}{EXTENSIONS[fmt]}"
        atomic_write(path, content.encode() if isinstance(content, str) else content)
        written.append(path)
    atomic_write(claim, f"{task_id}\ndone\n".encode())
    return written


def clean_name(name: str) -> str:
    """One path component that is safe on every peer; empty when nothing usable is left."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs"))
    # Leading dots would hide the file or hit `..`/`.gigaam`; trailing dots and spaces break Windows peers.
    name = name.translate(_RESERVED).strip().strip(".").strip()
    return name.encode()[:_MAX_NAME_BYTES].decode(errors="ignore").rstrip(". ")


def safe_dir(root: Path, rel_dir: str) -> Path:
    """`rel_dir` under `root`, with `..`, absolute and drive-style parts reduced to plain names."""
    parts = [part for part in (clean_name(p) for p in re.split(r"[/\\]", rel_dir)) if part]
    directory = Path(root).joinpath(*parts)
    # A symlink inside the output folder must not lead outside it either.
    if not directory.resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"output folder {rel_dir!r} leads outside {root}")
    return directory


def _claim_stem(directory: Path, stem: str, task_id: str) -> tuple[str, Path]:
    candidate, n = stem, 1
    while (claim := _try_claim(directory, candidate, task_id)) is None:
        n += 1
        candidate = f"{stem} ({n})"
    return candidate, claim


def _try_claim(directory: Path, stem: str, task_id: str) -> Path | None:
    manifest = directory / MANIFEST_DIR
    while True:
        generation = _latest_generation(manifest, stem)
        if generation:
            claim = manifest / f"{stem}.{generation}.claim"
            try:
                words = claim.read_text(encoding="utf-8").split()
            except FileNotFoundError:
                continue  # a newer generation replaced it just now
            # Empty while a claim is being created without hard links: someone else's, then.
            owner, done = (words[0] if words else ""), "done" in words[1:]
            if not (done and not _has_outputs(directory, stem)):
                return claim if owner == task_id else None
        elif _has_outputs(directory, stem):
            return None  # files nobody claimed: not ours to overwrite
        claim = manifest / f"{stem}.{generation + 1}.claim"
        if _create_exclusive(claim, f"{task_id}\n".encode()):
            for old in range(1, generation + 1):
                _unlink_quietly(manifest / f"{stem}.{old}.claim")
            return claim


def _latest_generation(manifest: Path, stem: str) -> int:
    try:
        names = os.listdir(manifest)
    except FileNotFoundError:
        return 0
    matches = (_CLAIM.match(name) for name in names)
    return max((int(m["gen"]) for m in matches if m and m["stem"] == stem), default=0)


def _has_outputs(directory: Path, stem: str) -> bool:
    return any(os.path.lexists(directory / f"{stem}{ext}") for ext in EXTENSIONS.values())


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Publish `path` only if it does not exist; False when another writer got there first.

    A hard link to a finished temp file makes the name appear with its whole content at once.
    """
    tmp = _write_temp(path.parent, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        return _create_exclusive_unlinked(path, data)
    finally:
        _unlink_quietly(tmp)
    _fsync_dir(path.parent)
    return True


def _create_exclusive_unlinked(path: Path, data: bytes) -> bool:
    """Without hard links the name exists a moment before its content; claim readers allow for that."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(path.parent)
    return True


def _write_temp(directory: Path, data: bytes) -> Path:
    _makedirs(directory)
    while True:
        tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            # 0o666 less the umask, like any new file: peers get ordinary permissions.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _makedirs(directory: Path) -> None:
    """`mkdir -p` that also syncs each new entry, so a crash cannot lose the folder a file went into."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            pass  # another writer made it first
        _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems that cannot sync a folder
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = [
    "DEFAULT_STEM",
    "MANIFEST_DIR",
    "TEMP_PATTERNS",
    "atomic_write",
    "clean_name",
    "ensure_stignore",
    "safe_dir",
    "write_outputs",
]
