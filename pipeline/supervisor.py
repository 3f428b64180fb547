"""`gigaam-transcriber up`: the whole stack on one machine.

Starts an embedded nats-server (unless `GIGAAM_NATS_URL` names one), then every service as a child
process, restarting any that dies with exponential backoff, and stops everything on SIGINT/SIGTERM.
Children are plain `python -m services.<name>` processes, so a crash in one never takes down the rest.
Each child's pid is written to `<data_dir>/run/<name>.pid` for operators (and the crash tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.bus import connect, ensure_layout
from pipeline.natsserver import EmbeddedNats
from pipeline.service import EXIT_CONFIG
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SERVICES = ("registry", "decode", "infer", "format")
OPTIONAL_SERVICES = ("api", "ingest")  # started when their module exists


def default_services() -> list[str]:
    import importlib.util

    names = list(SERVICES)
    for name in OPTIONAL_SERVICES:
        if importlib.util.find_spec(f"services.{name}") is not None:
            names.append(name)
    return names


@dataclass
class Child:
    name: str  # unique: `api`, `api-2`, ... when GIGAAM_API_WORKERS > 1
    module: str  # services.<module>
    proc: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0


class Supervisor:
    def __init__(self, settings: Settings, services: list[str] | None = None) -> None:
        self.settings = settings
        self.services = services or default_services()
        self.children = []
        for name in self.services:
            copies = max(1, settings.api_workers) if name == "api" else 1  # they share the port (SO_REUSEPORT)
            self.children += [Child(name if i == 0 else f"{name}-{i + 1}", name) for i in range(copies)]
        self.nats: EmbeddedNats | None = None
        self.url = settings.nats_url
        self.run_dir = Path(settings.data_dir) / "run"
        self.fatal: str | None = None  # a child that cannot run as configured: the stack stops

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GIGAAM_NATS_URL"] = self.url
        env["GIGAAM_DATA_DIR"] = str(Path(self.settings.data_dir).resolve())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen([sys.executable, "-m", f"services.{child.module}"], env=self._child_env())
        child.started = time.monotonic()
        (self.run_dir / f"{child.name}.pid").write_text(str(child.proc.pid))
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    async def start(self) -> None:
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.url:
            self.nats = EmbeddedNats(Path(self.settings.data_dir) / "nats").start()
            self.url = self.nats.url
        self.settings.nats_url_file.write_text(self.url)
        bus = await connect(self.url, "gigaam-supervisor", first_connect_timeout=30.0)
        try:
            s = self.settings
            await ensure_layout(bus.js, s.retention, s.nats_replicas, ack_wait=s.ack_wait, max_deliver=s.max_deliver)
        finally:
            await bus.close()
        for child in self.children:
            self._spawn(child)

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            for child in self.children:
                proc = child.proc
                if proc is not None and proc.poll() is not None and proc.returncode == EXIT_CONFIG:
                    self.fatal = f"{child.name} cannot run with this configuration (its error is above)"
                    log.error("%s; stopping the stack", self.fatal)
                    child.proc = None
                    stop.set()
                    return
                if proc is not None and proc.poll() is not None:
                    ran = now - child.started
                    child.failures = 0 if ran > 60 else child.failures + 1
                    delay = min(30.0, 0.5 * 2 ** child.failures)
                    log.warning("%s exited with %s after %.0fs; restarting in %.1fs", child.name, proc.returncode, ran, delay)
                    child.proc = None
                    child.next_start = now + delay
                if child.proc is None and now >= child.next_start:
                    self._spawn(child)
            if self.nats is not None and not self.nats.running:
                log.error("embedded nats-server died; restarting it")
                self.nats.restart()
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    def stop(self, timeout: float = 15.0) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is not None:
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in time; killing it", child.name)
                    child.proc.kill()
                    child.proc.wait()
            if child.started:  # spawned once: also the stale file of a child waiting to be restarted
                (self.run_dir / f"{child.name}.pid").unlink(missing_ok=True)
        if self.nats is not None:
            self.nats.stop()
            try:  # only our own record: another stack may have started on this data dir since
                if self.settings.nats_url_file.read_text().strip() == self.url:
                    self.settings.nats_url_file.unlink()
            except FileNotFoundError:
                pass
        log.info("stack stopped")


async def run_stack(settings: Settings, services: list[str] | None = None) -> int:
    """Exit code for `up`: 0 after a clean stop, EXIT_CONFIG when a child could not run as configured."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sup = Supervisor(settings, services)
    try:
        await sup.start()
        log.info("stack up: NATS %s, data %s, services %s", sup.url, settings.data_dir, ", ".join(sup.services))
        await sup.watch(stop)
    finally:
        sup.stop()
    return EXIT_CONFIG if sup.fatal else 0
