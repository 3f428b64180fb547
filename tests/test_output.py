import errno
import fnmatch
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from pipeline import output
from pipeline.output import MANIFEST_DIR, TEMP_PATTERNS, atomic_write, clean_name, ensure_stignore, write_outputs

RENDERED = {"txt": "текст\n", "srt": "1\n00:00:00,000 --> 00:00:01,000\nтекст\n", "json": b"{}\n"}


def is_temp(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEMP_PATTERNS)


def files(root: Path) -> set[str]:
    """Visible (synced) files under root, relative."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not any(is_temp(part) for part in p.relative_to(root).parts) and p.name != ".stignore"
    }


def test_temp_names_match_patterns(tmp_path, monkeypatch):
    made = []
    real_replace = os.replace

    def spy(src, dst):
        made.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(output.os, "replace", spy)
    atomic_write(tmp_path / "a.txt", b"x")
    monkeypatch.undo()
    assert len(made) == 1 and made[0].startswith(".~gigaam-") and is_temp(made[0])
    assert not is_temp("a.txt") and not is_temp("запись.tmp") and is_temp(MANIFEST_DIR)


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "новая" / "папка" / "file.txt"
    atomic_write(target, b"one")
    atomic_write(target, "два".encode())
    assert target.read_bytes() == "два".encode()
    assert os.listdir(target.parent) == ["file.txt"]


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("fail", ["fsync", "replace"])
def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch, fail):
    target = tmp_path / "f.txt"
    atomic_write(target, b"old")

    def boom(*_a):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(output.os, fail, boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_write_never_exposes_partial_content(tmp_path):
    size = 5 * 1024 * 1024
    versions = [bytes([n]) * size for n in range(4)]
    stop = threading.Event()
    reads: list[int] = []
    bad: list[str] = []

    def watch():
        while not stop.is_set():
            for name in os.listdir(tmp_path):
                if is_temp(name):
                    continue
                try:
                    data = (tmp_path / name).read_bytes()
                except FileNotFoundError:
                    continue
                reads.append(len(data))
                if data not in versions:
                    bad.append(f"{name}: {len(data)} bytes")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(24):
            atomic_write(tmp_path / "big.bin", versions[i % len(versions)])
    finally:
        stop.set()
        watcher.join()
    assert not bad
    assert len(reads) >= 5
    assert os.listdir(tmp_path) == ["big.bin"]


def test_stignore_created_once_and_never_overwritten(tmp_path):
    ensure_stignore(tmp_path)
    text = (tmp_path / ".stignore").read_text()
    assert [line for line in text.splitlines() if not line.startswith("//")] == ["(?d).~gigaam-*.tmp", "(?d).gigaam"]
    (tmp_path / ".stignore").write_text("// mine\n*.bak\n")
    ensure_stignore(tmp_path)
    write_outputs(tmp_path, "", "a", RENDERED, "t1")
    assert (tmp_path / ".stignore").read_text() == "// mine\n*.bak\n"
    assert sorted(os.listdir(tmp_path)) == [".gigaam", ".stignore", "a.json", "a.srt", "a.txt"]


def test_stignore_without_hard_links(tmp_path, monkeypatch):
    def no_links(*_a):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(output.os, "link", no_links)
    ensure_stignore(tmp_path)
    assert "(?d).gigaam" in (tmp_path / ".stignore").read_text()
    assert write_outputs(tmp_path, "", "a", {"txt": "1"}, "t1") == [tmp_path / "a.txt"]
    assert write_outputs(tmp_path, "", "a", {"txt": "2"}, "t2") == [tmp_path / "a (2).txt"]
    assert write_outputs(tmp_path, "", "a", {"txt": "3"}, "t1") == [tmp_path / "a.txt"]
    assert not [n for n in os.listdir(tmp_path / MANIFEST_DIR) if is_temp(n)]


def test_write_outputs_paths_and_content(tmp_path):
    paths = write_outputs(tmp_path, "входящие/лекции", "Лекция 1", {**RENDERED, "timecodes": "[00:00:00 - 00:00:01] x\n"}, "t1")
    d = tmp_path / "входящие" / "лекции"
    assert paths == [d / "Лекция 1.txt", d / "Лекция 1.srt", d / "Лекция 1.json", d / "Лекция 1_timecodes.txt"]
    assert (d / "Лекция 1.txt").read_text(encoding="utf-8") == "текст\n"
    assert (d / "Лекция 1.json").read_bytes() == b"{}\n"
    assert files(tmp_path) == {str(p.relative_to(tmp_path)) for p in paths}


def test_collision_with_other_task_gets_suffix(tmp_path):
    first = write_outputs(tmp_path, "d", "rec", RENDERED, "task-a")
    second = write_outputs(tmp_path, "d", "rec", RENDERED | {"txt": "второй\n"}, "task-b")
    third = write_outputs(tmp_path, "d", "rec", {"txt": "третий\n"}, "task-c")
    d = tmp_path / "d"
    assert first == [d / "rec.txt", d / "rec.srt", d / "rec.json"]
    assert second == [d / "rec (2).txt", d / "rec (2).srt", d / "rec (2).json"]
    assert third == [d / "rec (3).txt"]
    assert (d / "rec.txt").read_text() == "текст\n"
    assert (d / "rec (2).txt").read_text() == "второй\n"


def test_same_task_rewrites_in_place(tmp_path):
    write_outputs(tmp_path, "", "rec", RENDERED, "task-a")
    write_outputs(tmp_path, "", "rec", RENDERED, "task-b")
    again = write_outputs(tmp_path, "", "rec", RENDERED | {"txt": "исправлено\n"}, "task-a")
    assert again[0] == tmp_path / "rec.txt"
    assert (tmp_path / "rec.txt").read_text() == "исправлено\n"
    again_b = write_outputs(tmp_path, "", "rec", {"txt": "b\n"}, "task-b")
    assert again_b == [tmp_path / "rec (2).txt"]
    assert files(tmp_path) == {"rec.txt", "rec.srt", "rec.json", "rec (2).txt", "rec (2).srt", "rec (2).json"}


def test_foreign_file_is_not_overwritten(tmp_path):
    (tmp_path / "rec.srt").write_text("user's own subtitles")
    assert write_outputs(tmp_path, "", "rec", {"txt": "x"}, "t1") == [tmp_path / "rec (2).txt"]
    assert (tmp_path / "rec.srt").read_text() == "user's own subtitles"


def test_stem_is_free_again_after_user_deletes_files(tmp_path):
    write_outputs(tmp_path, "", "rec", {"txt": "a"}, "task-a")
    (tmp_path / "rec.txt").unlink()
    assert write_outputs(tmp_path, "", "rec", {"txt": "b"}, "task-b") == [tmp_path / "rec.txt"]
    assert write_outputs(tmp_path, "", "rec", {"txt": "a2"}, "task-a") == [tmp_path / "rec (2).txt"]
    assert sorted(os.listdir(tmp_path / MANIFEST_DIR)) == ["rec (2).1.claim", "rec.2.claim"]


def test_interrupted_task_keeps_its_stem(tmp_path, monkeypatch):
    real = output.atomic_write
    calls = []

    def crash_on_second(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "disk full")
        real(path, data)

    monkeypatch.setattr(output, "atomic_write", crash_on_second)
    with pytest.raises(OSError):
        write_outputs(tmp_path, "", "rec", RENDERED, "task-a")
    monkeypatch.undo()
    # Half-written and not done: another task keeps off it, the redelivery finishes it.
    assert write_outputs(tmp_path, "", "rec", {"txt": "b"}, "task-b") == [tmp_path / "rec (2).txt"]
    assert write_outputs(tmp_path, "", "rec", RENDERED, "task-a")[0] == tmp_path / "rec.txt"


@pytest.mark.parametrize(
    ("rel_dir", "stem", "expected"),
    [
        ("../../etc", "passwd", "etc/passwd.txt"),
        ("/etc/cron.d", "../x", "etc/cron.d/_x.txt"),
        ("a/../../b", "..", "a/b/transcript.txt"),
        ("..\\..\\win", "c:\\evil", "win/c__evil.txt"),
        ("ok/./\x00/\x1b[31mred", "na\x00me\n", "ok/[31mred/name.txt"),
        ("", "sub/dir/name", "sub_dir_name.txt"),
        (".gigaam", ".stignore", "gigaam/stignore.txt"),
        ("Папка ", " Запись №1. ", "Папка/Запись №1.txt"),
        ("", "\u202eevil\u200b", "evil.txt"),
    ],
)
def test_paths_stay_inside_root(tmp_path, rel_dir, stem, expected):
    root = tmp_path / "out"
    (paths,) = [write_outputs(root, rel_dir, stem, {"txt": "x"}, "t1")]
    assert paths == [root / expected]
    assert paths[0].resolve().is_relative_to(root.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_symlink_out_of_root_is_refused(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        write_outputs(root, "link/sub", "x", {"txt": "x"}, "t1")
    assert not any(outside.iterdir())


def test_long_names_are_cut_to_fit(tmp_path):
    stem = "запись" * 100
    for task in ("t1", "t2"):
        (path,) = write_outputs(tmp_path, "", stem, {"timecodes": "x"}, task)
        assert len(path.name.encode()) <= 255
    assert len(clean_name(stem).encode()) <= 200


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="docx"):
        write_outputs(tmp_path, "", "a", {"docx": "x"}, "t1")
    with pytest.raises(ValueError, match="task_id"):
        write_outputs(tmp_path, "", "a", {"txt": "x"}, "two words")
    assert write_outputs(tmp_path, "", "a", {}, "t1") == []
    assert not any(tmp_path.iterdir())


def _race(root: str, task_id: str, start, results) -> None:
    start.wait()
    paths = write_outputs(Path(root), "shared", "same", {"txt": task_id, "json": task_id}, task_id)
    results.put((task_id, [str(p) for p in paths]))


def test_concurrent_processes_never_share_a_stem(tmp_path):
    ctx = multiprocessing.get_context("fork")
    tasks = [f"task-{n}" for n in range(6)]
    start, results = ctx.Barrier(len(tasks)), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), t, start, results)) for t in tasks]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=60) for _ in tasks)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    stems = {Path(paths[0]).stem for paths in got.values()}
    assert stems == {"same"} | {f"same ({n})" for n in range(2, len(tasks) + 1)}
    for task_id, paths in got.items():
        assert all(Path(p).read_text() == task_id for p in paths)
    # Redelivery of every task lands on the same files.
    for task_id, paths in got.items():
        assert [str(p) for p in write_outputs(tmp_path, "shared", "same", {"txt": task_id, "json": task_id}, task_id)] == paths
