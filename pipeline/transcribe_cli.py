"""`gigaam-transcriber transcribe FILE...`: files through a running API, from any machine.

Up to `CONCURRENCY` files go at once, each with a live progress bar fed by the task's event stream
(polling when the stream cannot be held). The client waits out 429 `Retry-After` and network blips;
a file that fails is reported with the server's reason and makes the exit code non-zero, the others
still finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from pipeline.client import AsyncGigaAMClient, GigaAMError
from pipeline.formats import EXTENSIONS
from pipeline.settings import load_settings

log = logging.getLogger(__name__)

CONCURRENCY = 3
POLL_INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    file: str
    output: Path | None = None
    error: str | None = None


def default_server() -> str:
    settings = load_settings()
    host = settings.api_host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: this machine answers on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def default_language() -> str:
    """Server messages (failure reasons) in the user's language when it is Russian, else English."""
    lang = os.environ.get("LC_ALL") or os.environ.get("LC_MESSAGES") or os.environ.get("LANG") or ""
    return "ru" if lang.lower().startswith("ru") else "en"


class _Job:
    """One file: upload, follow, download; every state change goes to its progress bar."""

    def __init__(self, file: str, progress: Progress, args: dict[str, Any]) -> None:
        self.file = file
        self.progress = progress
        self.bar: TaskID = progress.add_task(Path(file).name, total=100, state="waiting")
        self.args = args

    def show(self, state: str, percent: int | None = None) -> None:
        self.progress.update(self.bar, state=state, **({"completed": percent} if percent is not None else {}))

    def on_retry(self, why: str, delay: float) -> None:
        self.show(f"{why}, retrying in {delay:.0f} s")

    def on_status(self, body: dict[str, Any]) -> None:
        self.show(body.get("stage") or body.get("status", ""), body.get("progress"))

    async def run(self, slots: asyncio.Semaphore) -> Outcome:
        path = Path(self.file)
        if not path.is_file():
            self.show("no such file")
            return Outcome(self.file, error="no such file")
        async with slots:
            async with AsyncGigaAMClient(
                self.args["server"],
                self.args["api_key"],
                language=self.args["language"],
                on_retry=self.on_retry,
            ) as client:
                try:
                    return await self._transcribe(client, path)
                except GigaAMError as exc:
                    self.show(f"failed: {exc.code}")
                    return Outcome(self.file, error=exc.message if exc.status else str(exc))

    async def _transcribe(self, client: AsyncGigaAMClient, path: Path) -> Outcome:
        self.show("uploading")
        task_id = (await client.upload(path))["task_id"]
        log.debug("%s: task %s", self.file, task_id)
        self.show("queued", 0)
        final = await self._follow(client, task_id)
        if final["status"] != "completed":
            self.show("failed")
            return Outcome(self.file, error=final.get("error") or final.get("message") or "the task failed")
        fmt = self.args["format"]
        out_dir: Path = self.args["output_dir"]
        out_dir.mkdir(parents=True, exist_ok=True)
        dest = out_dir / (path.stem + EXTENSIONS[fmt])
        await client.download(task_id, fmt, dest)
        self.show("done", 100)
        return Outcome(self.file, output=dest)

    async def _follow(self, client: AsyncGigaAMClient, task_id: str) -> dict[str, Any]:
        """The final status body, from the event stream, else by polling (a proxy that cuts streams)."""
        try:
            async for event in client.events(task_id):
                if event.name == "deleted":
                    return {"status": "failed", "error": "the task was deleted on the server"}
                self.on_status(event.data)
                if event.name in ("completed", "failed"):
                    return event.data
        except GigaAMError as exc:
            if exc.status != 0:
                raise
            log.info("%s: event stream lost (%s); polling instead", self.file, exc.message)
        return await client.wait(task_id, POLL_INTERVAL, on_status=self.on_status)


async def transcribe_files(
    files: list[str],
    *,
    server: str,
    api_key: str | None,
    format: str,
    output_dir: Path,
    console: Console | None = None,
) -> list[Outcome]:
    console = console or Console(stderr=True)
    args = {
        "server": server,
        "api_key": api_key,
        "format": format,
        "output_dir": output_dir,
        "language": default_language(),
    }
    slots = asyncio.Semaphore(CONCURRENCY)
    columns = (
        TextColumn("{task.description}", style="bold"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[state]}"),
    )
    with Progress(*columns, console=console) as progress:
        jobs = [_Job(file, progress, args) for file in files]
        return list(await asyncio.gather(*(job.run(slots) for job in jobs)))


def run(files: list[str], server: str | None, api_key: str | None, format: str, output_dir: str | None) -> int:
    """The command: prints `FILE -> OUTPUT` per success, `FILE: failed: REASON` per failure; 1 if any failed."""
    key = api_key or os.environ.get("GIGAAM_API_KEY") or None
    outcomes = asyncio.run(
        transcribe_files(
            files,
            server=server or default_server(),
            api_key=key,
            format=format,
            output_dir=Path(output_dir or "."),
        )
    )
    for outcome in outcomes:
        if outcome.error is None:
            print(f"{outcome.file} -> {outcome.output}")
        else:
            print(f"{outcome.file}: failed: {outcome.error}", file=sys.stderr)
    return 1 if any(o.error is not None for o in outcomes) else 0
