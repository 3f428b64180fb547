"""The inbox rules of `pipeline.inbox`, without NATS: what is a candidate, when a file is complete,
task identity, `.gigaam.toml` options, where files go, and the ledger."""

from __future__ import annotations

import errno
import hashlib
import os
import unicodedata
from pathlib import Path, PurePosixPath

import pytest

from pipeline import inbox
from pipeline.inbox import (
    COMPLETED,
    FAILED,
    SUBMITTED,
    Completeness,
    FolderOptions,
    InboxConfig,
    Ledger,
    LedgerEntry,
    OptionsError,
    StabilityTracker,
    after_submission,
    fail_file,
    folder_options,
    free_path,
    ignored_name,
    is_media,
    move_file,
    snapshot,
    task_id_for,
    task_options,
)
from pipeline.settings import Settings, SettingsError, load_settings
from schemas.messages import TaskOptions

BASE = FolderOptions(model=None, formats=("txt", "srt", "json"))


def config(tmp_path: Path, **changes: object) -> InboxConfig:
    settings = Settings(data_dir=str(tmp_path / "data"), inbox_dir=str(tmp_path / "inbox"), **changes)
    return InboxConfig.from_settings(settings)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- candidates


@pytest.mark.parametrize(
    "name",
    [".syncthing.rec.wav.tmp", "~syncthing~rec.wav.tmp", ".stfolder", ".stversions", ".hidden.wav", ".gigaam.toml",
     "rec.wav.part", "rec.wav.partial", "rec.mp4.crdownload", "rec.wav.tmp", "REC.WAV.TMP", "rec.PART"],
)
def test_temporaries_and_hidden_names_are_ignored(name: str) -> None:
    assert ignored_name(name)


@pytest.mark.parametrize("name", ["rec.wav", "Запись 1.m4a", "a.tmp.wav", "part.mp3", "~rec.wav"])
def test_ordinary_names_are_not_ignored(name: str) -> None:
    assert not ignored_name(name)


def test_media_extensions_are_case_insensitive() -> None:
    assert is_media("a.MP3") and is_media("b.webm") and is_media("c.wma")
    assert not is_media("notes.txt") and not is_media("noext")


def test_processed_and_failed_default_beside_the_inbox(tmp_path: Path) -> None:
    c = config(tmp_path)
    assert c.root == (tmp_path / "inbox").resolve()
    assert (c.processed, c.failed) == (c.root.parent / "processed", c.root.parent / "failed")
    assert (c.after, c.excluded) == ("move", ())


