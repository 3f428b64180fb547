"""`gigaam-transcriber up`, `serve` and `submit` as real processes: how the stack stops, restarts its
children, and serves a file submitted from the command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pipeline.bus import Bus, BusTimeout, request
from pipeline.submit import submit_file, wait_for_task
from schemas.subjects import WORKER_PING_PREFIX
from tests.stack import Stack, speech, write_wav

pytestmark = [pytest.mark.timeout(180)]


def descendants(root: int) -> set[int]:
    """Every process under `root`, from /proc: the services, nats-server and anything they started."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # exited meanwhile
            continue
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def restarted(stack: Stack, service: str, old: int, timeout: float = 30.0) -> int:
    """The pid in the service's pid file once it differs from `old`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = stack.pid(service)
        except ValueError:  # caught while the supervisor rewrites it
            pid = old
        if pid != old:
            return pid
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{service} not restarted within {timeout}s:\n{stack.log_tail()}")


async def ping_pid(bus: Bus, service: str, timeout: float = 30.0) -> int:
    """The pid of the process that answers the service's ping, once one does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return orjson.loads(await request(bus.nc, f"{WORKER_PING_PREFIX}.{service}", b"", 1.0))["pid"]
        except BusTimeout:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_sigterm_stops_every_process_of_the_stack_and_removes_its_run_files(tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    try:
        bus = await stack.ready()
        await bus.close()
        pids = {p.stem: int(p.read_text()) for p in (stack.data_dir / "run").glob("*.pid")}
        assert set(pids) >= {"registry", "decode", "infer", "format"}
        [ports] = (stack.data_dir / "nats" / "ports").glob("nats-server_*.ports")
        nats_pid = int(ports.stem.rsplit("_", 1)[1])
        tree = descendants(stack.proc.pid)
        assert set(pids.values()) | {nats_pid} <= tree
    finally:
        stack.stop()
    assert stack.proc.returncode == 0, stack.log_tail()
    assert [pid for pid in tree if alive(pid)] == []
    assert list((stack.data_dir / "run").iterdir()) == []
    assert not (stack.data_dir / "nats.url").exists()


async def test_a_child_that_keeps_dying_is_restarted_after_growing_delays(tmp_path: Path) -> None:
    """The supervisor waits 1, 2, 4 s before the 1st, 2nd, 3rd restart of a child that lived under a
    minute; test_stack.py already covers a single restart during a task."""
    stack = Stack(tmp_path, services="registry,format").start()
    try:
        bus = await stack.ready(stages=("registry", "format"))
        try:
            waits = []
            pid = await ping_pid(bus, "format")
            for _ in range(3):
                killed = stack.kill9("format")
                assert killed == pid
                started = time.monotonic()
                pid = await restarted(stack, "format", killed)
                waits.append(time.monotonic() - started)
            assert waits[0] >= 1.0 and waits[1] >= 2.0 and waits[2] >= 4.0, waits
            assert waits[0] < waits[2], waits  # the delay grows, it is not a fixed pause
            assert await ping_pid(bus, "format") == pid
        finally:
            await bus.close()
        stack.kill9("format")
        await stack.wait_log("restarting in 8.0s", "the supervisor saw the fourth death")  # format now waits
    finally:
        stack.stop()
    assert stack.proc.returncode == 0, stack.log_tail()
    assert list((stack.data_dir / "run").iterdir()) == []  # no stale pid file of the waiting child


async def test_cli_submit_wait_prints_the_transcript_and_writes_the_configured_formats(tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    try:
        await (await stack.ready()).close()
        wav = write_wav(tmp_path / "meeting.wav", speech("02_speech_5s", "01_speech_2s"))
        r = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "submit", "--wait", "--write-output", str(wav)],
            env={**stack.env, "GIGAAM_OUTPUT_FORMATS": "txt,vtt"}, capture_output=True, text=True, timeout=120,
        )
    finally:
        stack.stop()
    assert r.returncode == 0, r.stderr
    submitted, text = r.stdout.splitlines()
    assert submitted.startswith(f"{wav}: task ")
    written = sorted(p.name for p in stack.output_dir.glob("*") if not p.name.startswith("."))
    assert written == ["meeting.txt", "meeting.vtt"]  # GIGAAM_OUTPUT_FORMATS of the submitting CLI
    assert text and text.split() == (stack.output_dir / "meeting.txt").read_text().split()
    assert "-->" in (stack.output_dir / "meeting.vtt").read_text()


async def test_serve_runs_one_service_beside_a_stack_without_it(tmp_path: Path) -> None:
    stack = Stack(tmp_path, services="registry,infer,format").start()
    serve = None
    try:
        bus = await stack.ready(stages=("registry", "infer", "format"))
        try:
            with open(tmp_path / "serve.log", "ab") as log:
                serve = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.cli", "serve", "decode"], env=stack.env, stdout=log, stderr=log
                )
            wav = write_wav(tmp_path / "call.wav", speech("01_speech_2s"))
            event = await wait_for_task(bus, await submit_file(bus, wav), timeout=120)
            assert event.type == "completed" and event.text, event.error
            assert await ping_pid(bus, "decode") == serve.pid  # no other decode runs
            assert not (stack.data_dir / "run" / "decode.pid").exists()
        finally:
            await bus.close()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        if serve is not None and serve.poll() is None:
            serve.kill()
            serve.wait()
        stack.stop()
