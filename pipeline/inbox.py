"""The watched inbox's rules, kept free of NATS so that they can be tested on their own.

Which files are candidates, when a file is complete, which task a file is, which options apply
(`.gigaam.toml` files merged down the tree), where a file goes after submission or failure, and the
ledger that remembers handled files across restarts. `services/ingest.py` wires these to the bus.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import os
import shutil
import time
import tomllib
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath

import orjson

from pipeline.decode import SUPPORTED_EXTENSIONS
from pipeline.output import atomic_write
from pipeline.settings import Settings, SettingsError
from schemas.messages import ALL_FORMATS, TaskOptions

log = logging.getLogger(__name__)

OPTIONS_FILE = ".gigaam.toml"
ERROR_SUFFIX = ".error.txt"
TASK_PREFIX = "inbox-"
AFTER_ACTIONS = ("move", "keep", "delete")
# Downloads and copies in progress under a name that changes once they are complete.
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".tmp")
_CHUNK = 1 << 20


def ignored_name(name: str) -> bool:
    """Hidden names cover Syncthing's `.syncthing.*.tmp`, `.stfolder` and `.stversions` and our own
    `.gigaam.toml`; the rest are temporaries that become a real file by a rename."""
    return name.startswith((".", "~syncthing~")) or name.lower().endswith(PARTIAL_SUFFIXES)


def is_media(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in SUPPORTED_EXTENSIONS


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class InboxConfig:
    root: Path
    processed: Path
    failed: Path
    after: str  # one of AFTER_ACTIONS
    stable_interval: float
    rescan_interval: float
    polling: bool
    formats: tuple[str, ...]  # used unless a `.gigaam.toml` says otherwise
    excluded: tuple[tuple[str, ...], ...] = ()  # folders inside the inbox that are ours, as relative parts

    @classmethod
    def from_settings(cls, s: Settings) -> InboxConfig:
        if not s.inbox_dir:
            raise SettingsError("GIGAAM_INBOX_DIR is empty")
        if s.inbox_after not in AFTER_ACTIONS:
            raise SettingsError(f"GIGAAM_INBOX_AFTER must be move, keep or delete, not {s.inbox_after!r}")
        if s.inbox_stable_interval <= 0 or s.inbox_rescan_interval <= 0:
            raise SettingsError("GIGAAM_INBOX_STABLE_INTERVAL and GIGAAM_INBOX_RESCAN_INTERVAL must be positive")
        root = Path(s.inbox_dir).expanduser().resolve()
        processed = _folder(s.inbox_processed_dir) or root.parent / "processed"
        failed = _folder(s.inbox_failed_dir) or root.parent / "failed"
        if root in (processed, failed):
            raise SettingsError("the processed and failed folders cannot be the inbox itself")
        # Our own folders may live inside the inbox (so that a synced share shows them); never scan them.
        ours = [p for p in (processed, failed, _folder(s.output_dir)) if p is not None]
        excluded = tuple(p.relative_to(root).parts for p in ours if p.is_relative_to(root) and p != root)
        return cls(
            root=root,
            processed=processed,
            failed=failed,
            after=s.inbox_after,
            stable_interval=s.inbox_stable_interval,
            rescan_interval=s.inbox_rescan_interval,
            polling=s.inbox_polling,
            formats=s.output_formats,
            excluded=excluded,
        )

    def rel(self, path: str | os.PathLike[str]) -> PurePosixPath | None:
        """The path inside the inbox, or None when it is outside, ignored, or in one of our folders."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return None
        if not parts or any(ignored_name(p) for p in parts):
            return None
        if any(parts[: len(ex)] == ex for ex in self.excluded):
            return None
        return PurePosixPath(*parts)

    def scan(self, start: Path | None = None) -> Iterator[Path]:
        """Regular files under `start` (default: the whole inbox) that are not ignored; symlinks are
        not followed, so a link cannot loop the walk or pull in files from elsewhere."""
        pending = [start or self.root]
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while we walked
            except OSError as exc:
                log.warning("cannot list %s: %s", folder, exc.strerror or exc)
                continue
            for entry in entries:
                if ignored_name(entry.name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self.rel(entry.path) is not None:
                            pending.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        yield Path(entry.path)
                except OSError:
                    continue


def _folder(setting: str) -> Path | None:
    return Path(setting).expanduser().resolve() if setting else None


# --------------------------------------------------------------------------- completeness


class Completeness(enum.Enum):
    GONE = "gone"
    WAITING = "waiting"  # new, changed since the last check, or not unchanged for long enough yet
    UNREADABLE = "unreadable"  # unchanged but cannot be opened: locked by its writer or no permission
    COMPLETE = "complete"


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # when this size and mtime were first seen


class StabilityTracker:
    """A file is complete once checks at least `interval` apart saw the same size and mtime and it
    opens for reading: a copy still running changes one of them, and SMB-style writers lock it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._files: dict[Path, _Seen | None] = {}

    def note(self, path: Path) -> None:
        """Start (or keep) watching `path`; a file already watched keeps its history."""
        self._files.setdefault(path, None)

    def forget(self, path: Path) -> None:
        self._files.pop(path, None)

    def __contains__(self, path: object) -> bool:
        return path in self._files

    def __len__(self) -> int:
        return len(self._files)

    def pending(self) -> list[Path]:
        return list(self._files)

    def check(self, path: Path, now: float) -> Completeness:
        """A COMPLETE or GONE file is no longer watched; note it again to watch it anew."""
        try:
            st = os.stat(path)
        except OSError:
            self.forget(path)
            return Completeness.GONE
        seen = self._files.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._files[path] = _Seen(st.st_size, st.st_mtime_ns, now)
            return Completeness.WAITING
        if now - seen.since < self.interval:
            return Completeness.WAITING
        if not openable(path):
            return Completeness.UNREADABLE
        self.forget(path)
        return Completeness.COMPLETE


def openable(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- identity


def snapshot(src: Path, dest: Path) -> str:
    """Copies and hashes in one read, so the bytes submitted are exactly the bytes hashed even if
    someone writes to the file again later. Returns the sha256 hex digest."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


def task_id_for(digest: str, rel: PurePosixPath, options: TaskOptions) -> str:
    """The same bytes at the same place with the same options are one task, whatever restarts,
    rescans or duplicate events happen. A copy in another folder, or one re-dropped after its
    folder's options changed, is another request with its own outputs."""
    where = unicodedata.normalize("NFC", rel.as_posix())
    key = orjson.dumps([digest, where, options.model, list(options.formats)])
    return TASK_PREFIX + hashlib.sha256(key).hexdigest()[:32]


# --------------------------------------------------------------------------- options


class OptionsError(ValueError):
    """A `.gigaam.toml` that cannot be used; the message is shown to the user in the error file."""


@dataclass(frozen=True)
class FolderOptions:
    model: str | None
    formats: tuple[str, ...]


def folder_options(root: Path, rel_dir: PurePosixPath, base: FolderOptions) -> FolderOptions:
    """Each `.gigaam.toml` from the inbox root down to `rel_dir` overrides the keys it sets."""
    options = _apply_options_file(root, PurePosixPath(OPTIONS_FILE), base)
    for depth in range(1, len(rel_dir.parts) + 1):
        options = _apply_options_file(root, PurePosixPath(*rel_dir.parts[:depth], OPTIONS_FILE), options)
    return options


def _apply_options_file(root: Path, rel: PurePosixPath, options: FolderOptions) -> FolderOptions:
    try:
        raw = root.joinpath(*rel.parts).read_bytes()
    except FileNotFoundError:
        return options
    except OSError as exc:
        raise OptionsError(f"{rel}: cannot read it ({exc.strerror or exc})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise OptionsError(f"{rel}: not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - {"model", "formats"})
    if unknown:
        raise OptionsError(f"{rel}: unknown key(s) {', '.join(unknown)}; only model and formats are allowed")
    if "model" in doc:
        model = doc["model"]
        if not isinstance(model, str):
            raise OptionsError(f"{rel}: model must be a string")
        options = replace(options, model=model.strip() or None)  # "" goes back to the service's model
    if "formats" in doc:
        options = replace(options, formats=_formats(rel, doc["formats"]))
    return options


def _formats(rel: PurePosixPath, raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(f, str) for f in raw):
        raise OptionsError(f"{rel}: formats must be a list of strings such as [\"txt\", \"srt\"]")
    formats = tuple(dict.fromkeys(f.strip().lower() for f in raw if f.strip()))
    bad = [f for f in formats if f not in ALL_FORMATS]
    if bad or not formats:
        raise OptionsError(f"{rel}: formats must be some of {', '.join(ALL_FORMATS)}, got {raw!r}")
    return formats


def task_options(rel: PurePosixPath, folder: FolderOptions) -> TaskOptions:
    """`team/a.mp3` writes `<output>/team/a.<ext>`."""
    parent = rel.parent.as_posix()
    return TaskOptions(
        model=folder.model,
        formats=folder.formats,
        write_output=True,
        output_dir="" if parent == "." else parent,
        output_stem=rel.stem,
        source="inbox",
    )


# --------------------------------------------------------------------------- where files go


def free_path(path: Path, companion: str = "") -> Path:
    """`a.mp3`, else `a (2).mp3`, `a (3).mp3`...: nothing already there (nor its `companion`
    sibling `<name><companion>`) is ever overwritten."""

    def taken(p: Path) -> bool:
        return os.path.lexists(p) or bool(companion and os.path.lexists(p.with_name(p.name + companion)))

    candidate, n = path, 1
    while taken(candidate):
        n += 1
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
    return candidate


def move_file(src: Path, dest: Path) -> None:
    """A rename where possible; across filesystems a copy under a hidden name that is renamed once
    complete, so an interrupted move never leaves a truncated file under the real name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = dest.with_name(f".{dest.name}.moving")
    try:
        shutil.copy2(src, partial)
        os.replace(partial, dest)
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)
    os.unlink(src)


def after_submission(action: str, src: Path, processed_root: Path, rel: PurePosixPath) -> Path | None:
    """Where the file is now: in place (keep), under `processed/<rel>` (move) or nowhere (delete)."""
    if action == "keep":
        return src
    if action == "delete":
        src.unlink(missing_ok=True)
        return None
    dest = free_path(processed_root.joinpath(*rel.parts))
    move_file(src, dest)
    return dest


def fail_file(src: Path | None, failed_root: Path, rel: PurePosixPath, reason: str, task_id: str = "") -> Path:
    """Moves `src` (when there is one) to `failed/<rel>` and writes `<name>.error.txt` beside it.
    Returns the failed file's path; only its error file exists when `src` is None."""
    dest = free_path(failed_root.joinpath(*rel.parts), companion=ERROR_SUFFIX)
    if src is not None:
        move_file(src, dest)
    atomic_write(dest.with_name(dest.name + ERROR_SUFFIX), error_text(rel, reason, task_id).encode("utf-8"))
    return dest


def error_text(rel: PurePosixPath, reason: str, task_id: str = "") -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    lines = [
        f"{rel.name} was not transcribed.",
        "",
        f"Reason: {reason}",
        f"Inbox path: {rel}",
        f"Task: {task_id or 'none (refused before submission)'}",
        f"Time: {stamp}",
        "",
        "To try again, fix the cause and put the file back into the inbox. The same file at the same",
        "place with the same options is the same task, so a task that failed is not repeated while the",
        "server remembers it (GIGAAM_RETENTION); rename the file to retry sooner.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- ledger

SUBMITTED, COMPLETED, FAILED = "submitted", "completed", "failed"


@dataclass(frozen=True)
class LedgerEntry:
    task_id: str
    rel: str  # path inside the inbox when it was taken
    state: str  # submitted | completed | failed
    location: str  # where the file is now; "" when deleted
    size: int
    mtime_ns: int
    ts: float  # when it was taken
    error: str = ""


class Ledger:
    """What happened to each file taken from the inbox, kept across restarts in an append-only JSON
    lines file. It says where a submitted file went, for when its task fails later, and it is what
    stops kept files (`inbox_after = keep`) from being hashed and submitted again on every rescan,
    also after the registry has forgotten their tasks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[tuple[str, str], LedgerEntry] = {}
        self._by_task: dict[str, dict[str, LedgerEntry]] = {}
        self._by_location: dict[str, LedgerEntry] = {}
        self._lines = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "rb") as fh:
                for line in fh:
                    self._lines += 1
                    try:
                        self._put(LedgerEntry(**orjson.loads(line)))
                    except (orjson.JSONDecodeError, TypeError):
                        continue  # a line cut short by a crash
        except FileNotFoundError:
            pass

    def _put(self, entry: LedgerEntry) -> None:
        old = self._entries.get((entry.task_id, entry.rel))
        if old is not None and self._by_location.get(old.location) is old:
            del self._by_location[old.location]
        self._entries[(entry.task_id, entry.rel)] = entry
        self._by_task.setdefault(entry.task_id, {})[entry.rel] = entry
        if entry.location:
            self._by_location[entry.location] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, entry: LedgerEntry) -> None:
        self._put(entry)
        with open(self.path, "ab") as fh:
            fh.write(orjson.dumps(asdict(entry)) + b"\n")
        self._lines += 1

    def for_task(self, task_id: str) -> list[LedgerEntry]:
        return list(self._by_task.get(task_id, {}).values())

    def pending(self) -> list[LedgerEntry]:
        return [e for e in self._entries.values() if e.state == SUBMITTED]

    def kept(self, path: Path, size: int, mtime_ns: int) -> LedgerEntry | None:
        """The entry of a file left in place that has not changed since it was taken."""
        entry = self._by_location.get(str(path))
        if entry is not None and (entry.size, entry.mtime_ns) == (size, mtime_ns):
            return entry
        return None

    def compact(self, keep: Callable[[LedgerEntry], bool]) -> int:
        """Drops the entries `keep` rejects and rewrites the file without superseded lines; returns
        how many entries went."""
        before = len(self._entries)
        live = [e for e in self._entries.values() if keep(e)]
        self._entries, self._by_task, self._by_location = {}, {}, {}
        for entry in live:
            self._put(entry)
        body = b"".join(orjson.dumps(asdict(e)) + b"\n" for e in self._entries.values())
        atomic_write(self.path, body)
        self._lines = len(self._entries)
        return before - len(self._entries)

    @property
    def bloated(self) -> bool:
        """More superseded lines than live ones: worth a compaction."""
        return self._lines > 2 * len(self._entries) + 64