def test_our_folders_inside_the_inbox_are_never_candidates(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    c = config(
        tmp_path, inbox_processed_dir=str(root / "done"), inbox_failed_dir=str(root / "x" / "failed"),
        output_dir=str(root / "out"),
    )
    assert c.rel(root / "done" / "a.wav") is None
    assert c.rel(root / "x" / "failed" / "a.wav") is None
    assert c.rel(root / "out" / "a.txt") is None
    assert c.rel(root / "x" / "a.wav") == PurePosixPath("x/a.wav")
    assert c.rel(root / "donex" / "a.wav") == PurePosixPath("donex/a.wav")
    assert c.rel(root / ".stversions" / "a.wav") is None
    assert c.rel(tmp_path / "elsewhere.wav") is None and c.rel(root) is None


@pytest.mark.parametrize(
    "changes,message",
    [({"GIGAAM_INBOX_AFTER": "archive"}, "GIGAAM_INBOX_AFTER"),
     ({"GIGAAM_INBOX_STABLE_INTERVAL": "0"}, "GIGAAM_INBOX_STABLE_INTERVAL"),
     ({"GIGAAM_INBOX_RESCAN_INTERVAL": "-1"}, "GIGAAM_INBOX_RESCAN_INTERVAL")],
)
def test_bad_inbox_settings_are_refused(tmp_path: Path, changes: dict, message: str) -> None:
    env = {"GIGAAM_DATA_DIR": str(tmp_path / "data"), "GIGAAM_INBOX_DIR": str(tmp_path / "inbox"), **changes}
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_the_inbox_cannot_be_its_own_processed_folder(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        config(tmp_path, inbox_processed_dir=str(tmp_path / "inbox"))


def test_scan_walks_subfolders_and_skips_ignored_ones(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    c = config(tmp_path, inbox_processed_dir=str(root / "processed"))
    for rel in ("a.wav", "team/b.mp3", "team/deep/c.m4a", "notes.txt", "processed/old.wav", ".stversions/v.wav",
                "team/.syncthing.d.wav.tmp", "team/e.wav.part"):
        touch(root / rel)
    outside = touch(tmp_path / "outside" / "o.wav")
    (root / "link").symlink_to(outside.parent, target_is_directory=True)
    (root / "filelink.wav").symlink_to(outside)
    found = sorted(str(c.rel(p)) for p in c.scan())
    assert found == ["a.wav", "notes.txt", "team/b.mp3", "team/deep/c.m4a"]
    assert sorted(str(c.rel(p)) for p in c.scan(root / "team")) == ["team/b.mp3", "team/deep/c.m4a"]
    assert list(c.scan(root / "gone")) == []


# --------------------------------------------------------------------------- completeness


def test_a_file_is_complete_after_an_unchanged_interval(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.wav", b"abc")
    tracker = StabilityTracker(interval=2.0)
    tracker.note(path)
    assert tracker.check(path, now=100.0) is Completeness.WAITING  # first sight
    assert tracker.check(path, now=101.9) is Completeness.WAITING  # unchanged, not long enough
    assert tracker.check(path, now=102.0) is Completeness.COMPLETE
    assert path not in tracker and len(tracker) == 0


def test_a_growing_file_is_never_complete(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.wav", b"")
    tracker = StabilityTracker(interval=1.0)
    tracker.note(path)
    now = 0.0
    with open(path, "ab") as fh:
        for _ in range(20):  # a chunk every 0.5 s (simulated), checked every 0.25 s
            fh.write(b"x" * 1000)
            fh.flush()
            for _ in range(2):
                assert tracker.check(path, now) is Completeness.WAITING
                now += 0.25
    assert tracker.check(path, now) is Completeness.WAITING  # the last write is still fresh
    assert tracker.check(path, now + 1.0) is Completeness.COMPLETE


def test_an_mtime_change_without_growth_restarts_the_wait(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.wav", b"abc")
    tracker = StabilityTracker(interval=1.0)
    tracker.note(path)
    tracker.check(path, now=0.0)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert tracker.check(path, now=1.5) is Completeness.WAITING
    assert tracker.check(path, now=2.5) is Completeness.COMPLETE


def test_a_vanished_file_is_gone_and_forgotten(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.wav")
    tracker = StabilityTracker(interval=1.0)
    tracker.note(path)
    tracker.check(path, now=0.0)
    path.unlink()
    assert tracker.check(path, now=5.0) is Completeness.GONE and path not in tracker


def test_an_unopenable_file_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = touch(tmp_path / "a.wav")
    tracker = StabilityTracker(interval=1.0)
    tracker.note(path)
    tracker.check(path, now=0.0)
    monkeypatch.setattr(inbox, "openable", lambda p: False)  # a writer holding a lock (SMB), or no permission
    assert tracker.check(path, now=5.0) is Completeness.UNREADABLE and path in tracker
    monkeypatch.undo()
    assert tracker.check(path, now=6.0) is Completeness.COMPLETE


def test_noting_again_keeps_the_history(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.wav")
    tracker = StabilityTracker(interval=1.0)
    tracker.note(path)
    tracker.check(path, now=0.0)
    tracker.note(path)  # a duplicate event must not restart the wait
    assert tracker.check(path, now=1.0) is Completeness.COMPLETE


# --------------------------------------------------------------------------- identity


def test_snapshot_copies_and_hashes_in_one_read(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks and a tail
    src = touch(tmp_path / "a.wav", data)
    digest = snapshot(src, tmp_path / "copy")
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "copy").read_bytes() == data


def test_task_ids_follow_content_place_and_options() -> None:
    rel = PurePosixPath("team/a.wav")
    opts = task_options(rel, BASE)
    tid = task_id_for("d" * 64, rel, opts)
    assert tid.startswith("inbox-") and len(tid) == len("inbox-") + 32
    assert task_id_for("d" * 64, rel, opts) == tid
    others = {
        task_id_for("e" * 64, rel, opts),
        task_id_for("d" * 64, PurePosixPath("other/a.wav"), task_options(PurePosixPath("other/a.wav"), BASE)),
        task_id_for("d" * 64, rel, task_options(rel, FolderOptions(None, ("txt",)))),
        task_id_for("d" * 64, rel, task_options(rel, FolderOptions("v3_ctc", BASE.formats))),
    }
    assert tid not in others and len(others) == 4


def test_task_ids_ignore_unicode_normalisation_of_names() -> None:
    nfc = PurePosixPath(unicodedata.normalize("NFC", "Запись й.wav"))
    nfd = PurePosixPath(unicodedata.normalize("NFD", "Запись й.wav"))
    assert str(nfc) != str(nfd)
    assert task_id_for("d" * 64, nfc, TaskOptions()) == task_id_for("d" * 64, nfd, TaskOptions())


# --------------------------------------------------------------------------- options


def test_folders_map_to_output_folders_and_stems() -> None:
    nested = task_options(PurePosixPath("team/2024/встреча.m4a"), BASE)
    assert nested == TaskOptions(
        model=None, formats=BASE.formats, write_output=True, output_dir="team/2024", output_stem="встреча",
        source="inbox",
    )
    top = task_options(PurePosixPath("a.mp3"), BASE)
    assert (top.output_dir, top.output_stem) == ("", "a")


def test_options_files_merge_down_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    touch(root / ".gigaam.toml", b'model = "v3_ctc"\n')
    touch(root / "team" / ".gigaam.toml", b'formats = ["txt", "vtt"]\n')
    touch(root / "team" / "sub" / ".gigaam.toml", b'model = ""\n')
    touch(root / "other" / ".gigaam.toml", b'formats = "srt, TXT"\n')
    assert folder_options(root, PurePosixPath("."), BASE) == FolderOptions("v3_ctc", BASE.formats)
    assert folder_options(root, PurePosixPath("team"), BASE) == FolderOptions("v3_ctc", ("txt", "vtt"))
    assert folder_options(root, PurePosixPath("team/sub/deeper"), BASE) == FolderOptions(None, ("txt", "vtt"))
    assert folder_options(root, PurePosixPath("other"), BASE) == FolderOptions("v3_ctc", ("srt", "txt"))


@pytest.mark.parametrize(
    "body,message",
    [(b"model = \n", "not valid TOML"), (b'mdoel = "x"\n', "unknown key"), (b'formats = ["docx"]\n', "formats must be"),
     (b"formats = []\n", "formats must be"), (b"model = 3\n", "model must be"), (b"\xff\xfe", "not valid TOML")],
)
def test_a_broken_options_file_says_what_is_wrong(tmp_path: Path, body: bytes, message: str) -> None:
    root = tmp_path / "inbox"
    touch(root / "team" / ".gigaam.toml", body)
    with pytest.raises(OptionsError, match=message) as err:
        folder_options(root, PurePosixPath("team"), BASE)
    assert "team/.gigaam.toml" in str(err.value)
    assert folder_options(root, PurePosixPath("elsewhere"), BASE) == BASE


# --------------------------------------------------------------------------- where files go


def test_free_path_never_reuses_a_name(tmp_path: Path) -> None:
    assert free_path(tmp_path / "a.wav") == tmp_path / "a.wav"
    touch(tmp_path / "a.wav")
    touch(tmp_path / "a (2).wav")
    assert free_path(tmp_path / "a.wav") == tmp_path / "a (3).wav"
    touch(tmp_path / "b.wav.error.txt")  # a leftover error note also claims the name
    assert free_path(tmp_path / "b.wav", companion=".error.txt") == tmp_path / "b (2).wav"


@pytest.mark.parametrize("action", ["move", "keep", "delete"])
def test_after_submission(tmp_path: Path, action: str) -> None:
    src = touch(tmp_path / "inbox" / "team" / "a.wav", b"audio")
    touch(tmp_path / "processed" / "team" / "a.wav", b"an earlier a.wav")
    where = after_submission(action, src, tmp_path / "processed", PurePosixPath("team/a.wav"))
    if action == "keep":
        assert where == src and src.read_bytes() == b"audio"
    elif action == "delete":
        assert where is None and not src.exists()
    else:
        assert where == tmp_path / "processed" / "team" / "a (2).wav" and where.read_bytes() == b"audio"
        assert not src.exists() and (tmp_path / "processed" / "team" / "a.wav").read_bytes() == b"an earlier a.wav"


def test_a_move_across_filesystems_copies_under_a_hidden_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = touch(tmp_path / "a.wav", b"audio" * 1000)
    dest = tmp_path / "other" / "a.wav"
    replaced = []
    real_replace = os.replace

    def no_rename(a: str, b: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def spy(a: str, b: str) -> None:
        replaced.append(Path(a).name)
        real_replace(a, b)

    monkeypatch.setattr(inbox.os, "rename", no_rename)
    monkeypatch.setattr(inbox.os, "replace", spy)
    move_file(src, dest)
    assert dest.read_bytes() == b"audio" * 1000 and not src.exists()
    assert replaced == [".a.wav.moving"] and sorted(os.listdir(dest.parent)) == ["a.wav"]


def test_failed_files_get_an_error_note(tmp_path: Path) -> None:
    src = touch(tmp_path / "inbox" / "team" / "bad.mp3", b"junk")
    touch(tmp_path / "failed" / "team" / "bad.mp3", b"an older failure")
    dest = fail_file(src, tmp_path / "failed", PurePosixPath("team/bad.mp3"), "no audio stream in file", "inbox-abc")
    assert dest == tmp_path / "failed" / "team" / "bad (2).mp3" and dest.read_bytes() == b"junk" and not src.exists()
    note = (dest.parent / "bad (2).mp3.error.txt").read_text()
    assert "no audio stream in file" in note and "inbox-abc" in note and "team/bad.mp3" in note
    only_note = fail_file(None, tmp_path / "failed", PurePosixPath("c.wav"), "gone")
    assert not only_note.exists() and "gone" in (tmp_path / "failed" / "c.wav.error.txt").read_text()


# --------------------------------------------------------------------------- ledger


def entry(task_id: str, rel: str, state: str = SUBMITTED, location: str = "") -> LedgerEntry:
    return LedgerEntry(task_id, rel, state, location, 1, 123, 0.0)


def test_the_ledger_survives_a_restart_and_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.record(entry("t1", "a.wav", location=str(tmp_path / "inbox" / "a.wav")))
    ledger.record(entry("t2", "b.wav"))
    ledger.record(entry("t1", "a.wav", state=COMPLETED, location=str(tmp_path / "inbox" / "a.wav")))
    with open(path, "ab") as fh:
        fh.write(b'{"task_id": "t3", "rel": "c.w')  # the process died mid-line
    again = Ledger(path)
    assert len(again) == 2
    assert [e.state for e in again.for_task("t1")] == [COMPLETED]
    assert [e.task_id for e in again.pending()] == ["t2"]
    assert again.kept(tmp_path / "inbox" / "a.wav", 1, 123) is not None
    assert again.kept(tmp_path / "inbox" / "a.wav", 2, 123) is None  # changed since: a new file
    assert again.for_task("t9") == []


def test_a_changed_location_is_no_longer_kept(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    kept = entry("t1", "a.wav", COMPLETED, str(tmp_path / "a.wav"))
    ledger.record(kept)
    ledger.record(LedgerEntry("t1", "a.wav", FAILED, str(tmp_path / "failed" / "a.wav"), 1, 123, 0.0, "bad"))
    assert ledger.kept(tmp_path / "a.wav", 1, 123) is None
    assert ledger.kept(tmp_path / "failed" / "a.wav", 1, 123).error == "bad"


def test_compaction_drops_rejected_and_superseded_lines(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    for i in range(100):
        for state in (SUBMITTED, SUBMITTED, COMPLETED):  # repeated takes of a file, then its outcome
            ledger.record(entry(f"t{i}", f"{i}.wav", state))
    ledger.record(entry("live", "live.wav"))
    assert ledger.bloated
    dropped = ledger.compact(lambda e: e.state == SUBMITTED)
    assert dropped == 100 and not ledger.bloated
    assert len(path.read_text().splitlines()) == 1
    assert [e.task_id for e in Ledger(path).pending()] == ["live"]
