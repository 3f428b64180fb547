"""Checks `up` makes before it starts anything, so a first run fails with one line that says what to
do instead of a stack that accepts work it cannot finish: the model is on disk (downloaded now, with
a progress bar, when GIGAAM_MODEL names a catalog model) and the API port is free."""

from __future__ import annotations

from pathlib import Path

from pipeline.settings import Settings


class PreflightError(Exception):
    """Printed as one line by the CLI; `up` exits non-zero without starting anything."""


def preflight(settings: Settings, services: list[str]) -> None:
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # unwritable: one line from the CLI
    if "api" in services:
        check_port(settings.api_host, settings.api_port)
    if "infer" in services:
        fetch_model(settings)


def check_port(host: str, port: int) -> None:
    from pipeline.api.server import bind, port_problem

    try:
        bind(host, port, reuse_port=False).close()
    except OSError as exc:
        raise PreflightError(port_problem(host, port, exc)) from None


def fetch_model(settings: Settings) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from pipeline.asr.catalog import UnknownModel
    from pipeline.asr.loader import ensure_model
    from pipeline.asr.store import DownloadError, ModelNotFound

    with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        tasks: dict[str, object] = {}

        def progress(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(f"downloading {label}", total=total)
            bar.update(tasks[label], completed=done)  # type: ignore[arg-type]

        try:
            ensure_model(settings, download=True, progress=progress)
        except (ModelNotFound, UnknownModel, DownloadError, OSError) as exc:
            raise PreflightError(model_problem(settings, exc)) from None


def model_problem(settings: Settings, exc: BaseException) -> str:
    reason = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
    name = settings.model if not settings.model.endswith(".ckpt") and "/" not in settings.model else "v3_e2e_rnnt"
    return (
        f"cannot get the model GIGAAM_MODEL={settings.model}: {reason}. "
        f"Where there is network, run `gigaam-transcriber models pull {name}` (into GIGAAM_MODEL_DIR={settings.model_dir}); "
        f"offline, copy a checkpoint here and set GIGAAM_MODEL to its .ckpt path "
        f"(e2e models need <name>_tokenizer.model beside it)"
    )


__all__ = ["PreflightError", "preflight"]
